"""Value checks of a :class:`~adapt.config.RunConfig` before anything is loaded or
written: hyperparameters finite and in range, names among the known ones, options that apply
to the data kind. Every problem is collected, then raised as one :class:`ConfigError`.

What needs the model or the data (optimizer groups against the partition's labels, a batch
against the number of examples) is checked where those are built, still before the workdir
is touched.
"""

from __future__ import annotations

import difflib
import math
import re
from typing import Any

from adapt import tasks
from adapt.config import (
    KIND_KEYS,
    TASKS,
    ConfigError,
    DataSection,
    GroupSpec,
    RunConfig,
)
from adapt.models import families

MODEL_KINDS = families.model_kinds()  # "hf" and the formats the family records load
DTYPE_NAMES = ("float32", "bfloat16", "float16")
OPTIMIZERS = ("adamw", "adam", "sgd")


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


class _Problems(list):
    def range(self, where: str, value: Any, lo: float, hi: float, *, lo_open=False, hi_open=False):
        """``value`` must be a finite number in the interval (open ends as flagged)."""
        ok = _number(value) and math.isfinite(value)
        if ok:
            ok = (value > lo if lo_open else value >= lo) and (
                value < hi if hi_open else value <= hi
            )
        if not ok:
            interval = f"{'(' if lo_open else '['}{lo}, {hi}{')' if hi_open else ']'}"
            self.append(f"{where} must be a finite number in {interval}, got {value!r}")

    def at_least(self, where: str, value: Any, lo: int):
        if not isinstance(value, int) or isinstance(value, bool) or value < lo:
            self.append(f"{where} must be an integer >= {lo}, got {value!r}")

    def choice(self, where: str, value: Any, options: tuple | list):
        if value not in options:
            close = difflib.get_close_matches(str(value), [str(o) for o in options], n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            self.append(f"{where} is {value!r}, not one of {list(options)}{hint}")

    def regex(self, where: str, value: Any):
        if value is None:
            return
        try:
            re.compile(value)
        except (re.error, TypeError) as e:
            self.append(f"{where} is not a valid regex ({value!r}: {e})")


def check_group(problems: _Problems, where: str, spec: dict, total_steps: int | None) -> None:
    """An optimizer group's settings (``GroupSpec`` keys) in range."""
    from adapt.optim import SCHEDULES

    s = {**GroupSpec().to_dict(), **spec}
    problems.choice(f"{where}.optimizer", s["optimizer"], OPTIMIZERS)
    problems.range(f"{where}.lr", s["lr"], 0, math.inf, hi_open=True)
    problems.choice(f"{where}.schedule", s["schedule"], SCHEDULES)
    problems.at_least(f"{where}.warmup_steps", s["warmup_steps"], 0)
    problems.range(f"{where}.warmup_fraction", s["warmup_fraction"], 0, 1, hi_open=True)
    if s["warmup_steps"] and s["warmup_fraction"]:
        problems.append(f"{where}: give warmup_steps or warmup_fraction, not both")
    if total_steps and isinstance(s["warmup_steps"], int) and s["warmup_steps"] > total_steps:
        problems.append(
            f"{where}.warmup_steps ({s['warmup_steps']}) exceeds train.steps ({total_steps})"
        )
    problems.range(f"{where}.end_fraction", s["end_fraction"], 0, 1)
    problems.range(f"{where}.cut_fraction", s["cut_fraction"], 0, 1, lo_open=True, hi_open=True)
    problems.range(f"{where}.weight_decay", s["weight_decay"], 0, math.inf, hi_open=True)
    problems.regex(f"{where}.decay_mask", s["decay_mask"])
    problems.range(f"{where}.b1", s["b1"], 0, 1, hi_open=True)
    problems.range(f"{where}.b2", s["b2"], 0, 1, hi_open=True)
    problems.range(f"{where}.eps", s["eps"], 0, math.inf, lo_open=True, hi_open=True)
    problems.range(f"{where}.momentum", s["momentum"], 0, 1, hi_open=True)
    problems.range(f"{where}.clip_norm", s["clip_norm"], 0, math.inf, hi_open=True)


def check_data(problems: _Problems, where: str, data: DataSection, task: str | None) -> None:
    kind = data.kind
    if kind not in KIND_KEYS:
        problems.choice(f"{where}.kind", kind, list(KIND_KEYS))
        return
    if data.source is None:
        problems.append(f"{where}.source is required (a file or folder of the data set)")
    defaults = DataSection().to_dict()
    for key, value in data.to_dict().items():
        if key not in KIND_KEYS[kind] and value != defaults[key]:
            applies = sorted(k for k, keys in KIND_KEYS.items() if key in keys)
            problems.append(
                f"{where}.{key} does not apply to data kind {kind!r} (it applies to "
                f"{' and '.join(applies) or 'no kind'}); remove it"
            )
    if task in tasks.TASKS and kind not in tasks.get(task).data_kinds:
        reads = " or ".join(repr(k) for k in tasks.get(task).data_kinds)
        fits = [name for name, t in tasks.TASKS.items() if kind in t.data_kinds]
        problems.append(
            f"task {task!r} reads data kind {reads}, not {kind!r}; data kind {kind!r} is for "
            f"task {' or '.join(repr(n) for n in fits)}"
        )
    problems.range(f"{where}.eval_fraction", data.eval_fraction, 0, 1, hi_open=True)
    problems.range(f"{where}.val_fraction", data.val_fraction, 0, 1, hi_open=True)
    if kind == "text":
        problems.at_least(f"{where}.max_length", data.max_length, 2)
    if kind == "lm":
        problems.at_least(f"{where}.seq_len", data.seq_len, 2)
        problems.choice(f"{where}.format", data.format, ("text", "prompt_response", "chat"))
    for key in ("max_examples", "examples_per_class", "eval_max_examples", "max_documents"):
        if getattr(data, key) is not None:
            problems.at_least(f"{where}.{key}", getattr(data, key), 1)
    if data.bucket_boundaries is not None and kind == "text":
        bad = [b for b in data.bucket_boundaries if not isinstance(b, int) or b < 1]
        if bad:
            problems.append(f"{where}.bucket_boundaries must be positive integers, got {bad}")
    if data.streaming:
        if task == "regression":
            problems.append(f"{where}.streaming reads class labels; regression reads in memory")
        for key in ("examples_per_class", "classes"):
            if getattr(data, key) is not None:
                problems.append(
                    f"{where}.{key} needs every example's label, which streaming does not read; "
                    f"remove it, or set {where}.streaming=False to select from data in memory"
                )
        if kind == "lm" and data.pack_examples:
            problems.append(
                f"{where}.pack_examples needs every row at start; streamed LM rows are one "
                "example each (pack offline into records of text, or set streaming=False)"
            )
        if (
            kind in ("text", "image")
            and data.label_names is None
            and data.label_names_file is None
            and not str(data.source or "").startswith("tfds:")
        ):
            problems.append(
                f"{where}.streaming needs the label names up front (finding them would read "
                f"every record); set {where}.label_names (or label_names_file), in id order"
            )
    if data.eval_source is not None and data.eval_fraction:
        problems.append(
            f"{where}: give eval_source or eval_fraction, not both (eval_fraction holds "
            "examples of source out for evaluation)"
        )


def check_run(config: RunConfig) -> None:
    """Every value check that needs neither data nor model; raises one ConfigError."""
    from adapt import remat, sharding
    from adapt.harness import regularize, source_task, wise
    from adapt.harness.model_setup import FIT_ONLY, RECIPES
    from adapt.methods import METHODS

    p = _Problems()
    p.choice("task", config.task, TASKS)
    m = config.model
    p.choice("model.kind", m.kind, MODEL_KINDS)
    p.choice("model.init", m.init, ("pretrained", "scratch"))
    p.choice("model.dtype", m.dtype, DTYPE_NAMES)
    if m.frozen_dtype is not None:
        p.choice("model.frozen_dtype", m.frozen_dtype, DTYPE_NAMES)
    if families.needs_path(m.kind) and not m.path:
        p.append(f"model.path is required for model.kind {m.kind!r} (a local folder or name)")
    p.regex("model.head", m.head)
    if m.pooling is not None:
        p.choice("model.pooling", m.pooling, ["cls", "pooler", "mean", "gap"])
    method = config.method
    p.choice("method.name", method.name, sorted((*METHODS, *RECIPES)))
    p.regex("method.head", method.head)
    p.regex("method.trainable", method.trainable)
    stages = method.stages
    if stages is not None and not all(
        isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in stages
    ):
        p.append(f"method.stages must be step counts >= 0, got {stages!r}")
    if method.options and method.name not in METHODS:
        p.append(
            f"method.options {sorted(method.options)} given, but {method.name!r} takes no "
            f"options (methods with options: {', '.join(METHODS)})"
        )
    p.choice("method.head_init", method.head_init, ("fresh", "probe"))
    numeric = config.task in tasks.TASKS and tasks.get(config.task).numeric_labels
    if numeric and (method.name in FIT_ONLY or method.head_init == "probe"):
        p.append(
            f"task {config.task!r} has numeric targets, and the probe fits a logistic regression "
            "over classes: set method.head_init='fresh' (and a method that trains)"
        )
    p.range("method.probe_c", method.probe_c, 0, math.inf, lo_open=True, hi_open=True)
    t = config.train
    if method.name in FIT_ONLY:
        if t.steps or t.epochs:
            p.append(
                f"method {method.name!r} fits the head on cached features to convergence and "
                "takes no training steps: set train.steps and train.epochs to 0"
            )
    elif t.epochs:
        p.range("train.epochs", t.epochs, 0, math.inf, lo_open=True, hi_open=True)
        if t.steps:
            p.append("give train.steps or train.epochs, not both")
    elif method.head_init == "probe" and t.steps == 0:
        pass  # the fitted head as it is (a refit whose selection chose the start)
    else:
        p.at_least("train.steps", t.steps, 1)
    if t.select_best is not None:
        if not (t.eval_every or t.eval_every_epochs):
            p.append(
                "train.select_best needs train.eval_every > 0 or train.eval_every_epochs > 0 "
                "(how often to evaluate)"
            )
        if not config.data.val_fraction:
            p.append(
                "train.select_best needs a validation split (data.val_fraction): model "
                "selection on the eval (test) set would be tuning on the test set"
            )
    p.at_least("train.early_stopping", t.early_stopping, 0)
    if t.early_stopping and t.select_best is None:
        p.append("train.early_stopping needs train.select_best (the metric to watch)")
    if t.refit and t.select_best is None:
        p.append("train.refit needs train.select_best (it refits for the chosen epochs)")
    p.at_least("train.batch_size", t.batch_size, 1)
    p.at_least("train.grad_accum", t.grad_accum, 1)
    divisible = isinstance(t.batch_size, int) and isinstance(t.grad_accum, int)
    if divisible and t.grad_accum >= 1 and t.batch_size % t.grad_accum:
        p.append(
            f"train.batch_size ({t.batch_size}) must split evenly into train.grad_accum "
            f"({t.grad_accum}) micro-batches"
        )
    p.choice("train.remat", t.remat, sorted(remat.POLICIES))
    p.at_least("train.log_every", t.log_every, 1)
    p.at_least("train.eval_every", t.eval_every, 0)
    if t.eval_every_epochs:
        p.range("train.eval_every_epochs", t.eval_every_epochs, 0, math.inf, lo_open=True,
                hi_open=True)  # fmt: skip
    if t.eval_every and t.eval_every_epochs:
        p.append("give train.eval_every (steps) or train.eval_every_epochs, not both")
    p.at_least("train.eval_batch_size", t.eval_batch_size, 0)
    p.at_least("train.length_grouping", t.length_grouping, 0)
    total = t.steps if isinstance(t.steps, int) and t.steps >= 1 and not t.epochs else None
    check_group(p, "optim.default", config.optim.default.to_dict(), total)
    for label, spec in config.optim.groups.items():
        check_group(p, f"optim.groups.{label}", spec, total)
    if config.optim.layerwise_decay is not None:
        p.range("optim.layerwise_decay", config.optim.layerwise_decay, 0, 1, lo_open=True)
    check_data(p, "data", config.data, config.task)
    if config.data.streaming and t.length_grouping:
        p.append(
            "train.length_grouping sorts examples by length, which streamed data does not know "
            "before reading them; set train.length_grouping=0 (streamed batches pad to max_length)"
        )
    axes = config.mesh.axes
    if not isinstance(axes, list) or not all(
        isinstance(a, list | tuple) and len(a) == 2 and isinstance(a[0], str)
        and isinstance(a[1], int) for a in axes
    ):  # fmt: skip
        p.append(f"mesh.axes must be a list of (name, size) pairs, got {axes!r}")
    if isinstance(config.mesh.rules, str):
        p.choice("mesh.rules", config.mesh.rules, sorted(sharding.RULE_PRESETS))
    p.choice("mesh.mode", config.mesh.mode, ["jit", "per_device"])
    if config.mesh.mode == "per_device" and (
        config.mesh.rules != "dp" or [a[0] for a in axes if isinstance(a, list | tuple)] != ["data"]
    ):
        p.append(
            f"mesh.mode 'per_device' is data parallel: it needs mesh.rules 'dp' and the one axis "
            f"'data' (got rules {config.mesh.rules!r}, axes {axes}); use mesh.mode 'jit' for "
            "FSDP or TP"
        )
    p.at_least("checkpoint.every", config.checkpoint.every, 0)
    p.at_least("checkpoint.keep", config.checkpoint.keep, 1)
    for check in (regularize.check, source_task.check, wise.check):
        try:
            check(config)
        except ConfigError as e:
            p.extend(line.strip() for line in str(e).splitlines()[1:] or [str(e)])
    if p:
        raise ConfigError("config problems:\n  " + "\n  ".join(p))


__all__ = ["check_data", "check_group", "check_run"]
