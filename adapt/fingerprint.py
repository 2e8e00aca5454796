"""Fingerprints that tie a checkpoint to the run that wrote it, and the JSON form of run records.

A checkpoint is only worth resuming from if it was written by *the same run*: the same
run-defining config and the same frozen base weights. Both are reduced to sha256 digests that
are stored in every checkpoint's meta (see :mod:`adapt.checkpoint`) and compared before anything
in a workdir is touched.

- :func:`config_fingerprint` hashes the canonical JSON of the config (sorted keys, compact
  separators, tuples as lists). Keys that cannot change the parameters reached at a given step
  are left out (:data:`NON_DEFINING_KEYS`: where the run writes, how often it logs, evaluates or
  checkpoints, how many checkpoints it keeps, progress bars), so changing them does not block a
  resume. The total number of steps is deliberately **kept**: learning-rate schedules are a
  function of it, so a run with a different length is a different run from step 1.
- :func:`data_fingerprint` hashes what fixes the batch order of a resumed run: the number of
  examples of each split, and their labels (or LM token ids) where they are in memory; a
  streamed set contributes its size and its index (its records are not read). Checkpoints and
  results written before it existed carry none and are not checked against it.
- :func:`params_fingerprint` hashes every leaf's path, dtype, shape and raw bytes, in sorted path
  order, so it is independent of dict insertion order and of how arrays are sharded. ~25M float32
  parameters hash in about 0.15 s here (sha256 runs at ~1.5 GB/s with SHA-NI; the device-to-host
  copy is the rest). Arrays spread over several processes (not fully addressable) are gathered
  to every host one leaf at a time with ``multihost_utils.process_allgather``: every process
  then computes the identical digest from the identical bytes, at the cost of moving each leaf
  over the interconnect once at start-up and holding one whole leaf in host memory at a time.

:func:`jsonable` is the one conversion from Python/NumPy/JAX values to JSON values used for
fingerprints, checkpoint meta, metrics.jsonl and results.json, so they all agree.
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import json
from collections.abc import Iterable, Mapping
from pathlib import PurePath
from typing import Any

import jax
import numpy as np

# Config keys (at any nesting depth) that do not change what a run computes. A dotted name
# ("train.log_every") would only match that exact path; bare names match at every depth.
NON_DEFINING_KEYS: tuple[str, ...] = (
    "workdir",
    "log_every",
    "log_every_steps",
    "eval_every",
    "eval_every_steps",
    "eval_every_epochs",
    "checkpoint_every",
    "checkpoint_every_steps",
    "checkpoint_keep",
    "keep_checkpoints",
    "progress_bar",
    "tensorboard",
)


def jsonable(value: Any, *, where: str = "value") -> Any:
    """``value`` as plain JSON types (dict with str keys, list, str, int, float, bool, None).

    NumPy/JAX scalars and 0-d arrays become Python numbers, arrays become nested lists, dtypes
    and dtype classes their names, paths strings, enums their value, dataclasses dicts. Anything
    else (functions, modules, objects whose repr holds a memory address) raises ``TypeError``
    naming ``where`` it sits: a value without a stable text form cannot be fingerprinted.
    """
    if value is None or isinstance(value, bool | str):
        return value
    if isinstance(value, int | float):
        return value
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.dtype):
        return value.name
    if isinstance(value, type):
        try:
            return np.dtype(value).name
        except TypeError:
            pass
    if isinstance(value, jax.Array | np.ndarray):
        arr = np.asarray(value)
        return arr.item() if arr.ndim == 0 else arr.tolist()
    if isinstance(value, enum.Enum):
        return jsonable(value.value, where=where)
    if isinstance(value, PurePath):
        return str(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {str(k): jsonable(v, where=f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        items = sorted(value, key=repr) if isinstance(value, set | frozenset) else value
        return [jsonable(v, where=f"{where}[{i}]") for i, v in enumerate(items)]
    if hasattr(value, "to_dict"):  # ml_collections.ConfigDict / FrozenConfigDict
        return jsonable(value.to_dict(), where=where)
    raise TypeError(
        f"{where} = {value!r} ({type(value).__name__}) has no JSON form; put a string, number, "
        "list or dict in the config instead (e.g. the name of the function, not the function)"
    )


def _drop_keys(value: Any, ignore: frozenset[str], prefix: str = "") -> Any:
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            path = f"{prefix}.{key}" if prefix else key
            if key in ignore or path in ignore:
                continue
            out[key] = _drop_keys(item, ignore, path)
        return out
    if isinstance(value, list):
        return [_drop_keys(v, ignore, prefix) for v in value]
    return value


def canonical_json(config: Mapping[str, Any], ignore: Iterable[str] = NON_DEFINING_KEYS) -> str:
    """The config as one canonical JSON string (sorted keys, no whitespace), ``ignore`` dropped."""
    tree = _drop_keys(jsonable(dict(config), where="config"), frozenset(ignore))
    return json.dumps(tree, sort_keys=True, separators=(",", ":"), allow_nan=True)


def config_fingerprint(config: Mapping[str, Any], ignore: Iterable[str] = NON_DEFINING_KEYS) -> str:
    """sha256 (hex) of :func:`canonical_json`; equal configs up to ``ignore`` hash equally."""
    return hashlib.sha256(canonical_json(config, ignore).encode()).hexdigest()


def _leaf_name(path: tuple) -> str:
    parts = []
    for key in path:
        for attr in ("key", "name", "idx"):
            if hasattr(key, attr):
                parts.append(str(getattr(key, attr)))
                break
        else:
            parts.append(str(key))
    return "/".join(parts)


def _host_array(leaf: Any) -> np.ndarray:
    if isinstance(leaf, jax.Array):
        if jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
            leaf = jax.random.key_data(leaf)
        if not leaf.is_fully_addressable:
            from jax.experimental import multihost_utils

            leaf = multihost_utils.process_allgather(leaf, tiled=True)
    return np.ascontiguousarray(np.asarray(leaf))


def params_fingerprint(params: Any) -> str:
    """sha256 (hex) over sorted leaf paths, dtypes, shapes and bytes of a parameter pytree.

    Sharding-independent: the same values give the same digest on one device, on a mesh, or
    across hosts. Leaf names follow :mod:`adapt.paths` (``a/b/kernel``) for nested dicts.
    """
    leaves = jax.tree_util.tree_flatten_with_path(params)[0]
    named = sorted(((_leaf_name(p), leaf) for p, leaf in leaves), key=lambda item: item[0])
    digest = hashlib.sha256()
    for name, leaf in named:
        arr = _host_array(leaf)
        header = f"{name}|{arr.dtype.name}|{','.join(map(str, arr.shape))}|{arr.nbytes}\n"
        digest.update(header.encode())
        digest.update(arr.reshape(-1).view(np.uint8).data)
    return digest.hexdigest()


def data_fingerprint(splits: Mapping[str, Any]) -> str:
    """sha256 (hex) of the sizes and labels of a run's data sets (module docstring)."""
    digest = hashlib.sha256()
    for name in sorted(splits):
        data = splits[name]
        if data is None:
            continue
        digest.update(f"{name}|{int(data.num_examples)}\n".encode())
        for attr in ("labels", "index"):  # in-memory classification labels, a streamed index
            value = getattr(data, attr, None)
            if isinstance(value, np.ndarray):
                digest.update(np.ascontiguousarray(value).view(np.uint8).data)
        arrays = getattr(data, "arrays", None)  # in-memory LM rows
        if isinstance(arrays, Mapping) and "input_ids" in arrays:
            digest.update(np.ascontiguousarray(arrays["input_ids"]).view(np.uint8).data)
    return digest.hexdigest()
