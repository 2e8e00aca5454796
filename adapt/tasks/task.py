"""What a task is to the harness: its training loss, how an eval set's metrics accumulate over
batches, its metrics, and its per-example predictions.

A run names its task (``config.task``); :func:`adapt.tasks.get` returns the object, and the
harness calls it instead of branching on the name, so a new task is a subclass and a registry
entry (:data:`adapt.tasks.TASKS`). Methods that run inside the jitted train or eval step
(:meth:`Task.loss`, :meth:`Task.eval_batch`, :meth:`Task.predict`) take the model's outputs and
the batch as JAX arrays; :meth:`Task.metrics` runs on the host over the accumulated values.
"""

from __future__ import annotations

from typing import Any, ClassVar

import jax

Outputs = dict[str, Any]  # the model's outputs ("logits", ...)
Batch = dict[str, Any]  # a global batch; eval batches carry "weights" (0 on the filler rows)


class Task:
    """One task. Subclasses set the class attributes and implement the methods below."""

    name: ClassVar[str]
    data_kinds: ClassVar[tuple[str, ...]]  # the data.kind values it reads
    lower_is_better: ClassVar[tuple[str, ...]] = ("loss",)  # other metrics: higher is better
    # True: eval_batch returns sums, added across batches on device. False: per-example arrays
    # (rows of the global batch), gathered on the host and concatenated before metrics().
    additive: ClassVar[bool] = True
    numeric_labels: ClassVar[bool] = False  # the label column holds numbers, not classes
    predicts: ClassVar[bool] = False  # per-example predictions (predictions.jsonl): predict()

    def head_size(self, num_labels: int | None) -> int | None:
        """Outputs of the task head for data with ``num_labels`` classes (None: no new head)."""
        return num_labels

    def loss(self, out: Outputs, batch: Batch) -> tuple[jax.Array, dict]:
        """``(loss, metrics)`` of one training batch: what the step differentiates and logs."""
        raise NotImplementedError

    def eval_batch(self, out: Outputs, batch: Batch, num_labels: int | None) -> dict:
        """What one eval batch contributes (see ``additive``); filler rows have weight 0."""
        raise NotImplementedError

    def metrics(self, total: dict) -> dict:
        """The eval set's metrics from the accumulated :meth:`eval_batch` values."""
        raise NotImplementedError

    def predict(self, out: Outputs) -> tuple[jax.Array, jax.Array]:
        """Per-example ``(prediction, score)`` for ``predictions.jsonl`` (when ``predicts``)."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"

    # One instance per task is enough (they hold no state); equality by type keeps the jitted
    # eval steps cached per task.
    def __eq__(self, other: object) -> bool:
        return type(self) is type(other)

    def __hash__(self) -> int:
        return hash(type(self))


__all__ = ["Batch", "Outputs", "Task"]
