"""Tracking a source task while the model learns another one: how much of it is forgotten.

    config.source_task = dict(
        path="workdirs/sst2_full/export_hf",  # a previous run's export (``export=dict(hf=True)``)
        data=dict(kind="text", source="third_party/sst2", eval_split="dev", ...),
        eval_every=50,                         # 0: only at step 0 and at the end
        label_names=["negative", "positive"],  # optional: the source head's class order
    )

The run's model starts from the same export (``model.path`` must name it) with a new head for the
target task: the Hugging Face loader re-initialises a head whose shape changed (``num_labels``).
The *source* head is a copy of the exported classifier, held here, outside the train state: it
gets no gradient and no optimizer state, so it stays exactly as the source run left it.

Every ``eval_every`` steps, at step 0 and at the end, the source task is evaluated with the
current parameters of the run (the encoder *and* any method parameters such as LoRA adapters:
that is the model being deployed) with the target head swapped for the source head. Step 0 is
therefore the exported source model itself; the drop from there is the forgetting.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax
import numpy as np

from adapt import paths
from adapt.config import ConfigError, RunConfig, to_dict
from adapt.harness.data_setup import load_split
from adapt.harness.evaluation import evaluate
from adapt.harness.model_setup import DTYPES, Model, forward_fn, head_pattern, load_checkpoint

SPLIT = "source"  # metrics.jsonl split of the source-task evaluations


def check(config: RunConfig) -> None:
    """Static checks of ``config.source_task`` (before anything is loaded or written)."""
    section = config.source_task
    if section is None:
        return
    problems = []
    path = section.path
    if not path:
        problems.append("source_task.path is required: the export_hf directory of the source run")
    elif not Path(path).is_dir():
        problems.append(
            f"source_task.path {path!r} is not a directory (an export_hf or export_native folder)"
        )
    data = section.data
    if not data:
        problems.append("source_task.data is required: the data section of the source eval set")
    elif data.get("kind") not in ("text", "image"):
        problems.append(f"source_task.data.kind must be text or image, got {data.get('kind')!r}")
    every = section.eval_every
    if not isinstance(every, int) or isinstance(every, bool) or every < 0:
        problems.append(f"source_task.eval_every must be an integer >= 0, got {every!r}")
    if config.task != "classification":
        problems.append("source_task needs task 'classification'")
    if config.model.kind != "hf":
        problems.append("source_task needs model.kind 'hf' (the model loads the source export)")
    elif path and Path(path).is_dir():
        model_path = config.model.path
        if model_path is None or Path(model_path).resolve() != Path(path).resolve():
            problems.append(
                f"model.path ({model_path!r}) must be source_task.path ({path!r}): the run starts "
                "from the source export, with a new head for its own task"
            )
    if problems:
        raise ConfigError("source_task problems:\n  " + "\n  ".join(problems))


def data_section(config: RunConfig, data: Any) -> dict:
    """A source-task data section as a dict; text without a ``tokenizer`` takes the run's
    (``data.tokenizer``): an export directory holds weights and config, no tokenizer.json."""
    out = to_dict(data)
    target_tokenizer = config.data.tokenizer
    if out.get("kind") == "text" and "tokenizer" not in out and target_tokenizer:
        out["tokenizer"] = target_tokenizer
    return out


@dataclass
class SourceTask:
    """The frozen source head, the source eval set and how to evaluate the two together."""

    head: dict[str, np.ndarray]  # flat path -> the exported classifier's leaves
    head_regex: str
    forward: Callable  # the source-head module (its own num_labels), methods attached
    data: Any
    num_labels: int
    eval_every: int
    batch_size: int
    mesh: Any

    @classmethod
    def create(
        cls, config: RunConfig, model: Model, *, seed: int, batch_size: int, mesh: Any
    ) -> SourceTask | None:
        """The source task of ``config`` for ``model`` (the run's model, methods attached), or
        None if the config has none."""
        section = config.source_task
        if section is None:
            return None
        from adapt.convert import hf

        path = Path(section.path)
        exported = (hf.read_config(path).get("architectures") or [""])[0]
        if not exported.endswith("Classification"):
            raise ConfigError(
                f"source_task.path {str(path)!r} holds a {exported or 'headless'} model; the "
                "source task needs the exported classifier (a *ForSequenceClassification or "
                "*ForImageClassification export of the source run)"
            )
        head_regex = head_pattern(model, config.method)
        if head_regex is None:
            raise ConfigError(f"source_task needs a classification head; {model.family} has none")
        overrides = dict(config.model.config)
        dtype = DTYPES.get(config.model.dtype)
        if dtype is not None:
            overrides["dtype"] = dtype
        if config.model.pooling is not None:
            overrides["pooling"] = config.model.pooling
        module, params, src_config, _ = load_checkpoint(path, model.architecture, **overrides)
        head = {
            p: np.array(jax.device_get(v))
            for p, v in paths.flatten(params).items()
            if re.fullmatch(head_regex, p)
        }
        if not head:
            raise ConfigError(
                f"the export at {path} has no leaves matching the head {head_regex!r}"
            )
        num_labels = int(src_config.num_labels)
        data_cfg = data_section(config, section.data)
        label_names = section.label_names
        if label_names is not None:
            data_cfg["label_names"] = list(label_names)
        data = load_split(data_cfg, "eval", seed=seed, model_path=config.model.path)
        if data.num_classes != num_labels:
            raise ConfigError(
                f"the source eval set has {data.num_classes} classes ({data.label_names[:10]}) but "
                f"the exported source head has {num_labels}; set source_task.label_names to the "
                "source run's labels"
            )
        source_model = Model(
            module, {}, model.model_state, model.family, src_config, model.architecture,
            methods=model.methods,
        )  # fmt: skip
        return cls(
            head=head,
            head_regex=head_regex,
            forward=forward_fn(source_model, config.model.train_batch_stats),
            data=data,
            num_labels=num_labels,
            eval_every=section.eval_every,
            batch_size=batch_size,
            mesh=mesh,
        )

    def params(self, params: dict) -> dict:
        """``params`` (encoder + method parameters + the target head) with the target head
        replaced by the frozen source head."""
        flat = {
            p: v for p, v in paths.flatten(params).items() if not re.fullmatch(self.head_regex, p)
        }
        return paths.unflatten({**flat, **self.head})

    def evaluate(self, params: dict, model_state: dict) -> dict:
        """Source-task metrics of the run's current ``params`` under the source head."""
        return evaluate(
            "classification",
            self.forward,
            self.params(params),
            model_state,
            self.data,
            self.batch_size,
            self.mesh,
            self.num_labels,
        )

    def due(self, step: int, total: int) -> bool:
        """Evaluate after ``step``? (The last step is evaluated by the run's final evaluation.)"""
        return bool(self.eval_every) and step % self.eval_every == 0 and step != total


def curve(records: list[dict]) -> list[dict]:
    """The source-task curve, ``[{"step": s, "accuracy": ..., ...}]``, from metrics.jsonl records
    (so a resumed run's curve includes the evaluations logged before it was interrupted)."""
    rows = {}
    for r in records:
        if r.get("split") == SPLIT:
            rows[int(r["step"])] = {k: v for k, v in r.items() if k != "split"}
    return [rows[s] for s in sorted(rows)]


__all__ = ["SPLIT", "SourceTask", "check", "curve", "data_section"]
