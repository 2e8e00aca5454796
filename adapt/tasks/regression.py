"""Regression (e.g. STS-B similarity scores): the loss the train step differentiates, and metrics.

The model's head emits one number per example (``logits`` of shape (B, 1) or (B,)). Metrics run
on host NumPy arrays collected over a whole eval set, in float64, because R2 and correlations
are ratios of sums that lose digits in float32.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from adapt.tasks.task import Batch, Outputs, Task


def mean_squared_error(
    predictions: jax.Array, targets: jax.Array, weights: jax.Array | None = None
) -> jax.Array:
    """Mean squared error in float32; ``weights`` (0/1) drop padded examples of a batch.

    ``predictions`` of shape (B, 1) (a one-output head) are squeezed to match (B,) targets.
    """
    predictions = predictions.astype(jnp.float32)
    if predictions.ndim == targets.ndim + 1 and predictions.shape[-1] == 1:
        predictions = predictions[..., 0]
    errors = jnp.square(predictions - targets.astype(jnp.float32))
    if weights is None:
        return jnp.mean(errors)
    weights = weights.astype(jnp.float32)
    return jnp.sum(errors * weights) / jnp.maximum(jnp.sum(weights), 1.0)


def _ranks(x: np.ndarray) -> np.ndarray:
    """Ranks starting at 1 with ties given their average rank (as ``scipy.stats.rankdata``)."""
    order = np.argsort(x, kind="mergesort")
    sorted_x = x[order]
    starts = np.r_[True, sorted_x[1:] != sorted_x[:-1]]
    group = np.cumsum(starts) - 1
    first = np.flatnonzero(starts)
    counts = np.diff(np.r_[first, x.size])
    average = first + (counts + 1) / 2.0
    ranks = np.empty(x.size, np.float64)
    ranks[order] = average[group]
    return ranks


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a - a.mean(), b - b.mean()
    denom = np.sqrt(np.sum(a * a) * np.sum(b * b))
    return float(np.sum(a * b) / denom) if denom > 0 else float("nan")


def regression_metrics(predictions: np.ndarray, targets: np.ndarray) -> dict:
    """MAE, MSE, RMSE, R2 and the Pearson / Spearman correlations (GLUE's STS-B metrics).

    R2 is ``1 - SS_res / SS_tot`` (can be negative for a model worse than predicting the mean;
    NaN when the targets are constant). Correlations are NaN when either side is constant.
    """
    predictions = np.asarray(predictions, np.float64).reshape(-1)
    targets = np.asarray(targets, np.float64).reshape(-1)
    if predictions.shape != targets.shape or predictions.size == 0:
        raise ValueError(
            f"need equal, non-empty sizes; got {predictions.size} predictions and "
            f"{targets.size} targets"
        )
    residual = predictions - targets
    mse = float(np.mean(residual**2))
    ss_tot = float(np.sum((targets - targets.mean()) ** 2))
    return {
        "mae": float(np.mean(np.abs(residual))),
        "mse": mse,
        "rmse": float(np.sqrt(mse)),
        "r2": 1.0 - float(np.sum(residual**2)) / ss_tot if ss_tot > 0 else float("nan"),
        "pearson": _pearson(predictions, targets),
        "spearman": _pearson(_ranks(predictions), _ranks(targets)),
    }


def _values(logits: jax.Array) -> jax.Array:
    """One float32 prediction per example from a (B, 1) or (B,) head."""
    logits = logits.astype(jnp.float32)
    return logits[..., 0] if logits.ndim == 2 and logits.shape[-1] == 1 else logits


class Regression(Task):
    """One number per example (STS-B similarity, ratings): a one-output head trained with the
    mean squared error; MAE, MSE, RMSE, R2, Pearson and Spearman over the whole eval set, so
    the eval step returns per-example predictions (correlations are not sums of batches)."""

    name = "regression"
    data_kinds = ("text",)
    lower_is_better = ("loss", "mse", "mae", "rmse")
    additive = False
    numeric_labels = True
    predicts = True

    def head_size(self, num_labels: int | None) -> int:
        return 1

    def loss(self, out: Outputs, batch: Batch) -> tuple[jax.Array, dict]:
        values = _values(out["logits"])
        mae = jnp.mean(jnp.abs(values - batch["labels"].astype(jnp.float32)))
        return mean_squared_error(values, batch["labels"]), {"mae": mae}

    def eval_batch(self, out: Outputs, batch: Batch, num_labels: int | None) -> dict:
        return {
            "prediction": _values(out["logits"]),
            "target": batch["labels"].astype(jnp.float32),
            "weight": batch["weights"].astype(jnp.float32),
        }

    def metrics(self, total: dict) -> dict:
        real = total["weight"] > 0
        metrics = regression_metrics(total["prediction"][real], total["target"][real])
        metrics["loss"] = metrics["mse"]
        return metrics

    def predict(self, out: Outputs) -> tuple[jax.Array, jax.Array]:
        values = _values(out["logits"])
        return values, values
