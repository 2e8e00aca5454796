"""The train step: differentiate the loss with respect to the trainable leaves only.

``frozen`` is an argument of the step but never differentiated and never donated (it is reused
across steps and may be shared with other consumers), so no gradient and no optimizer state ever
exists for it. ``trainable`` and ``opt_state`` are donated: the update happens in place.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import optax

from adapt import partition

PyTree = Any
LossFn = Callable[[PyTree, PyTree, jax.Array], tuple[jax.Array, dict]]


def train_step_fn(loss_fn: LossFn, tx: optax.GradientTransformation) -> Callable:
    """``step(trainable, frozen, opt_state, batch, rng) -> (trainable, opt_state, loss, aux)``.

    ``loss_fn(params, batch, rng) -> (loss, aux)`` sees the full parameter tree (trainable and
    frozen merged); jit it yourself with the shardings you need, or use :func:`jit_train_step`.
    """

    def step(trainable, frozen, opt_state, batch, rng):
        def objective(tr):
            return loss_fn(partition.merge(tr, frozen), batch, rng)

        (loss, aux), grads = jax.value_and_grad(objective, has_aux=True)(trainable)
        updates, opt_state = tx.update(grads, opt_state, trainable)
        return optax.apply_updates(trainable, updates), opt_state, loss, aux

    return step


def jit_train_step(loss_fn: LossFn, tx: optax.GradientTransformation) -> Callable:
    return jax.jit(train_step_fn(loss_fn, tx), donate_argnums=(0, 2))
