"""Adaptation methods, each attachable to any model by module path (see :mod:`.base`).

``build(name, family, **options)`` makes a method from a config; ``METHODS`` lists the names.
Recipes that only choose what trains (linear probe, full/partial fine-tuning, BitFit, gradual
unfreezing, LP-FT) and WiSE-FT live in :mod:`.recipes`; EWC and L2-SP in :mod:`.regularizers`.
"""

from __future__ import annotations

from typing import Any

from adapt.methods.adapters import BottleneckAdapter
from adapt.methods.base import (
    Method,
    MethodError,
    apply,
    family_default,
    init,
    merge_all,
    rules_for,
)
from adapt.methods.ia3 import IA3
from adapt.methods.lora import LoRA
from adapt.methods.prompts import (
    PrefixTuning,
    PromptTuning,
    PTuningV2,
    VirtualTokenPromptTuning,
)
from adapt.methods.qlora import QLoRA
from adapt.models.families import FAMILIES

# Each family's LoRA default (attention query and value: Hu et al.'s and PEFT's) and every linear
# layer of its blocks (QLoRA's recipe), from the registry; kept as tables for library users.
LORA_TARGETS = {n: f.lora_targets for n, f in FAMILIES.items() if f.lora_targets}
ALL_LINEAR = {n: f.all_linear for n, f in FAMILIES.items() if f.all_linear}


def option_names(name: str) -> list[str]:
    """The keyword options ``build(name, ...)`` accepts (for error messages and docs)."""
    import inspect

    makers = {
        "lora": [LoRA], "rslora": [LoRA], "dora": [LoRA], "qlora": [QLoRA, LoRA],
        "ia3": [IA3, IA3.preset], "houlsby": [BottleneckAdapter, BottleneckAdapter.houlsby],
        "pfeiffer": [BottleneckAdapter, BottleneckAdapter.pfeiffer], "prefix": [PrefixTuning],
        "prompt": [PromptTuning], "ptuning_v2": [PTuningV2],
    }  # fmt: skip
    names: set[str] = set()
    for maker in makers.get(name, []):
        for param in inspect.signature(maker).parameters.values():
            if param.kind in (param.POSITIONAL_OR_KEYWORD, param.KEYWORD_ONLY):
                names.add(param.name)
    names.discard("family")
    return sorted(names | {"targets"} if name != "prefix" and name != "prompt" else names)


def build(name: str, family: str, **options: Any) -> Method:
    """A method by name, with family defaults for its targets. An option the method does not
    take is a :class:`MethodError` naming the nearest one it does."""
    try:
        return _build(name, family, **options)
    except TypeError as e:
        import difflib
        import re

        bad = re.search(r"unexpected keyword argument '(\w+)'", str(e))
        if not bad:
            raise
        known = option_names(name)
        close = difflib.get_close_matches(bad.group(1), known, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise MethodError(
            f"method {name!r} has no option {bad.group(1)!r}{hint}; its options: {', '.join(known)}"
        ) from None


def _build(name: str, family: str, **options: Any) -> Method:
    if name in ("lora", "rslora", "dora"):
        targets = options.pop("targets", None) or family_default(family, "lora_targets")
        if targets == "all_linear":
            targets = family_default(family, "all_linear")
        return LoRA(
            targets,
            rslora=name == "rslora" or options.pop("rslora", False),
            dora=name == "dora" or options.pop("dora", False),
            **options,
        )
    if name == "ia3":
        if "targets" in options:
            return IA3(options.pop("targets"), options.pop("feedforward", None), **options)
        return IA3.preset(family, **options)
    if name == "houlsby":
        return BottleneckAdapter.houlsby(family, **options)
    if name == "pfeiffer":
        return BottleneckAdapter.pfeiffer(family, **options)
    if name == "prefix":
        return PrefixTuning(**options)
    if name == "prompt":
        return PromptTuning(**options)
    if name == "ptuning_v2":
        return PTuningV2(**options)
    if name == "qlora":  # QLoRA's recipe: NF4 base and adapters on every linear layer
        targets = options.pop("targets", None) or "all_linear"
        if targets == "all_linear":
            targets = family_default(family, "all_linear")
        return QLoRA(targets, **options)
    raise MethodError(f"unknown method {name!r}; choose from {sorted(METHODS)}")


METHODS = (
    "lora",
    "rslora",
    "dora",
    "ia3",
    "houlsby",
    "pfeiffer",
    "prefix",
    "prompt",
    "ptuning_v2",
    "qlora",
)

__all__ = [
    "METHODS",
    "BottleneckAdapter",
    "IA3",
    "LoRA",
    "Method",
    "MethodError",
    "PTuningV2",
    "PrefixTuning",
    "PromptTuning",
    "QLoRA",
    "VirtualTokenPromptTuning",
    "apply",
    "build",
    "option_names",
    "init",
    "merge_all",
    "rules_for",
]
