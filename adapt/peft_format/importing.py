"""Import: a PEFT adapter directory -> adapt methods and leaves in our names and layout.

Every key of the file must fit a module of the model and every weight the config asks for must
be present; the method is rebuilt from the config (targets as an exact regex of the adapted
modules) and asked, abstractly on the model itself, which leaves it creates, so shapes are
checked against what the method will use rather than against a second copy of its layout.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from adapt import paths
from adapt.convert import mapping
from adapt.convert.safetensors_io import SafetensorsReader
from adapt.methods.base import Method, init
from adapt.methods.ia3 import IA3
from adapt.methods.lora import LoRA
from adapt.methods.prompts import PromptTuning, VirtualTokenPromptTuning
from adapt.models import families
from adapt.peft_format.config import peft_feedforward, peft_targets, read_config, saved_by_peft
from adapt.peft_format.names import (
    WEIGHTS_NAME,
    AdapterFormatError,
    ModelInfo,
    describe_available,
    model_info,
    to_ours,
)

# Per peft_type: suffix of an adapter key -> which of the method's tensors it holds.
_KINDS = {
    "LORA": {"lora_A.weight": "a", "lora_B.weight": "b", "lora_magnitude_vector": "magnitude"},
    "IA3": {"ia3_l": "l"},
    "PROMPT_TUNING": {},
}


def _listing(title: str, items: list[str]) -> str:
    return f"\n{title} ({len(items)}):{paths.shorten_list(items)}" if items else ""


def import_adapter(
    directory: str | os.PathLike, params: Mapping, model_config: Any, architecture: str
) -> tuple[list[Method], dict]:
    """Read a PEFT adapter directory for ``architecture`` into ``(methods, adapter_params)``.

    ``adapter_params`` holds the method leaves in our names plus the full weights of any
    ``modules_to_save`` (a classification head), which *replace* those of ``params``: combine with
    :func:`overlay` (or ``partition.merge`` with base params that lack the head). Raises
    :class:`AdapterFormatError` naming unsupported types or options, keys that fit no module of
    the model, missing weights and mis-shaped tensors.
    """
    directory = Path(directory)
    cfg = read_config(directory)
    weights = directory / WEIGHTS_NAME
    if not weights.exists():
        found = sorted(p.name for p in directory.iterdir())
        raise AdapterFormatError(
            f"{weights}: missing (only safetensors adapters are read: {found})"
        )
    reader = SafetensorsReader(weights)
    keys = _sort_keys(cfg, reader.shapes(), model_config, architecture, f"{directory}")
    method, leaves = _convert(cfg, reader, keys, f"{directory}")
    if keys.heads:
        flat_params = paths.flatten(params)
        abstract = paths.flatten(keys.model.abstract)
        expected = {
            p: (
                keys.model.leaves[p],
                np.dtype((flat_params[p] if p in flat_params else abstract[p]).dtype),
            )
            for p in keys.heads
        }
        try:
            converted, _ = mapping.import_tensors(
                {hf_key: reader[key] for key, hf_key in keys.heads.values()},
                keys.model.table,
                expected,
            )
        except mapping.CheckpointMismatchError as e:
            raise AdapterFormatError(f"{directory}: modules_to_save weights: {e}") from e
        leaves.update(converted)
    return [method], paths.unflatten({p: jnp.asarray(v) for p, v in leaves.items()})


@dataclass
class _Keys:
    """An adapter file's keys, sorted: per adapted HF module ``{kind: key}``, and per head leaf of
    ours ``(key, HF key)``."""

    model: ModelInfo
    adapter: dict[str, dict[str, str]]
    heads: dict[str, tuple[str, str]]


def _sort_keys(cfg: dict, shapes: Mapping, config: Any, architecture: str, where: str) -> _Keys:
    """Assign every key to a module of the model; raise listing the keys that fit none and the
    weights PEFT's config asks for but the file lacks."""
    peft_type = cfg["peft_type"]
    kinds = dict(_KINDS[peft_type])
    if not cfg.get("use_dora"):
        kinds.pop("lora_magnitude_vector", None)  # in a plain LoRA adapter: unexpected
    unexpected, missing, stripped = [], [], {}
    for key in shapes:
        prefix = next((p for p in ("base_model.model.", "base_model.") if key.startswith(p)), None)
        if prefix is not None:
            stripped[key.removeprefix(prefix)] = key
        elif key != "prompt_embeddings" or peft_type != "PROMPT_TUNING":
            unexpected.append(key)
    if peft_type == "PROMPT_TUNING" and "prompt_embeddings" not in shapes:
        missing.append("prompt_embeddings")
    # The backbone prefix may differ from the architecture's (an adapter made on the bare
    # backbone used on its classifier): name the modules the way that fits more of the keys.
    model = max(
        (model_info(config, architecture, hf_keys) for hf_keys in (None, list(stripped))),
        key=lambda m: sum(
            any(k.startswith(f"{d}.") for d in m.dense.values()) or to_ours(m.table, k) is not None
            for k in stripped
        ),
    )
    hf_dense = {hf_mod: ours for ours, hf_mod in model.dense.items()}
    adapter: dict[str, dict[str, str]] = {}
    heads: dict[str, tuple[str, str]] = {}
    for key, original in stripped.items():
        suffix = next((s for s in kinds if key.endswith(f".{s}")), None)
        module = key.removesuffix(f".{suffix}")
        if suffix is not None and module in hf_dense:
            adapter.setdefault(module, {})[kinds[suffix]] = original
        elif suffix is None and (hit := to_ours(model.table, key)) and hit[1] in model.leaves:
            if not saved_by_peft(cfg, key):
                unexpected.append(f"{original} (not in modules_to_save)")
            heads[hit[1]] = (original, key)
        else:
            unexpected.append(original)
    if peft_type != "PROMPT_TUNING":
        decided = {m: peft_targets(cfg, m) for m in hf_dense}
        # "all-linear" or no target list: the weights say which modules were adapted.
        targeted = (
            set(adapter) if None in decided.values() else {m for m, t in decided.items() if t}
        )
        unexpected += [
            f"{k} (module not selected by target_modules)"
            for m in sorted(set(adapter) - targeted)
            for k in adapter[m].values()
        ]
        for m in sorted(targeted):
            have = adapter.get(m, {})
            missing += [f"base_model.model.{m}.{s}" for s, k in kinds.items() if k not in have]
        if not adapter and not unexpected and not missing:
            raise AdapterFormatError(f"{where}: holds no {peft_type} weights")
    if unexpected or missing:
        raise AdapterFormatError(
            f"{where}: the adapter does not fit {architecture}:"
            + _listing("keys that fit no module of the model", sorted(unexpected))
            + _listing("weights missing from the adapter", missing)
            + describe_available(model)
            + f"\nmodules_to_save: {cfg.get('modules_to_save')}"
        )
    return _Keys(model, adapter, heads)


def _convert(cfg: dict, reader: SafetensorsReader, keys: _Keys, where: str) -> tuple[Method, dict]:
    """The method the config describes and its leaves in our layout; raise listing every
    tensor whose shape does not fit (shapes in PEFT's layout)."""
    peft_type, model, shapes = cfg["peft_type"], keys.model, reader.shapes()
    hf_dense = {hf_mod: ours for ours, hf_mod in model.dense.items()}
    want: dict[str, tuple[tuple[int, ...], str, Any]] = {}  # key -> (HF shape, our path, to_ours)
    ff_modules = [m for m in keys.adapter if peft_type == "IA3" and peft_feedforward(cfg, m)]
    for module, kinds in keys.adapter.items():
        ours = hf_dense[module]
        d_in, d_out = model.leaves[f"{ours}/kernel"]
        r = cfg.get("r", 8)
        layouts = {
            "a": ((r, d_in), f"{ours}/lora_a", np.transpose),
            "b": ((d_out, r), f"{ours}/lora_b", np.transpose),
            "magnitude": ((d_out,), f"{ours}/lora_magnitude", np.asarray),
            "l": ((1, d_in) if module in ff_modules else (d_out, 1), f"{ours}/ia3_l", np.ravel),
        }
        want.update({key: layouts[kind] for kind, key in kinds.items()})
    targets = _exact(hf_dense[m] for m in keys.adapter)
    if peft_type == "LORA":
        method: Method = LoRA(
            targets,
            rank=cfg.get("r", 8),
            alpha=cfg.get("lora_alpha", 8),
            dropout=cfg.get("lora_dropout", 0.0),
            rslora=bool(cfg.get("use_rslora")),
            dora=bool(cfg.get("use_dora")),
        )
    elif peft_type == "IA3":
        method = IA3(targets, _exact(hf_dense[m] for m in ff_modules) if ff_modules else None)
    elif (site := families.get(model.family.name).peft_prompt) is not None:
        num = cfg.get("num_virtual_tokens")
        if not isinstance(num, int) or num <= 0:
            raise AdapterFormatError(f"{where}: num_virtual_tokens={num!r} is not a positive int")
        method = (VirtualTokenPromptTuning if site == "virtual_tokens" else PromptTuning)(num)
    else:
        raise AdapterFormatError(f"{where}: prompt tuning is not supported for {model.family.name}")
    # The leaves the method creates on this model, by the model itself (abstractly).
    expected = jax.eval_shape(
        lambda p: init(model.module, p, [method], jax.random.key(0), *model.inputs),
        model.abstract,
    )
    expected = {p: tuple(s.shape) for p, s in paths.flatten(expected).items()}
    if peft_type == "PROMPT_TUNING":
        ((path, shape),) = expected.items()
        want["prompt_embeddings"] = (shape, path, np.asarray)
    misshaped = [
        f"{key}: {list(shapes[key])}, expected {list(shape)}"
        for key, (shape, _, _) in sorted(want.items())
        if tuple(shapes[key]) != shape
    ]
    if misshaped:
        raise AdapterFormatError(
            f"{where}: the adapter does not fit {model.family.name} with this config:"
            + _listing("tensors of the wrong shape (PEFT layout)", misshaped)
        )
    leaves = {path: to_ours(reader[key]) for key, (_, path, to_ours) in want.items()}
    if {p: v.shape for p, v in leaves.items()} != expected:  # a bug rather than bad input
        raise AdapterFormatError(
            f"internal: leaves {sorted(leaves)} != method's {sorted(expected)}"
        )
    return method, leaves


def _exact(modules) -> str:
    """A regex full-matching exactly these module paths."""
    return "|".join(re.escape(m) for m in sorted(modules))


def overlay(params: Mapping, adapter_params: Mapping) -> dict:
    """``params`` with ``adapter_params`` added; leaves present in both (a ``modules_to_save``
    head) take the adapter's value, as PEFT's ``modules_to_save`` replaces the base module."""
    flat = dict(paths.flatten(params))
    flat.update(paths.flatten(adapter_params))
    return paths.unflatten(flat)


__all__ = ["import_adapter", "overlay"]
