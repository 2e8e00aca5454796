"""Causal language modelling: next-token loss with a loss mask, and perplexity.

Conventions (those of :mod:`adapt.data.lm`, whose batches this consumes):

- Batches are **already shifted**: ``input_ids = t[:-1]`` and ``labels = t[1:]``, so the logits
  at input position ``j`` are scored against ``labels[:, j]``; ``loss_mask`` (B, T) is aligned
  with ``labels``: 1 where that label is a training target (a response token, or every real
  token in plain LM training), 0 on prompt tokens and padding.
- The loss is the **token-weighted** mean NLL: the sum over all target tokens of the batch
  divided by their number (not a mean of per-sequence means), as Hugging Face computes it.
- Perplexity over an eval set is ``exp(sum of NLL / number of target tokens)`` accumulated over
  every batch (:func:`lm_metrics`), never the mean of per-batch perplexities.
- When a method prepends virtual tokens (prompt tuning via ``extend_inputs``) the logits are
  longer than ``labels``; only the last ``T`` positions belong to the real tokens.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import optax

from adapt.step import LOSS_WEIGHT
from adapt.tasks.task import Batch, Outputs, Task


def align_logits(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """The logits of the real tokens: drop positions prepended by prompt/prefix methods."""
    extra = logits.shape[1] - labels.shape[1]
    if extra < 0:
        raise ValueError(f"logits cover {logits.shape[1]} positions < {labels.shape[1]} labels")
    return logits[:, extra:] if extra else logits


def token_nll(
    logits: jax.Array, labels: jax.Array, loss_mask: jax.Array | None = None
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Per-token NLL (B, T) in float32, its float 0/1 weights (B, T), and argmax hits (B, T)."""
    logits = align_logits(logits, labels).astype(jnp.float32)
    nll = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    if loss_mask is None:
        weights = jnp.ones(labels.shape, jnp.float32)
    else:
        weights = loss_mask.astype(jnp.float32)
    hits = (jnp.argmax(logits, axis=-1) == labels).astype(jnp.float32)
    return nll, weights, hits


def causal_lm_loss(
    logits: jax.Array, labels: jax.Array, loss_mask: jax.Array | None = None
) -> tuple[jax.Array, dict]:
    """Token-weighted mean NLL, and the sums an eval loop accumulates across batches.

    Returns ``(loss, {"nll_sum", "tokens", "correct"})``; a batch with no target token has loss 0.
    """
    nll, weights, hits = token_nll(logits, labels, loss_mask)
    nll_sum = jnp.sum(nll * weights)
    tokens = jnp.sum(weights)
    loss = nll_sum / jnp.maximum(tokens, 1.0)
    return loss, {"nll_sum": nll_sum, "tokens": tokens, "correct": jnp.sum(hits * weights)}


def lm_metrics(nll_sum: float, tokens: float, correct: float | None = None) -> dict:
    """``loss`` (mean NLL per target token, nats), ``perplexity`` and optional ``token_accuracy``
    from sums accumulated over a whole eval set."""
    nll_sum, tokens = float(nll_sum), float(tokens)
    if tokens <= 0:
        raise ValueError("no target tokens were counted; check the loss mask")
    mean = nll_sum / tokens
    out = {"loss": mean, "perplexity": math.exp(mean) if mean < 700 else math.inf}
    if correct is not None:
        out["token_accuracy"] = float(correct) / tokens
    return out


class CausalLM(Task):
    """Next-token prediction on packed or prompt/response data (see the module docstring):
    token-weighted NLL, perplexity and token accuracy over every target token of the eval set."""

    name = "causal_lm"
    data_kinds = ("lm",)
    lower_is_better = ("loss", "perplexity")

    def head_size(self, num_labels: int | None) -> None:
        return None  # the pretrained output layer is the head

    def loss(self, out: Outputs, batch: Batch) -> tuple[jax.Array, dict]:
        loss, sums = causal_lm_loss(out["logits"], batch["labels"], batch["loss_mask"])
        # micro-batches and processes weight the loss by their target tokens (adapt.train)
        return loss, {"tokens": sums["tokens"], LOSS_WEIGHT: sums["tokens"]}

    def eval_batch(self, out: Outputs, batch: Batch, num_labels: int | None) -> dict:
        mask = batch["loss_mask"] * batch["weights"][:, None]
        return causal_lm_loss(out["logits"], batch["labels"], mask)[1]

    def metrics(self, total: dict) -> dict:
        return lm_metrics(total["nll_sum"], total["tokens"], total["correct"])
