"""Linear probing on cached features: run the frozen backbone once, then train only the head.

With a frozen backbone, every epoch of a linear probe recomputes the same features; caching them
turns an hour of forward passes into seconds of logistic regression. ``extract_features`` runs
any jitted feature function over eval-style batches (rows with ``weights == 0`` are padding and are
dropped), and ``train_linear_probe`` fits a softmax head ``{"kernel": (D, C), "bias": (C,)}``
with AdamW on the cached arrays, so it plugs into a classifier's ``head`` params directly.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from adapt.tasks.classification import cross_entropy


def extract_features(
    feature_fn: Callable[[dict], jax.Array], batches: Iterable[dict]
) -> tuple[np.ndarray, np.ndarray]:
    """``(features (N, D), labels (N,))`` from ``feature_fn(batch) -> (B, D)`` over batches."""
    fn = jax.jit(feature_fn)
    feats, labels = [], []
    for batch in batches:
        keep = np.asarray(batch.get("weights", np.ones(len(batch["labels"])))) > 0
        feats.append(np.asarray(fn(batch))[keep])
        labels.append(np.asarray(batch["labels"])[keep])
    if not feats:
        raise ValueError("extract_features got no batches")
    return np.concatenate(feats), np.concatenate(labels)


def train_linear_probe(
    features: np.ndarray,
    labels: np.ndarray,
    num_classes: int,
    *,
    steps: int = 500,
    lr: float = 1e-2,
    weight_decay: float = 1e-4,
    batch_size: int = 256,
    seed: int = 0,
) -> dict[str, jax.Array]:
    """Fit a softmax head on cached features with AdamW minibatches (deterministic by seed)."""
    features = jnp.asarray(features, jnp.float32)
    labels = jnp.asarray(labels, jnp.int32)
    n, dim = features.shape
    if n == 0:
        raise ValueError("no features to probe")
    head = {"kernel": jnp.zeros((dim, num_classes)), "bias": jnp.zeros((num_classes,))}
    tx = optax.adamw(lr, weight_decay=weight_decay)
    batch_size = min(batch_size, n)

    def loss(h, x, y):
        return cross_entropy(x @ h["kernel"] + h["bias"], y)

    @jax.jit
    def run(head, key):
        def body(carry, k):
            h, state = carry
            idx = jax.random.choice(k, n, (batch_size,), replace=False)
            grads = jax.grad(loss)(h, features[idx], labels[idx])
            updates, state = tx.update(grads, state, h)
            return (optax.apply_updates(h, updates), state), None

        (head, _), _ = jax.lax.scan(body, (head, tx.init(head)), jax.random.split(key, steps))
        return head

    return run(head, jax.random.key(seed))
