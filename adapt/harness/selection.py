"""Model selection on the validation split: keep the best evaluation's weights, stop early.

With ``train.select_best`` (a metric of the validation split, e.g. ``"accuracy"`` or
``"loss"``), the run evaluates the validation split at step 0 and every ``train.eval_every``
steps; whenever the metric improves, the whole parameter tree (and model state) is written to
``<workdir>/best/`` (safetensors, replaced atomically). The final evaluation on the eval (test)
split uses those weights, so the test set never chooses anything. ``train.early_stopping=N``
ends training after N evaluations without improvement.

Resuming stays exact: the record ``{"step", "value", "since"}`` travels in each checkpoint's
meta, and a resumed run continues from the record of the checkpoint it restored (weights in
``best/`` written after that checkpoint are simply written again when the run gets there).
"""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path
from typing import Any

import jax
import numpy as np

from adapt import paths, tasks
from adapt.config import ConfigError
from adapt.convert.safetensors_io import SafetensorsReader, write_file

BEST_DIR = "best"
LOWER_IS_BETTER = tuple(sorted(tasks.lower_is_better()))  # loss, perplexity, mse ...


class BestModel:
    """The best validation evaluation so far and its weights (see the module docstring)."""

    def __init__(self, workdir: str | os.PathLike, metric: str, patience: int = 0) -> None:
        self.directory = Path(workdir) / BEST_DIR
        self.metric, self.patience = metric, patience
        self.step: int | None = None
        self.value: float | None = None
        self.since = 0  # evaluations since the best one

    # ---------------------------------------------------------------------------- record
    def record(self) -> dict:
        return {"step": self.step, "value": self.value, "since": self.since}

    def restore_record(self, record: dict | None) -> None:
        record = record or {}
        self.step, self.value = record.get("step"), record.get("value")
        self.since = int(record.get("since", 0))

    def better(self, value: float) -> bool:
        if self.value is None:
            return True
        if self.metric in LOWER_IS_BETTER:
            return value < self.value
        return value > self.value

    # ---------------------------------------------------------------------------- update
    def update(self, step: int, metrics: dict, params: Any, model_state: Any) -> bool:
        """Consider one validation evaluation; returns whether it is the new best."""
        if self.metric not in metrics:
            raise ConfigError(
                f"train.select_best={self.metric!r} is not a validation metric; the evaluation "
                f"reports {sorted(metrics)}"
            )
        value = float(metrics[self.metric])
        if not math.isfinite(value) or not self.better(value):
            self.since += 1
            return False
        self.step, self.value, self.since = step, value, 0
        if jax.process_index() == 0:
            self._write(step, metrics, params, model_state)
        return True

    def should_stop(self) -> bool:
        return bool(self.patience) and self.since >= self.patience

    def _write(self, step: int, metrics: dict, params: Any, model_state: Any) -> None:
        tmp = self.directory.with_name(f".{BEST_DIR}.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        host = lambda tree: {
            p: np.asarray(jax.device_get(v)) for p, v in paths.flatten(tree).items()
        }
        write_file(tmp / "params.safetensors", host(params), {"format": "adapt-best"})
        state = host(model_state)
        if state:
            write_file(tmp / "model_state.safetensors", state, {"format": "adapt-best"})
        meta = {"step": step, "metric": self.metric, "value": float(metrics[self.metric]),
                "val": {k: float(v) for k, v in metrics.items()}}  # fmt: skip
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2))
        old = self.directory.with_name(f".{BEST_DIR}.old")
        shutil.rmtree(old, ignore_errors=True)
        if self.directory.exists():
            os.replace(self.directory, old)
        os.replace(tmp, self.directory)
        shutil.rmtree(old, ignore_errors=True)

    # ------------------------------------------------------------------------------ load
    def load(self) -> tuple[dict, dict, dict]:
        """``(params, model_state, meta)`` of the best evaluation."""
        meta_path = self.directory / "meta.json"
        if not meta_path.exists():
            raise ConfigError(f"{meta_path} is missing: the best validation weights are gone")
        meta = json.loads(meta_path.read_text())
        if meta.get("step") != self.step:
            raise ConfigError(
                f"{self.directory} holds the weights of step {meta.get('step')} but the run's "
                f"best validation step is {self.step}; move {self.directory} away and resume"
            )
        reader = SafetensorsReader(self.directory / "params.safetensors")
        params = paths.unflatten({p: np.asarray(reader[p]) for p in reader})
        state: dict = {}
        if (self.directory / "model_state.safetensors").exists():
            sr = SafetensorsReader(self.directory / "model_state.safetensors")
            state = paths.unflatten({p: np.asarray(sr[p]) for p in sr})
        return params, state, meta


__all__ = ["BEST_DIR", "BestModel"]
