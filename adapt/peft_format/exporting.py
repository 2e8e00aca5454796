"""Export: a trained adapt method and its leaves -> a PEFT adapter directory.

``target_modules`` is always written as the explicit list of adapted modules: a regex or PEFT's
suffix matching could select other modules than the ones adapt trained. Tensors are converted
to PEFT's layout (``lora_A.weight`` is ``(r, in)`` where our ``lora_a`` is ``(in, r)``; IA3's
``ia3_l`` is ``(out, 1)``, or ``(1, in)`` on feed-forward modules), and a new head is saved in
full under ``modules_to_save``. Anything PEFT would load but compute differently is refused.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from adapt import paths
from adapt.convert import mapping
from adapt.convert.safetensors_io import write_file
from adapt.methods.base import Method
from adapt.methods.ia3 import IA3
from adapt.methods.lora import LoRA
from adapt.methods.prompts import PromptTuning, VirtualTokenPromptTuning
from adapt.models import families
from adapt.peft_format.names import (
    CONFIG_NAME,
    WEIGHTS_NAME,
    AdapterFormatError,
    ModelInfo,
    describe_available,
    model_info,
    to_hf,
)

# Our leaves saved in full by default: the modules PEFT itself wraps in modules_to_save for
# classification tasks (a head that the base checkpoint lacks or that was re-trained).
DEFAULT_MODULES_TO_SAVE = r"(classifier|score)/.*"


def _task_type(architecture: str) -> str | None:
    """PEFT's ``task_type`` for ``architecture``: it picks the ``PeftModel`` subclass that
    wraps the model on load (and so how inputs are passed), and must match the architecture."""
    for suffix, task in (
        ("ForSequenceClassification", "SEQ_CLS"),
        ("ForTokenClassification", "TOKEN_CLS"),
        ("ForCausalLM", "CAUSAL_LM"),
        ("Model", "FEATURE_EXTRACTION"),
    ):
        if architecture.endswith(suffix):
            return task
    return None  # masked LM, image classification: PEFT's generic PeftModel


def export_adapter(
    params: Mapping,
    methods: Sequence[Method],
    model_config: Any,
    architecture: str,
    directory: str | os.PathLike,
    *,
    base_model_name_or_path: str | None = None,
    modules_to_save_regex: str | None = None,
) -> Path:
    """Write ``adapter_config.json`` + ``adapter_model.safetensors`` that
    ``peft.PeftModel.from_pretrained(<transformers architecture>, directory)`` loads.

    ``params``: the full tree (base + method leaves, as after training). ``methods``: exactly one
    LoRA (rsLoRA/DoRA), IA3, or prompt tuning (``VirtualTokenPromptTuning`` where the family's
    record says PEFT's prompt enters as virtual tokens). Base leaves matching ``modules_to_save_regex`` (default: a ``classifier``/``score``
    head) are saved in full as PEFT's ``modules_to_save``; every other base leaf must be the
    base checkpoint's, since PEFT will take it from there.
    """
    if len(methods) != 1:
        raise AdapterFormatError(
            f"a PEFT adapter holds one method; got {len(methods)} "
            f"({[type(m).__name__ for m in methods]}). Export each to its own directory."
        )
    (method,) = methods
    model = model_info(model_config, architecture, None)
    flat = paths.flatten(params)  # arrays are fetched to the host only where exported
    if isinstance(method, LoRA):
        cfg, tensors = _export_lora(method, flat, model)
    elif isinstance(method, IA3):
        cfg, tensors = _export_ia3(method, flat, model)
    elif isinstance(method, PromptTuning):
        cfg, tensors = _export_prompt(method, flat, model, model_config)
    else:
        raise AdapterFormatError(
            f"{type(method).__name__} has no PEFT format adapt can write; supported: LoRA "
            "(incl. rsLoRA and DoRA), IA3, PromptTuning or VirtualTokenPromptTuning"
        )
    task = _task_type(architecture)
    saved, head_tensors = _modules_to_save(flat, model, modules_to_save_regex)
    if task in ("SEQ_CLS", "TOKEN_CLS") and not any(m in saved for m in ("classifier", "score")):
        raise AdapterFormatError(
            f"params hold no classifier head for {architecture}: PEFT would use the base "
            "checkpoint's (usually untrained) head. Pass the full parameter tree."
        )
    adapted = cfg.get("target_modules", [])
    protected = saved + (["classifier", "score"] if task in ("SEQ_CLS", "TOKEN_CLS") else [])
    clash = [m for m in adapted if any(re.match(rf"(^|.*\.){p}($|\..*)", m) for p in protected)]
    if clash:
        raise AdapterFormatError(
            f"modules {clash} are adapted but lie inside modules_to_save {protected}; PEFT never "
            "adapts those, so it would compute something else. Merge the adapter there first."
        )
    prefix = "base_model." if cfg["peft_type"] == "PROMPT_TUNING" else "base_model.model."
    tensors = {k if k == "prompt_embeddings" else prefix + k: v for k, v in tensors.items()}
    tensors.update({prefix + k: v for k, v in head_tensors.items()})
    cfg.update(
        task_type=task,
        base_model_name_or_path=base_model_name_or_path,
        revision=None,
        inference_mode=True,
        auto_mapping=None,
        modules_to_save=saved or None,
    )
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    write_file(directory / WEIGHTS_NAME, tensors, {"format": "pt"})
    (directory / CONFIG_NAME).write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    return directory


def _adapted_modules(flat: Mapping, suffix: str, model: ModelInfo, what: str) -> dict[str, str]:
    """Our module paths holding ``<module>/<suffix>`` leaves -> their HF names."""
    mods = sorted(p.removesuffix(f"/{suffix}") for p in flat if p.endswith(f"/{suffix}"))
    if not mods:
        raise AdapterFormatError(
            f"params hold no '{suffix}' leaves for {what}; pass the full parameter tree "
            "(base + adapter leaves) of the trained model"
        )
    unknown = [m for m in mods if m not in model.dense]
    if unknown:
        raise AdapterFormatError(
            f"{what} leaves sit on modules the conversion table cannot name:"
            f"{paths.shorten_list(unknown)}" + describe_available(model)
        )
    return {m: model.dense[m] for m in mods}


def _number(x: float) -> int | float:
    return int(x) if float(x).is_integer() else float(x)


def _export_lora(method: LoRA, flat: dict, model: ModelInfo) -> tuple[dict, dict]:
    name, rank = method.name, method.rank
    mods = _adapted_modules(flat, f"{name}_a", model, f"LoRA {name!r}")
    tensors = {}
    for mod, hf_mod in mods.items():
        a, b = np.asarray(flat[f"{mod}/{name}_a"]), flat.get(f"{mod}/{name}_b")
        d_in, d_out = model.leaves[f"{mod}/kernel"]
        if b is None or a.shape != (d_in, rank) or b.shape != (rank, d_out):
            raise AdapterFormatError(
                f"{mod}: {name}_a {a.shape} / {name}_b {None if b is None else b.shape} do not "
                f"fit rank {rank} on a ({d_in}, {d_out}) kernel"
            )
        tensors[f"{hf_mod}.lora_A.weight"] = np.ascontiguousarray(a.T)
        tensors[f"{hf_mod}.lora_B.weight"] = np.ascontiguousarray(np.asarray(b).T)
        if method.dora:
            magnitude = flat.get(f"{mod}/{name}_magnitude")
            if magnitude is None:
                raise AdapterFormatError(f"{mod}: DoRA leaf {name}_magnitude is missing")
            tensors[f"{hf_mod}.lora_magnitude_vector"] = np.asarray(magnitude)
    cfg = {
        "peft_type": "LORA",
        "r": rank,
        "lora_alpha": _number(method.alpha),
        "lora_dropout": method.dropout,
        "use_rslora": method.rslora,
        "use_dora": method.dora,
        "target_modules": sorted(mods.values()),
        "fan_in_fan_out": False,
        "bias": "none",
        "lora_bias": False,
        "init_lora_weights": True,
        "layers_to_transform": None,
        "layers_pattern": None,
        "rank_pattern": {},
        "alpha_pattern": {},
        "exclude_modules": None,
        "layer_replication": None,
        "megatron_config": None,
        "loftq_config": {},
    }
    return cfg, tensors


def _export_ia3(method: IA3, flat: dict, model: ModelInfo) -> tuple[dict, dict]:
    mods = _adapted_modules(flat, "ia3_l", model, "IA3")
    tensors, feedforward = {}, []
    for mod, hf_mod in mods.items():
        scale = np.asarray(flat[f"{mod}/ia3_l"])
        ff = method.ff_pattern is not None and bool(method.ff_pattern.fullmatch(mod))
        feedforward += [hf_mod] if ff else []
        tensors[f"{hf_mod}.ia3_l"] = scale.reshape((1, -1) if ff else (-1, 1))
    cfg = {
        "peft_type": "IA3",
        "target_modules": sorted(mods.values()),
        "feedforward_modules": sorted(feedforward),
        "fan_in_fan_out": False,
        "init_ia3_weights": True,
        "exclude_modules": None,
    }
    return cfg, tensors


def _export_prompt(
    method: PromptTuning, flat: dict, model: ModelInfo, config: Any
) -> tuple[dict, dict]:
    family = model.family.name
    site = families.get(family).peft_prompt  # where PEFT's prompt enters this family's model
    if site is None:
        raise AdapterFormatError(f"prompt tuning export is not supported for {family} models")
    virtual = isinstance(method, VirtualTokenPromptTuning)
    if site == "virtual_tokens" and not virtual:
        raise AdapterFormatError(
            f"PromptTuning on {family} models prepends after the embedding LayerNorm and keeps "
            "the real tokens' positions; PEFT's prompt tuning prepends virtual word embeddings "
            "before position embeddings and LayerNorm, so PEFT would compute a different "
            "function. Train with adapt.methods.VirtualTokenPromptTuning to export to PEFT."
        )
    if site == "inputs" and virtual:
        raise AdapterFormatError(
            f"PEFT prepends the prompt to {family} models' input embeddings: train with "
            "PromptTuning, not VirtualTokenPromptTuning"
        )
    found = [p for p in flat if p.rsplit("/", 1)[-1] == "prompt_embeddings"]
    if len(found) != 1:
        raise AdapterFormatError(f"expected one prompt_embeddings leaf in params, found {found}")
    prompt = np.asarray(flat[found[0]])
    if prompt.shape[0] != method.num_tokens:
        raise AdapterFormatError(
            f"{found[0]} has {prompt.shape[0]} rows but the method has {method.num_tokens} tokens"
        )
    cfg = {
        "peft_type": "PROMPT_TUNING",
        "num_virtual_tokens": method.num_tokens,
        "token_dim": int(prompt.shape[1]),
        "num_transformer_submodules": 1,
        "num_attention_heads": config.num_attention_heads,
        "num_layers": config.num_hidden_layers,
        "prompt_tuning_init": "RANDOM",
        "prompt_tuning_init_text": None,
        "tokenizer_name_or_path": None,
        "tokenizer_kwargs": None,
    }
    return cfg, {"prompt_embeddings": prompt}


def _modules_to_save(flat: dict, model: ModelInfo, regex: str | None) -> tuple[list[str], dict]:
    """The HF modules to save in full and their tensors. Each is the largest HF module whose
    parameters all lie in the selection, as PEFT wraps and saves whole modules."""
    pattern = re.compile(regex or DEFAULT_MODULES_TO_SAVE)
    selected = [p for p in flat if p in model.leaves and pattern.fullmatch(p)]
    if regex is not None and not selected:
        raise AdapterFormatError(
            f"modules_to_save_regex {regex!r} matches no base parameter in params"
        )
    hf_keys = {p: to_hf(model.table, p) for p in model.leaves}
    all_keys = {k for k in hf_keys.values() if k}

    def keys_under(module: str) -> set[str]:
        return {k for k in all_keys if k.startswith(module + ".")}

    covered: set[str] = set()
    for path in selected:
        covered |= keys_under(hf_keys[path].rsplit(".", 1)[0])
    if covered == all_keys:
        raise AdapterFormatError(f"modules_to_save_regex {regex!r} selects the whole model")
    modules = set()
    for key in covered:
        module = key.rsplit(".", 1)[0]
        while "." in module and keys_under(parent := module.rsplit(".", 1)[0]) <= covered:
            module = parent
        modules.add(module)
    wanted = {p: k for p, k in hf_keys.items() if k in covered}
    absent = [p for p in wanted if p not in flat]
    if absent:
        raise AdapterFormatError(
            f"modules_to_save {sorted(modules)} need leaves absent from params:"
            f"{paths.shorten_list(absent)}"
        )
    tensors = mapping.export_tensors({p: flat[p] for p in wanted}, model.table)
    return sorted(modules), tensors


__all__ = ["DEFAULT_MODULES_TO_SAVE", "export_adapter"]
