"""Sequence/image classification: the loss the train step differentiates, and its metrics."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax

from adapt.tasks.task import Batch, Outputs, Task


def cross_entropy(
    logits: jax.Array, labels: jax.Array, weights: jax.Array | None = None
) -> jax.Array:
    """Mean softmax cross-entropy in float32; ``weights`` (0/1) drop padded examples of a batch."""
    losses = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), labels)
    if weights is None:
        return jnp.mean(losses)
    weights = weights.astype(jnp.float32)
    return jnp.sum(losses * weights) / jnp.maximum(jnp.sum(weights), 1.0)


def confusion_matrix(predictions: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
    cm = np.zeros((num_classes, num_classes), np.int64)
    np.add.at(cm, (np.asarray(labels), np.asarray(predictions)), 1)
    return cm


def classification_metrics(predictions: np.ndarray, labels: np.ndarray, num_classes: int) -> dict:
    """Accuracy and macro-averaged F1, precision and recall (see :func:`metrics_from_confusion`)."""
    predictions, labels = np.asarray(predictions), np.asarray(labels)
    if predictions.shape != labels.shape or predictions.size == 0:
        raise ValueError(
            f"need equal, non-empty shapes; got {predictions.shape} and {labels.shape}"
        )
    return metrics_from_confusion(confusion_matrix(predictions, labels, num_classes))


def metrics_from_confusion(cm: np.ndarray) -> dict:
    """Accuracy and macro F1/precision/recall from a (true, predicted) count matrix. Classes absent
    from both predictions and labels are left out of the macro average (scikit-learn's
    ``labels=present``), so a few-label eval set is not penalised for classes it lacks."""
    cm = np.asarray(cm, np.float64)
    tp = np.diag(cm)
    predicted, actual = cm.sum(0), cm.sum(1)
    present = (predicted + actual) > 0
    precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
    recall = np.divide(tp, actual, out=np.zeros_like(tp), where=actual > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(tp), where=denom > 0)
    return {
        "accuracy": float(tp.sum() / max(cm.sum(), 1)),
        "macro_f1": float(f1[present].mean()),
        "macro_precision": float(precision[present].mean()),
        "macro_recall": float(recall[present].mean()),
    }


def batch_confusion(
    logits: jax.Array, labels: jax.Array, weights: jax.Array, num_classes: int
) -> jax.Array:
    """A (true, predicted) count matrix of one batch, weighted (0 for padding rows); jittable."""
    preds = jnp.argmax(logits, axis=-1)
    cm = jnp.zeros((num_classes, num_classes), jnp.float32)
    return cm.at[labels, preds].add(weights.astype(jnp.float32))


class Classification(Task):
    """Softmax classification of sequences or images: cross-entropy, accuracy and macro F1 from
    a confusion matrix summed over the eval set, predicted class and its probability."""

    name = "classification"
    data_kinds = ("text", "image")
    predicts = True

    def loss(self, out: Outputs, batch: Batch) -> tuple[jax.Array, dict]:
        logits = out["logits"]
        acc = jnp.mean((jnp.argmax(logits, -1) == batch["labels"]).astype(jnp.float32))
        return cross_entropy(logits, batch["labels"]), {"accuracy": acc}

    def eval_batch(self, out: Outputs, batch: Batch, num_labels: int | None) -> dict:
        w, logits = batch["weights"], out["logits"]
        log_probs = jax.nn.log_softmax(logits.astype(jnp.float32))
        losses = -jnp.take_along_axis(log_probs, batch["labels"][:, None], -1)[:, 0]
        return {
            "cm": batch_confusion(logits, batch["labels"], w, num_labels),
            "loss_sum": jnp.sum(losses * w),
            "count": jnp.sum(w),
        }

    def metrics(self, total: dict) -> dict:
        metrics = metrics_from_confusion(total["cm"])
        metrics["loss"] = float(total["loss_sum"] / max(total["count"], 1))
        return metrics

    def predict(self, out: Outputs) -> tuple[jax.Array, jax.Array]:
        probs = jax.nn.softmax(out["logits"].astype(jnp.float32))
        return jnp.argmax(probs, -1), jnp.max(probs, -1)
