"""Load and save Hugging Face model directories (``config.json`` + safetensors) for any family.

Each family module (``hf_bert``, ``hf_vit``, ``hf_llama``) provides a :class:`Family`: how to read
and write its config, build the linen module for an architecture, make dummy inputs for shape
inference, and the conversion table. This module does the rest once for all of them:

    model, params, config = load_pretrained("path/to/all-MiniLM-L6-v2")
    model, params, config = load_pretrained(path, architecture="BertForSequenceClassification",
                                            num_labels=2)   # new head, freshly initialised
    save_pretrained(params, config, "out/", architecture="BertForSequenceClassification")

Shapes are inferred with ``jax.eval_shape`` (nothing allocated); every name and shape is checked
before any tensor is read; tensors are read one at a time.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax
import numpy as np

from adapt import paths
from adapt.convert import mapping
from adapt.convert.hf_config import UnsupportedConfigError, as_dict
from adapt.convert.safetensors_io import SafetensorsReader, save_safetensors


@dataclass(frozen=True)
class Family:
    """What a model family tells the generic loader.

    - ``model_types``: HF ``model_type`` values it reads (``"bert"``, ``"roberta"``).
    - ``architectures``: HF architecture names it can build.
    - ``config_from_hf(hf_dict, **overrides) -> config``: strict; raises UnsupportedConfigError.
    - ``config_to_hf(config, architecture) -> dict``: a config.json transformers loads.
    - ``build(config, architecture) -> nn.Module``.
    - ``dummy_inputs(config, architecture) -> tuple``: positional args for ``module.init``.
    - ``table(config, architecture, hf_keys) -> list[Rule]``; ``hf_keys`` is None on export, else
      the checkpoint's keys (so a base-model checkpoint can feed a task model).
    - ``ignore``: regexes of HF keys that are buffers, not weights (``.*position_ids``).
    - ``new_head(architecture) -> list[str]``: regexes of our leaves a checkpoint may lack
      (a task head added for fine-tuning); they are initialised from ``rng``.
    - ``poolings``: how its classifiers may pool (config field ``pooling``); the default is
      the checkpoint's own: a sentence-transformers folder's pooling when it has one
      (:mod:`adapt.convert.sentence_transformers`), else the architecture's head.
    """

    name: str
    model_types: tuple[str, ...]
    architectures: tuple[str, ...]
    config_from_hf: Callable[..., Any]
    config_to_hf: Callable[[Any, str], dict]
    build: Callable[[Any, str], Any]
    dummy_inputs: Callable[[Any, str], tuple]
    table: Callable[[Any, str, Sequence[str] | None], list[mapping.Rule]]
    ignore: tuple[str, ...] = ()
    new_head: Callable[[str], list[str]] = lambda architecture: []
    poolings: tuple[str, ...] = ()  # values of the config's ``pooling`` (classifier heads)


def _families() -> list[Family]:
    # The converters the family registry names, imported lazily: importing adapt.convert.hf
    # imports no model, and hf_bert & co. (which import this module) need no import cycle.
    import importlib

    from adapt.models import families

    return [importlib.import_module(name).FAMILY for name in families.converters()]


def family_for(model_type: str) -> Family:
    for fam in _families():
        if model_type in fam.model_types:
            return fam
    known = sorted(t for f in _families() for t in f.model_types)
    raise UnsupportedConfigError(f"model_type {model_type!r} is not supported (supported: {known})")


def read_config(path: str | os.PathLike) -> dict:
    cfg_path = Path(path) / "config.json"
    if not cfg_path.exists():
        raise FileNotFoundError(f"{cfg_path}: no config.json; is {path} a Hugging Face model dir?")
    try:
        return json.loads(cfg_path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{cfg_path}: not valid JSON ({e})") from e


def from_hf_config(hf_config: Mapping | Any, **overrides: Any) -> Any:
    """adapt's config for a Hugging Face config (a ``config.json`` dict or a transformers
    config object). Raises :class:`UnsupportedConfigError` naming any field adapt does not
    implement, instead of silently computing something else."""
    hf_dict = as_dict(hf_config)
    return family_for(hf_dict.get("model_type", "<missing>")).config_from_hf(hf_dict, **overrides)


def to_hf_config(config: Any, architecture: str) -> dict:
    """The ``config.json`` dict for ``config`` built as ``architecture``."""
    return family_of_architecture(architecture).config_to_hf(config, architecture)


def family_of_architecture(architecture: str) -> Family:
    """The family that builds ``architecture`` (``"LlamaForCausalLM"`` -> LLaMA's).

    Public because code outside the loader (PEFT adapter export/import) must build the same
    module and use the same conversion table as ``load_pretrained`` for a given architecture,
    and a checkpoint's ``model_type`` is not always at hand there. Raises
    :class:`UnsupportedConfigError` listing the supported architectures.
    """
    for fam in _families():
        if architecture in fam.architectures:
            return fam
    known = sorted(a for f in _families() for a in f.architectures)
    raise UnsupportedConfigError(f"architecture {architecture!r} is not supported (have: {known})")


def abstract_params(module, inputs: tuple) -> dict:
    """Parameter shapes and dtypes without allocating anything."""
    shapes = jax.eval_shape(lambda: module.init(jax.random.key(0), *inputs))
    return shapes["params"]


def init_subset(module, inputs: tuple, wanted: list[str], rng) -> dict[str, jax.Array]:
    """Initialise only ``wanted`` leaves; XLA prunes the rest of ``init`` as dead code."""

    def init():
        flat = paths.flatten(module.init(rng, *inputs)["params"])
        return {p: flat[p] for p in wanted}

    return jax.jit(init)()


def load_pretrained(
    path: str | os.PathLike,
    *,
    architecture: str | None = None,
    rng: jax.Array | None = None,
    **overrides: Any,
) -> tuple[Any, dict, Any]:
    """Read a HF model directory into ``(module, params, config)``.

    ``architecture`` defaults to the checkpoint's own (``config.json``'s ``architectures[0]``);
    ask for another (e.g. a sequence-classification head on a base encoder) and the missing head
    is initialised from ``rng``. ``overrides`` set config fields (``num_labels=77``,
    ``dtype=jnp.bfloat16``).
    """
    hf_cfg = read_config(path)
    fam = family_for(hf_cfg.get("model_type", "<missing>"))
    architecture = architecture or (hf_cfg.get("architectures") or [fam.architectures[0]])[0]
    if architecture not in fam.architectures:
        raise UnsupportedConfigError(
            f"architecture {architecture!r} is not supported for {fam.name} "
            f"(supported: {list(fam.architectures)})"
        )
    if fam.poolings and overrides.get("pooling") is None:
        from adapt.convert.sentence_transformers import pooling_of

        overrides["pooling"] = pooling_of(path)  # None without sentence-transformers files
    elif overrides.get("pooling") not in (None, *fam.poolings):
        raise UnsupportedConfigError(
            f"pooling {overrides['pooling']!r} is not one of {fam.name}'s: {list(fam.poolings)}"
        )
    if not fam.poolings and overrides.get("pooling") is not None:
        raise UnsupportedConfigError(f"{fam.name} models have no pooling option")
    overrides = {k: v for k, v in overrides.items() if not (k == "pooling" and v is None)}
    try:
        config = fam.config_from_hf(hf_cfg, **overrides)
    except (TypeError, ValueError) as e:
        if isinstance(e, UnsupportedConfigError):
            raise
        raise UnsupportedConfigError(f"{path}: {e}") from None
    module = fam.build(config, architecture)
    inputs = fam.dummy_inputs(config, architecture)
    expected = {
        p: (tuple(s.shape), np.dtype(s.dtype))
        for p, s in paths.flatten(abstract_params(module, inputs)).items()
    }
    reader = SafetensorsReader(path)
    flat, fresh = mapping.import_tensors(
        reader,
        fam.table(config, architecture, list(reader)),
        expected,
        ignore=fam.ignore,
        allow_missing=fam.new_head(architecture),
        # device_put, not jnp.asarray: the reader hands over fresh 64-byte-aligned buffers that
        # nothing else references, which XLA's CPU client adopts without a copy.
        convert_leaf=jax.device_put,
    )
    if fresh:
        flat.update(init_subset(module, inputs, fresh, jax.random.key(0) if rng is None else rng))
    return module, paths.unflatten(flat), config


def to_hf_state_dict(params: Mapping, config: Any, architecture: str, family: Family) -> dict:
    table = family.table(config, architecture, None)
    return mapping.export_tensors(
        {p: np.asarray(v) for p, v in paths.flatten(params).items()}, table
    )


# What Hugging Face tokenizers are made of, across BERT WordPiece, BPE and SentencePiece models
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "added_tokens.json", "vocab.txt", "vocab.json", "merges.txt",
                   "tokenizer.model", "chat_template.jinja", "chat_template.json")  # fmt: skip


def save_pretrained(
    params: Mapping,
    config: Any,
    directory: str | os.PathLike,
    *,
    architecture: str,
    max_shard_bytes: int | None = None,
    tokenizer_from: str | os.PathLike | None = None,
) -> Path:
    """Write ``config.json`` + safetensors that ``transformers.AutoModel*.from_pretrained`` loads,
    and the tokenizer files found in the folder ``tokenizer_from`` (the source checkpoint), so
    ``AutoTokenizer.from_pretrained(directory)`` works too."""
    fam = family_of_architecture(architecture)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = to_hf_state_dict(params, config, architecture, fam)
    save_safetensors(state, directory, max_shard_bytes=max_shard_bytes)
    hf_cfg = fam.config_to_hf(config, architecture)
    (directory / "config.json").write_text(json.dumps(hf_cfg, indent=2, sort_keys=True))
    if tokenizer_from is not None and Path(tokenizer_from).is_dir():
        for name in TOKENIZER_FILES:
            if (Path(tokenizer_from) / name).is_file():
                shutil.copyfile(Path(tokenizer_from) / name, directory / name)
    return directory


__all__ = [
    "TOKENIZER_FILES",
    "Family",
    "abstract_params",
    "as_dict",
    "family_for",
    "family_of_architecture",
    "from_hf_config",
    "load_pretrained",
    "read_config",
    "save_pretrained",
    "to_hf_config",
]
