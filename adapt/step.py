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


def run_stages(
    params: PyTree,
    stages: list[partition.Rules],
    steps_per_stage: list[int],
    loss_fn: LossFn,
    make_tx: Callable[[PyTree], optax.GradientTransformation],
    batches: Any,
    rng: jax.Array,
) -> tuple[PyTree, list[float]]:
    """Train through a list of partitions (gradual unfreezing, LP-FT): stage ``i`` trains the
    leaves its rules label for ``steps_per_stage[i]`` steps.

    Each stage has its own trainable subtree, hence one compilation of the step per stage and a
    fresh optimizer state for that stage's leaves (``make_tx(trainable_labels)``). Returns the
    final params and the loss of every step.
    """
    if len(stages) != len(steps_per_stage):
        raise ValueError(f"{len(stages)} stages but {len(steps_per_stage)} step counts")
    losses: list[float] = []
    step_index = 0
    for rules, steps in zip(stages, steps_per_stage, strict=True):
        labels = partition.label(params, rules)
        trainable, frozen = partition.split(params, labels)
        trainable = jax.tree.map(lambda x: x.copy(), trainable)  # donated below
        tx = make_tx(partition.trainable_labels(labels))
        opt_state = tx.init(trainable)
        step = jit_train_step(loss_fn, tx)
        for _ in range(steps):
            batch = next(batches)
            key = jax.random.fold_in(rng, step_index)
            trainable, opt_state, loss, _ = step(trainable, frozen, opt_state, batch, key)
            losses.append(float(loss))
            step_index += 1
        params = partition.merge(trainable, frozen)
    return params, losses
