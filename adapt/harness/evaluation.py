"""Metrics of a model over every example of an eval set, shared by the run loop and the hooks
that evaluate other things than the target model (a source task, WiSE-FT interpolations).

The jitted eval step is cached per ``(task, forward, num_labels)``: a run evaluates many
parameter sets of the same shapes (periodic evals, a source-task curve, eleven WiSE-FT alphas),
and a fresh ``jax.jit`` per call would recompile every time. :func:`predict` gives the
per-example predictions that a run writes to ``predictions.jsonl``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from adapt import sharding
from adapt.data import eval_batches, eval_order
from adapt.tasks.causal_lm import causal_lm_loss, lm_metrics
from adapt.tasks.classification import batch_confusion, metrics_from_confusion


@functools.lru_cache(maxsize=32)
def _eval_step(task: str, forward: Callable, num_labels: int | None) -> Callable:
    @jax.jit
    def eval_step(params, model_state, batch):
        out, _ = forward(params, model_state, batch, False, None)
        if task == "classification":
            w = batch["weights"]
            losses = -jnp.take_along_axis(
                jax.nn.log_softmax(out["logits"].astype(jnp.float32)), batch["labels"][:, None], -1
            )[:, 0]
            return {
                "cm": batch_confusion(out["logits"], batch["labels"], w, num_labels),
                "loss_sum": jnp.sum(losses * w),
                "count": jnp.sum(w),
            }
        mask = batch["loss_mask"] * batch["weights"][:, None]
        _, sums = causal_lm_loss(out["logits"], batch["labels"], mask)
        return sums

    return eval_step


@functools.lru_cache(maxsize=8)
def _predict_step(forward: Callable) -> Callable:
    @jax.jit
    def predict_step(params, model_state, batch):
        out, _ = forward(params, model_state, batch, False, None)
        probs = jax.nn.softmax(out["logits"].astype(jnp.float32))
        return jnp.argmax(probs, -1), jnp.max(probs, -1)

    return predict_step


def _host(x: jax.Array) -> np.ndarray:
    """The whole (possibly multi-process sharded) array on this host."""
    if x.is_fully_addressable:
        return np.asarray(jax.device_get(x))
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def predict(
    forward, params, model_state, data, batch_size: int, mesh
) -> tuple[np.ndarray, np.ndarray]:
    """``(predicted class, its probability)`` for every example of a classification set, in
    the data's own order (the batches go shortest first; this undoes that)."""
    step = _predict_step(forward)
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
    out_pred, out_prob = np.empty(n, np.int64), np.empty(n, np.float32)
    out_pred[order] = np.concatenate(predicted)[real]
    out_prob[order] = np.concatenate(probability)[real]
    return out_pred, out_prob


def evaluate(
    task: str, forward, params, model_state, data, batch_size: int, mesh, num_labels: int | None
) -> dict:
    """Metrics over every eval example once; sums are reduced inside the jitted step, so every
    process ends with the same numbers."""
    eval_step = _eval_step(task, forward, num_labels)
    total: dict[str, Any] = {}
    for local in eval_batches(data, batch_size, jax.process_index(), jax.process_count()):
        out = eval_step(params, model_state, sharding.global_batch(local, mesh))
        total = out if not total else jax.tree.map(jnp.add, total, out)
    total = jax.tree.map(np.asarray, total)
    if task == "classification":
        metrics = metrics_from_confusion(total["cm"])
        metrics["loss"] = float(total["loss_sum"] / max(total["count"], 1))
        return metrics
    return lm_metrics(total["nll_sum"], total["tokens"], total["correct"])


__all__ = ["evaluate", "predict"]
