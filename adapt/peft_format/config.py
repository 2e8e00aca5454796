"""Reading ``adapter_config.json``: which PEFT options adapt honours, and PEFT's own rules for
which modules an adapter targets, feeds forward or saves in full.

PEFT only warns about an adapter that does not fit the model and then computes something else;
here every option that changes the function must either be implemented or be at its default,
and anything else is an error that names it.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from adapt import paths
from adapt.peft_format.names import CONFIG_NAME, AdapterFormatError

SUPPORTED_PEFT_TYPES = ("LORA", "IA3", "PROMPT_TUNING")
# Options that do not change what a loaded adapter computes (initialisation, bookkeeping).
_IGNORED = {
    "peft_type", "task_type", "peft_version", "base_model_name_or_path", "revision",
    "inference_mode", "auto_mapping", "modules_to_save", "target_modules", "exclude_modules",
    "init_lora_weights", "init_ia3_weights", "eva_config", "megatron_core", "qalora_group_size",
    "layers_pattern", "prompt_tuning_init", "prompt_tuning_init_text", "tokenizer_name_or_path",
    "tokenizer_kwargs", "num_attention_heads", "num_layers", "token_dim",
}  # fmt: skip
_USED = {
    "LORA": {"r", "lora_alpha", "lora_dropout", "use_rslora", "use_dora"},
    "IA3": {"feedforward_modules"},
    "PROMPT_TUNING": {"num_virtual_tokens", "num_transformer_submodules"},
}
_REQUIRED = {"bias": ("none",), "num_transformer_submodules": (1, None)}


def read_config(directory: Path) -> dict:
    """The adapter's config, checked: a supported ``peft_type`` and every option adapt does not
    implement at its default (PEFT spells defaults None/False/{}/[]); raises naming the rest."""
    path = directory / CONFIG_NAME
    if not path.exists():
        raise FileNotFoundError(f"{path}: no {CONFIG_NAME}; is {directory} a PEFT adapter dir?")
    try:
        cfg = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise AdapterFormatError(f"{path}: not valid JSON ({e})") from e
    peft_type = cfg.get("peft_type")
    if peft_type not in SUPPORTED_PEFT_TYPES:
        raise AdapterFormatError(
            f"{path}: peft_type {peft_type!r} is not supported (supported: "
            f"{list(SUPPORTED_PEFT_TYPES)})"
        )
    # Any option we do not implement must be at its default, which PEFT spells None/False/{}/[].
    unsupported = []
    for field, value in sorted(cfg.items()):
        if field in _REQUIRED:
            if value not in _REQUIRED[field]:
                unsupported.append(f"{field}={value!r} (supported: {list(_REQUIRED[field])})")
        elif field not in _IGNORED and field not in _USED[peft_type] and value not in (
            None, False, {}, [], "",
        ):  # fmt: skip
            unsupported.append(f"{field}={value!r}")
    init_weights = str(cfg.get("init_lora_weights"))
    if init_weights.startswith(("pissa", "olora", "corda", "loftq")):
        unsupported.append(
            f"init_lora_weights={init_weights!r} (the adapter expects base weights that this "
            "initialisation modified; save it converted to plain LoRA with PEFT's "
            "path_initial_model_for_weight_conversion)"
        )
    if unsupported:
        raise AdapterFormatError(
            f"{path}: {peft_type} options adapt does not implement:"
            f"{paths.shorten_list(unsupported)}"
        )
    return cfg


def peft_targets(cfg: dict, key: str) -> bool | None:
    """PEFT's ``check_target_module_exists`` (None where it cannot be decided from the config)."""
    exclude = cfg.get("exclude_modules")
    if exclude:
        if isinstance(exclude, str):
            if re.fullmatch(exclude, key):
                return False
        elif key in exclude or any(key.endswith(f".{e}") for e in exclude):
            return False
    if any(re.match(rf"(^|.*\.){m}($|\..*)", key) for m in cfg.get("modules_to_save") or []):
        return False
    targets = cfg.get("target_modules")
    if targets is None or targets == "all-linear":
        return None
    if isinstance(targets, str):
        return re.fullmatch(targets, key) is not None
    return key in targets or any(key.endswith(f".{t}") for t in targets)


def peft_feedforward(cfg: dict, key: str) -> bool:
    ff = cfg.get("feedforward_modules") or []
    if isinstance(ff, str):
        return re.fullmatch(ff, key) is not None
    return any(key.endswith(t) for t in ff)  # PEFT's IA3 matches a bare suffix here


def saved_by_peft(cfg: dict, key: str) -> bool:
    """Whether PEFT's ``modules_to_save`` (matched as a bare suffix of a module name) holds
    the parameter ``key``."""
    parts = key.split(".")
    prefixes = [".".join(parts[:i]) for i in range(1, len(parts))]
    return any(p.endswith(m) for p in prefixes for m in cfg.get("modules_to_save") or [])


__all__ = [
    "SUPPORTED_PEFT_TYPES",
    "peft_feedforward",
    "peft_targets",
    "read_config",
    "saved_by_peft",
]
