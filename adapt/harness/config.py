"""The shape of an experiment config, checked before anything runs.

A config file's ``get_config(arg)`` returns an ``ml_collections.ConfigDict``; ``--config.a.b=v``
overrides are checked by the locked ConfigDict itself. This module catches what the ConfigDict
cannot: a misspelt key *inside* the config file (``train.stpes``) would otherwise be silently
ignored. Each section lists the keys the harness reads; anything else is an error that names the
key and the keys that exist.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import ml_collections

SCHEMA: dict[str, set[str] | None] = {
    "seed": None,
    "task": None,  # "classification" | "causal_lm"
    "model": {
        "kind",  # "hf" | "resnet_cifar" | "llama2c" | "vit"
        "path",  # local dir/file or packaged/hub name
        "architecture",
        "init",  # "pretrained" | "scratch"
        "dtype",  # compute dtype
        "frozen_dtype",  # storage dtype of frozen leaves (None = as loaded)
        "config",  # model config fields (scratch models, overrides)
        "head",  # regex of the task head's leaves (for new_head; default: the family's)
        "new_head",  # True: a fresh head even when the checkpoint's has the right shape
        "family",  # method defaults: "bert" | "vit" | "llama" | "resnet"
        "train_batch_stats",  # ResNet: normalise with batch statistics while training
    },
    "method": {"name", "options", "trainable", "stages", "head"},
    "optim": {"groups", "layerwise_decay", "default"},
    "train": {
        "batch_size",
        "steps",
        "grad_accum",
        "remat",
        "log_every",
        "eval_every",
        "eval_batch_size",
        "length_grouping",
        "progress",
    },
    "data": None,  # free-form: passed to the data loaders, which check their own options
    "mesh": {"axes", "rules"},
    "checkpoint": {"every", "keep"},
    "export": {"hf", "native"},
    # adapt.harness.regularize: EWC / L2-SP towards the starting weights
    "regularizer": {"kind", "strength", "fisher_examples", "fisher_data", "fisher_batch_size"},
    # adapt.harness.source_task: the source task's eval under its frozen head, during training
    "source_task": {"path", "data", "eval_every", "label_names"},
    # adapt.harness.wise: the WiSE-FT curve over alphas at the end
    "wise_ft": {"alphas"},
}


class ConfigError(ValueError):
    """A config key the harness does not know, or a value it cannot use."""


def check(
    config: Mapping[str, Any] | ml_collections.ConfigDict,
    schema: Mapping[str, set[str] | None] = SCHEMA,
    kind: str = "config",
) -> None:
    """Raise naming every key of ``config`` that ``schema`` does not list (top level and within
    the sections it details). ``kind`` names the thing checked in the message (a sweep config's
    parts and plot use the same check, adapt.harness.sweep)."""
    problems = []
    for key, value in config.items():
        if key not in schema:
            problems.append(f"unknown {kind} key {key!r} (known: {sorted(schema)})")
            continue
        allowed = schema[key]
        if allowed is None or value is None:
            continue
        if not isinstance(value, Mapping | ml_collections.ConfigDict):
            problems.append(f"{key} must be a dict of settings, got {type(value).__name__}")
            continue
        for sub in value:
            if sub not in allowed:
                problems.append(f"unknown {kind} key {key}.{sub} (known: {sorted(allowed)})")
    if problems:
        raise ConfigError(f"{kind} problems:\n  " + "\n  ".join(problems))


def get(section: Any, key: str, default: Any = None) -> Any:
    """``section.key`` or ``default`` (ConfigDict and dict alike; a None section is empty)."""
    if section is None:
        return default
    return section.get(key, default) if hasattr(section, "get") else getattr(section, key, default)


def to_dict(config: Any) -> dict:
    return config.to_dict() if hasattr(config, "to_dict") else dict(config)


def parse_arg(arg: str | None, **defaults: Any) -> ml_collections.ConfigDict:
    """big_vision-style ``get_config`` argument: ``"method=lora,smoke=True,steps=200"``.

    Values are parsed as the type of their default (bool accepts true/false/1/0); a key without a
    default is an error listing the known ones.
    """
    out = ml_collections.ConfigDict(defaults)
    if not arg:
        return out
    for item in arg.split(","):
        if not item.strip():
            continue
        key, sep, value = item.partition("=")
        key = key.strip()
        if key not in defaults:
            raise ConfigError(f"unknown config argument {key!r}; known: {sorted(defaults)}")
        if not sep:  # a bare name is a true flag ("smoke")
            value = "true"
        default = defaults[key]
        if isinstance(default, bool):
            if value.lower() not in ("true", "false", "1", "0"):
                raise ConfigError(f"config argument {key} must be true/false, got {value!r}")
            out[key] = value.lower() in ("true", "1")
        elif isinstance(default, int):
            out[key] = int(value)
        elif isinstance(default, float):
            out[key] = float(value)
        else:
            out[key] = value
    return out
