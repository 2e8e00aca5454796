"""Linear probing on cached features: run the frozen backbone once, then fit only the head.

With a frozen backbone, every epoch of a linear probe recomputes the same features; caching them
turns an hour of forward passes into seconds of logistic regression.

- :func:`head_input` captures what a model feeds its final classifier layer (the pooled vector),
  for any model, by intercepting that layer by module path;
- :func:`extract_features` runs a jitted feature function over eval-style batches (rows with
  ``weights == 0`` are padding and are dropped);
- :func:`fit_logistic_regression` fits a softmax head to convergence (full-batch L-BFGS) with
  scikit-learn's ``LogisticRegression(C=...)`` objective, so it lands where that reference does;
- :func:`train_linear_probe` is the older minibatch AdamW fit (a fixed number of steps).

Heads are ``{"kernel": (D, C), "bias": (C,)}``: they plug into a classifier's head directly.
"""

from __future__ import annotations

import functools
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


def head_input(apply_fn: Callable[..., object], head_path: str) -> Callable[..., jax.Array]:
    """Wrap ``apply_fn(*args) -> outputs`` of a linen model into ``(*args) -> x``, the input of
    the module at ``head_path`` (e.g. ``"classifier"``): the features a linear head sees.

    Methods attached through ``nn.intercept_methods`` (LoRA, adapters ...) stay attached when
    ``apply_fn`` is called inside their context; this interceptor only records.
    """
    import flax.linen as nn

    def features(*args, **kwargs):
        captured = []

        def record(next_fun, call_args, call_kwargs, context):
            path = "/".join(str(p) for p in context.module.path)
            if context.method_name == "__call__" and path == head_path:
                captured.append(call_args[0])
            return next_fun(*call_args, **call_kwargs)

        with nn.intercept_methods(record):
            apply_fn(*args, **kwargs)
        if len(captured) != 1:
            raise ValueError(
                f"the model called the head module {head_path!r} {len(captured)} times; a "
                "cached-feature probe needs one linear head layer called once"
            )
        return captured[0]

    return features


def fit_logistic_regression(
    features: np.ndarray,
    labels: np.ndarray,
    num_classes: int,
    *,
    c: float = 10.0,
    max_iter: int = 1000,
    tol: float = 1e-5,
) -> dict[str, jax.Array]:
    """Multinomial logistic regression fitted to convergence with full-batch L-BFGS.

    Minimises ``mean CE + ||kernel||^2 / (2 C N)``: scikit-learn's ``LogisticRegression(C=c)``
    objective (``C * sum CE + ||W||^2 / 2``, bias not penalised) divided by ``C N``, so the same
    minimiser. Stops when the gradient norm is below ``tol`` or after ``max_iter`` iterations.
    """
    if c <= 0:
        raise ValueError(f"c (inverse regularisation strength) must be > 0, got {c}")
    x = jnp.asarray(features, jnp.float32)
    y = jnp.asarray(labels, jnp.int32)
    n, dim = x.shape
    if n == 0:
        raise ValueError("no features to fit")
    penalty = 1.0 / (2.0 * c * n)

    def objective(h):
        logits = x @ h["kernel"] + h["bias"]
        return cross_entropy(logits, y) + penalty * jnp.sum(h["kernel"] ** 2)

    head = {"kernel": jnp.zeros((dim, num_classes)), "bias": jnp.zeros((num_classes,))}
    return _lbfgs(objective, head, max_iter, tol)


@functools.partial(jax.jit, static_argnums=(0, 2))
def _lbfgs(objective, start, max_iter: int, tol: float):
    import optax.tree_utils as otu

    solver = optax.lbfgs()
    value_and_grad = optax.value_and_grad_from_state(objective)

    def step(carry):
        params, state = carry
        value, grad = value_and_grad(params, state=state)
        updates, state = solver.update(
            grad, state, params, value=value, grad=grad, value_fn=objective
        )
        return optax.apply_updates(params, updates), state

    def going(carry):
        _, state = carry
        count = otu.tree_get(state, "count")
        grad_norm = otu.tree_norm(otu.tree_get(state, "grad"))
        return (count == 0) | ((count < max_iter) & (grad_norm >= tol))

    params, _ = jax.lax.while_loop(going, step, (start, solver.init(start)))
    return params
