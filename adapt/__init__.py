"""adapt: efficient adaptation of pretrained models in JAX/Flax.

Importing :mod:`adapt` is cheap and has no side effects: the names below are looked up in their
submodules the first time they are used (PEP 562), so ``import adapt`` loads neither JAX nor
Flax. ``dir(adapt)`` lists them:

- methods (attach to a model by module path; each labels its new leaves for the optimizer):
  ``LoRA`` (``"lora"``; ``dora=True``, ``rslora=True``), ``QLoRA`` (``"lora"`` over an NF4
  base), ``IA3`` (``"ia3"``), ``BottleneckAdapter`` (Houlsby / Pfeiffer, ``"adapter"``),
  ``PrefixTuning`` / ``PTuningV2`` (``"prefix"``), ``PromptTuning`` (``"prompt"``);
  ``init`` / ``apply`` / ``merge_all`` / ``rules_for`` run a model with methods attached;
- recipes that only choose what trains (rule lists for :mod:`adapt.partition`): ``linear_probe``,
  ``full_finetune``, ``partial_finetune``, ``bitfit``, ``lp_ft``, ``unfreezing_stages``; and
  ``wise_ft`` (weight interpolation);
- regularisers for your loss: ``diagonal_fisher``, ``ewc_penalty``, ``l2sp_penalty``;
- probes: ``extract_features``, ``fit_logistic_regression``;
- the step and the optimizer: ``train_step`` and ``init_state`` (the one step every loop runs:
  accumulation, penalties, non-finite guard), ``train_step_fn`` / ``jit_train_step`` (its older
  signature), ``build_optimizer`` (``optax.multi_transform`` per label, schedules, layer-wise
  decay);
- tasks: ``tasks`` (classification, regression, causal LM objects: loss, metrics);
- weights: ``load_pretrained`` / ``save_pretrained`` (Hugging Face), ``load_native`` /
  ``save_native``, ``resolve_weights`` (local path, packaged model or hub name);
- whole runs: ``run`` (a config -> a finished workdir), ``evaluate_workdir``;
- modules: ``partition`` (regex rules -> labels, split, merge), ``optim``, ``sharding``,
  ``paths``, ``weights``, ``methods``, ``models``, ``convert``, ``data``.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_NAMES = {
    "LoRA": "adapt.methods.lora",
    "QLoRA": "adapt.methods.qlora",
    "IA3": "adapt.methods.ia3",
    "BottleneckAdapter": "adapt.methods.adapters",
    "PrefixTuning": "adapt.methods.prompts",
    "PTuningV2": "adapt.methods.prompts",
    "PromptTuning": "adapt.methods.prompts",
    "init": "adapt.methods.base",
    "apply": "adapt.methods.base",
    "merge_all": "adapt.methods.base",
    "rules_for": "adapt.methods.base",
    "linear_probe": "adapt.methods.recipes",
    "full_finetune": "adapt.methods.recipes",
    "partial_finetune": "adapt.methods.recipes",
    "bitfit": "adapt.methods.recipes",
    "lp_ft": "adapt.methods.recipes",
    "unfreezing_stages": "adapt.methods.recipes",
    "wise_ft": "adapt.methods.recipes",
    "diagonal_fisher": "adapt.methods.regularizers",
    "ewc_penalty": "adapt.methods.regularizers",
    "l2sp_penalty": "adapt.methods.regularizers",
    "extract_features": "adapt.methods.probe",
    "fit_logistic_regression": "adapt.methods.probe",
    "train_step": "adapt.step",
    "init_state": "adapt.step",
    "train_step_fn": "adapt.step",
    "jit_train_step": "adapt.step",
    "load_pretrained": "adapt.convert.hf",
    "save_pretrained": "adapt.convert.hf",
    "load_native": "adapt.convert.native",
    "save_native": "adapt.convert.native",
    "run": "adapt.harness.loop",
    "evaluate_workdir": "adapt.harness.loop",
}
_RENAMED = {
    "build_optimizer": ("adapt.optim", "build"),
    "resolve_weights": ("adapt.weights", "resolve"),
}
_MODULES = ("partition", "optim", "sharding", "paths", "weights", "methods", "models", "convert",
            "tasks",
            "data")  # fmt: skip

__all__ = sorted([*_NAMES, *_RENAMED, *_MODULES])


def __getattr__(name: str) -> Any:
    if name in _NAMES:
        value = getattr(importlib.import_module(_NAMES[name]), name)
    elif name in _RENAMED:
        module, attribute = _RENAMED[name]
        value = getattr(importlib.import_module(module), attribute)
    elif name in _MODULES:
        value = importlib.import_module(f"adapt.{name}")
    else:
        raise AttributeError(f"module 'adapt' has no attribute {name!r}")
    globals()[name] = value  # looked up once
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
