"""Naming shared by export and import: an adapter directory's file names, and how adapt's
parameter paths translate to Hugging Face module names for one architecture.

The names come from the family's conversion table (its converter in :mod:`adapt.convert`), the
same one ``load_pretrained`` and ``save_pretrained`` use, so ``model/layers_0/self_attn/q_proj``
is ``model.layers.0.self_attn.q_proj`` in both a checkpoint and an adapter.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from adapt import paths
from adapt.convert import hf, mapping
from adapt.errors import AdaptError

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"


class AdapterFormatError(AdaptError, ValueError):
    """A PEFT adapter that does not fit the model, or a method PEFT cannot represent."""


@dataclass(frozen=True)
class ModelInfo:
    """What the conversion needs to know about one architecture."""

    family: hf.Family
    module: Any
    inputs: tuple
    abstract: dict  # ShapeDtypeStruct tree of the base parameters
    leaves: dict[str, tuple[int, ...]]  # our base leaf -> shape
    table: list[mapping.Rule]
    dense: dict[str, str]  # our Dense module path -> HF module name


@functools.lru_cache(maxsize=8)
def _built(config: Any, architecture: str) -> tuple[hf.Family, Any, tuple, dict]:
    """Family, module, dummy inputs and abstract base parameters (one trace; cached because
    exporting or importing many adapters for one model is the common case)."""
    family = hf.family_of_architecture(architecture)
    module = family.build(config, architecture)
    inputs = family.dummy_inputs(config, architecture)
    return family, module, inputs, hf.abstract_params(module, inputs)


def model_info(config: Any, architecture: str, hf_keys: Sequence[str] | None) -> ModelInfo:
    """The module, base parameter shapes and name table of ``architecture``.

    ``hf_keys`` is None when exporting (name modules as ``architecture`` does), else an adapter's
    keys, so that one made on a different head (the bare backbone) can still be named on this one.
    ``dense`` lists the modules adapters can attach to: 2-D kernels that are HF ``.weight``s.
    """
    try:
        family, module, inputs, abstract = _built(config, architecture)
    except TypeError:  # a config with unhashable fields (e.g. a list of eos ids): no cache
        family, module, inputs, abstract = _built.__wrapped__(config, architecture)
    leaves = {p: tuple(s.shape) for p, s in paths.flatten(abstract).items()}
    table = family.table(config, architecture, hf_keys)
    dense = {}
    for path, shape in leaves.items():
        key = to_hf(table, path)
        if path.endswith("/kernel") and len(shape) == 2 and key and key.endswith(".weight"):
            dense[path.removesuffix("/kernel")] = key.removesuffix(".weight")
    return ModelInfo(family, module, inputs, abstract, leaves, table, dense)


def to_hf(table: Sequence[mapping.Rule], path: str) -> str | None:
    """The HF key of our leaf ``path`` (first rule that names it), or None."""
    return next((k for r in table if (k := r.ours_to_hf(path)) is not None), None)


def to_ours(table: Sequence[mapping.Rule], key: str) -> tuple[mapping.Rule, str] | None:
    """The rule naming HF ``key`` and our leaf path for it, or None."""
    return next(((r, p) for r in table if (p := r.hf_to_ours(key)) is not None), None)


def describe_available(model: ModelInfo) -> str:
    """An error-message tail listing the modules adapters can attach to, so that a wrong target
    name can be corrected without reading the conversion table."""
    return "\nModules of the model that adapters can attach to:" + paths.shorten_list(
        sorted(model.dense.values()), 60
    )


__all__ = [
    "CONFIG_NAME",
    "WEIGHTS_NAME",
    "AdapterFormatError",
    "ModelInfo",
    "describe_available",
    "model_info",
    "to_hf",
    "to_ours",
]
