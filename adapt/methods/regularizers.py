"""Regularisers against forgetting: EWC and L2-SP.

- **EWC** (Kirkpatrick et al. 2017): after training on a source task, estimate the diagonal of the
  Fisher information ``F = E_x[(d log p(y|x) / d theta)^2]`` from *per-example* gradients (the
  square of a batch-mean gradient would underestimate it), then penalise
  ``lambda / 2 * sum F * (theta - theta*)^2`` while training the next task.
- **L2-SP** (Li et al. 2018): decay the pretrained weights towards their starting point,
  ``alpha / 2 * ||theta_s - theta*_s||^2``, and new parameters (a new head) towards zero,
  ``beta / 2 * ||theta_new||^2``.

Both are pure functions of the trainable tree, so they add to any loss inside the jitted step.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp

from adapt import paths

PyTree = Any


def diagonal_fisher(
    log_likelihood: Callable[[PyTree, PyTree], jax.Array],
    params: PyTree,
    batches: Any,
) -> PyTree:
    """Mean squared per-example gradient of ``log_likelihood(params, example)``.

    ``log_likelihood`` takes a *single* example (a pytree without the batch axis) and returns a
    scalar, e.g. ``log softmax(logits)[label]`` (empirical Fisher) — per-example gradients come
    from ``jax.vmap(jax.grad(...))``. ``batches`` is an iterable of batched examples.
    """
    per_example = jax.jit(jax.vmap(jax.grad(log_likelihood), in_axes=(None, 0)))
    total = jax.tree.map(jnp.zeros_like, params)
    count = 0
    for batch in batches:
        grads = per_example(params, batch)
        n = jax.tree.leaves(batch)[0].shape[0]
        total = jax.tree.map(lambda t, g: t + jnp.sum(jnp.square(g), axis=0), total, grads)
        count += n
    if count == 0:
        raise ValueError("diagonal_fisher got no examples; pass at least one batch")
    return jax.tree.map(lambda t: t / count, total)


def ewc_penalty(params: PyTree, anchor: PyTree, fisher: PyTree, strength: float) -> jax.Array:
    """``strength / 2 * sum F * (theta - theta*)^2`` over the leaves present in ``fisher``."""
    flat_f = paths.flatten(fisher)
    flat_p, flat_a = paths.flatten(params), paths.flatten(anchor)
    missing = [p for p in flat_f if p not in flat_p]
    if missing:
        raise ValueError(f"EWC Fisher has leaves the params lack:{paths.shorten_list(missing)}")
    total = sum(
        jnp.sum(f * jnp.square(flat_p[p].astype(jnp.float32) - flat_a[p].astype(jnp.float32)))
        for p, f in flat_f.items()
    )
    return 0.5 * strength * total


def l2sp_penalty(
    params: Mapping[str, Any],
    anchor: Mapping[str, Any],
    alpha: float,
    beta: float,
) -> jax.Array:
    """``alpha/2 ||theta_s - theta*_s||^2 + beta/2 ||theta_new||^2``: leaves found in ``anchor``
    are pulled towards it, leaves not in it (new heads, method parameters) towards zero."""
    flat_a = paths.flatten(anchor)
    to_anchor, to_zero = 0.0, 0.0
    for p, v in paths.flatten(params).items():
        v = v.astype(jnp.float32)
        if p in flat_a:
            to_anchor = to_anchor + jnp.sum(jnp.square(v - flat_a[p].astype(jnp.float32)))
        else:
            to_zero = to_zero + jnp.sum(jnp.square(v))
    return 0.5 * alpha * to_anchor + 0.5 * beta * to_zero
