"""Metrics of a model over every example of an eval set, shared by the run loop and the hooks
that evaluate other things than the target model (a source task, WiSE-FT interpolations).

What is computed is the task's (:class:`adapt.tasks.Task`). The jitted eval step is cached per
``(task, forward, num_labels)``: a run evaluates many parameter sets of the same shapes
(periodic evals, a source-task curve, eleven WiSE-FT alphas), and a fresh ``jax.jit`` per call
would recompile every time. :func:`predict` gives the
per-example predictions that a run writes to ``predictions.jsonl``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from adapt import sharding, tasks
from adapt.data import eval_batches, eval_order


@functools.lru_cache(maxsize=32)
def _eval_step(task: tasks.Task, forward: Callable, num_labels: int | None) -> Callable:
    @jax.jit
    def eval_step(params, model_state, batch):
        out, _ = forward(params, model_state, batch, False, None)
        return task.eval_batch(out, batch, num_labels)

    return eval_step


@functools.lru_cache(maxsize=8)
def _predict_step(task: tasks.Task, forward: Callable) -> Callable:
    @jax.jit
    def predict_step(params, model_state, batch):
        out, _ = forward(params, model_state, batch, False, None)
        return task.predict(out)

    return predict_step


def _host(x: jax.Array) -> np.ndarray:
    """The whole (possibly multi-process sharded) array on this host."""
    if x.is_fully_addressable:
        return np.asarray(jax.device_get(x))
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def predict(
    forward,
    params,
    model_state,
    data,
    batch_size: int,
    mesh,
    task: str | tasks.Task = "classification",
) -> tuple[np.ndarray, np.ndarray]:
    """``task``'s ``(prediction, score)`` for every example (classification: the predicted
    class and its probability), in the data's own order (the batches go shortest first; this
    undoes that)."""
    task = tasks.get(task)
    if not task.predicts:
        raise ValueError(f"task {task.name!r} makes no per-example predictions")
    step = _predict_step(task, forward)
    predicted, probability = [], []
    for local in eval_batches(data, batch_size, jax.process_index(), jax.process_count()):
        pred, prob = step(params, model_state, sharding.global_batch(local, mesh))
        predicted.append(_host(pred))
        probability.append(_host(prob))
    n = data.num_examples
    real = np.concatenate(
        [np.arange(batch_size) < min(batch_size, n - s) for s in range(0, n, batch_size)]
    )  # the weight-0 copies that fill the last batch are dropped
    order = eval_order(data)
    predicted, probability = np.concatenate(predicted)[real], np.concatenate(probability)[real]
    out_pred, out_prob = np.empty(n, predicted.dtype), np.empty(n, np.float32)
    out_pred[order] = predicted
    out_prob[order] = probability
    return out_pred, out_prob


def evaluate(
    task: str | tasks.Task,
    forward,
    params,
    model_state,
    data,
    batch_size: int,
    mesh,
    num_labels: int | None,
) -> dict:
    """``task``'s metrics over every eval example once. Sums are reduced inside the jitted step
    and per-example values gathered from every process, so every process ends with the same
    numbers."""
    task = tasks.get(task)
    eval_step = _eval_step(task, forward, num_labels)
    total: dict[str, Any] = {}
    parts: list[dict] = []
    for local in eval_batches(data, batch_size, jax.process_index(), jax.process_count()):
        out = eval_step(params, model_state, sharding.global_batch(local, mesh))
        if task.additive:
            total = out if not total else jax.tree.map(jnp.add, total, out)
        else:
            parts.append(jax.tree.map(_host, out))
    if task.additive:
        return task.metrics(jax.tree.map(np.asarray, total))
    return task.metrics({k: np.concatenate([p[k] for p in parts]) for k in parts[0]})


__all__ = ["evaluate", "predict"]
