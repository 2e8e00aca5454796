"""The train step: one pure function that every training loop in adapt runs.

:func:`train_step` builds ``step(state, frozen, batch, penalty_inputs=None) -> (state,
metrics)``. :class:`adapt.train.Trainer` jits it with shardings (inside the models' activation
sharding and rematerialisation scopes), the benchmarks time it, and a library user jits it
directly::

    state = init_state(trainable, tx, rng=jax.random.key(0))
    step = jax.jit(train_step(loss_fn, tx), donate_argnums=0)
    state, metrics = step(state, frozen, batch)

- ``state`` is ``{"step", "trainable", "opt_state", "model_state", "rng"}``; ``frozen`` is a
  separate argument, never differentiated and never donated, so gradients and optimizer state
  exist only for trainable leaves;
- ``loss_fn(params, model_state, batch, rng) -> (loss, (metrics, new_model_state))`` sees the
  merged (trainable + frozen) tree; ``model_state`` holds non-parameter collections such as
  BatchNorm statistics (``{}`` when there are none); the rng of step ``k`` is
  ``fold_in(state["rng"], k)``;
- a regulariser is an explicit input of the loss: ``penalty(params, penalty_inputs)`` is added
  to it (EWC's anchor and Fisher, L2-SP's anchor travel as ``penalty_inputs``, not hidden in
  ``frozen``) and reported as ``metrics["penalty"]``;
- gradient accumulation over ``grad_accum`` micro-batches with ``lax.scan`` is exact for
  token-weighted losses: a loss that is a mean over a varying number of items reports that
  number as ``metrics[LOSS_WEIGHT]`` and micro-batches are weighted by it, so ``grad_accum=4``
  gives the loss and gradients of the whole batch at once;
- a non-finite loss, gradient or updated weight (a NaN learning rate gives finite gradients and
  NaN weights) leaves the state untouched, not even the step counter, and
  ``metrics["finite"]`` says so: the loop stops with the last good state.

:func:`train_step_fn` / :func:`jit_train_step` keep the older signature
``(trainable, frozen, opt_state, batch, rng)`` for loss functions ``(params, batch, rng) ->
(loss, aux)``; they run the same step.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import optax

from adapt import partition

PyTree = Any
LossFn = Callable[[PyTree, PyTree, Mapping[str, jax.Array], jax.Array], tuple[jax.Array, Any]]
Penalty = Callable[[PyTree, PyTree], jax.Array]
StepFn = Callable[..., tuple[PyTree, dict]]

LOSS_WEIGHT = "loss_weight"  # metrics key: how many items the loss averages (module docstring)


def init_state(
    trainable: PyTree,
    tx: optax.GradientTransformation,
    model_state: PyTree | None = None,
    rng: jax.Array | None = None,
) -> PyTree:
    """The step's state at step 0 (``rng`` a key or its raw key data; default key 0)."""
    return {
        "step": jnp.zeros((), jnp.int32),
        "trainable": trainable,
        "opt_state": tx.init(trainable),
        "model_state": {} if model_state is None else model_state,
        "rng": jax.random.key(0) if rng is None else rng,
    }


def all_finite(tree: PyTree) -> jax.Array:
    leaves = [
        jnp.all(jnp.isfinite(x))
        for x in jax.tree.leaves(tree)
        if jnp.issubdtype(x.dtype, jnp.inexact)
    ]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.array(True)


def gradients(
    loss_fn: LossFn,
    trainable: PyTree,
    frozen: PyTree,
    model_state: PyTree,
    batch: Mapping[str, jax.Array],
    rng: jax.Array,
    *,
    grad_accum: int = 1,
    penalty: Penalty | None = None,
    penalty_inputs: PyTree = None,
) -> tuple[jax.Array, dict, PyTree, PyTree]:
    """``(loss, metrics, new_model_state, grads)`` of one batch (see the module docstring);
    ``metrics[LOSS_WEIGHT]`` is the batch's total loss weight (1 per micro-batch for a plain
    mean), by which per-device gradients are averaged."""

    def objective(tr, ms, micro, key):
        params = partition.merge(tr, frozen)
        loss, (metrics, new_ms) = loss_fn(params, ms, micro, key)
        if penalty is not None:
            pen = penalty(params, penalty_inputs)
            loss, metrics = loss + pen, {**metrics, "penalty": pen}
        return loss, (metrics, new_ms)

    grad_fn = jax.value_and_grad(objective, has_aux=True)
    if grad_accum == 1:
        (loss, (metrics, new_ms)), grads = grad_fn(trainable, model_state, batch, rng)
        weight = jnp.asarray(metrics.pop(LOSS_WEIGHT, 1.0), jnp.float32)
        return loss, {**metrics, LOSS_WEIGHT: weight}, new_ms, grads

    def split(x):
        if x.shape[0] % grad_accum:
            raise ValueError(
                f"batch of {x.shape[0]} does not split into {grad_accum} micro-batches"
            )
        return x.reshape(grad_accum, x.shape[0] // grad_accum, *x.shape[1:])

    def body(carry, inputs):
        ms, acc_grads, acc_loss, acc_weight = carry
        mb, i = inputs
        key = None if rng is None else jax.random.fold_in(rng, i)
        (loss, (metrics, ms)), grads = grad_fn(trainable, ms, mb, key)
        weight = jnp.asarray(metrics.pop(LOSS_WEIGHT, 1.0), jnp.float32)
        acc_grads = jax.tree.map(lambda a, g: a + weight * g, acc_grads, grads)
        return (ms, acc_grads, acc_loss + weight * loss, acc_weight + weight), metrics

    zeros = jax.tree.map(jnp.zeros_like, trainable)
    start = (model_state, zeros, jnp.zeros((), jnp.float32), jnp.zeros((), jnp.float32))
    (new_ms, grads, loss, weight), metrics = jax.lax.scan(
        body, start, (jax.tree.map(split, batch), jnp.arange(grad_accum))
    )
    scale = 1.0 / jnp.maximum(weight, 1e-30)
    grads = jax.tree.map(lambda g: (g * scale).astype(g.dtype), grads)
    metrics = jax.tree.map(lambda m: jnp.mean(m, axis=0), metrics)  # as logged, per micro
    return loss * scale, {**metrics, LOSS_WEIGHT: weight}, new_ms, grads


def train_step(
    loss_fn: LossFn,
    tx: optax.GradientTransformation,
    *,
    grad_accum: int = 1,
    penalty: Penalty | None = None,
    reduce_axis: str | None = None,
) -> StepFn:
    """``step(state, frozen, batch, penalty_inputs=None) -> (state, metrics)``; ``metrics`` hold
    the loss function's, ``loss``, ``finite`` and ``grad_norm`` (and ``penalty``).

    ``reduce_axis``: the step runs per device (under ``jax.shard_map`` or ``jax.pmap`` with that
    axis name) on its shard of the batch, and the loss, gradients and metrics are averaged over
    the axis with explicit collectives before the update (weighted by each shard's loss weight,
    so a token-weighted loss equals the whole batch's), as are float model-state leaves (running
    BatchNorm statistics; the batch statistics themselves stay per device, as in pmap loops).
    Each device draws its own dropout masks (the step's key folded with its index)."""
    if grad_accum < 1:
        raise ValueError(f"grad_accum must be >= 1, got {grad_accum}")

    def step(state, frozen, batch, penalty_inputs=None):
        rng = jax.random.fold_in(state["rng"], state["step"])  # a key or raw key data
        if reduce_axis is not None:
            rng = jax.random.fold_in(rng, jax.lax.axis_index(reduce_axis))
        loss, metrics, new_ms, grads = gradients(
            loss_fn, state["trainable"], frozen, state["model_state"], batch, rng,
            grad_accum=grad_accum, penalty=penalty, penalty_inputs=penalty_inputs,
        )  # fmt: skip
        weight = metrics.pop(LOSS_WEIGHT)
        if reduce_axis is not None:
            loss, metrics, new_ms, grads = _average(
                reduce_axis, weight, loss, metrics, new_ms, grads
            )
        updates, opt_state = tx.update(grads, state["opt_state"], state["trainable"])
        trainable = optax.apply_updates(state["trainable"], updates)
        finite = jnp.isfinite(loss) & all_finite(grads) & all_finite(trainable)
        finite = finite & all_finite(new_ms)
        new_state = {
            "step": state["step"] + 1,
            "trainable": trainable,
            "opt_state": opt_state,
            "model_state": new_ms,
            "rng": state["rng"],
        }
        # A non-finite step changes nothing (not even the step counter): the loop stops on it.
        new_state = jax.tree.map(lambda n, o: jnp.where(finite, n, o), new_state, state)
        metrics = {**metrics, "loss": loss, "finite": finite, "grad_norm": optax.global_norm(grads)}
        return new_state, metrics

    return step


def _average(axis: str, weight, loss, metrics, model_state, grads):
    """The cross-device means of a per-device step: loss and gradients weighted by each
    device's loss weight; metrics and float model state plainly (equal shard sizes)."""
    total = jax.lax.psum(weight, axis)
    share = weight / jnp.maximum(total, 1e-30)
    grads = jax.tree.map(lambda g: jax.lax.psum(g * share.astype(g.dtype), axis), grads)
    loss = jax.lax.psum(loss * share, axis)
    metrics = jax.tree.map(lambda m: jax.lax.pmean(m, axis), metrics)

    def mean_state(x):
        return jax.lax.pmean(x, axis) if jnp.issubdtype(x.dtype, jnp.floating) else x

    return loss, metrics, jax.tree.map(mean_state, model_state), grads


# ------------------------------------------------------------------- the older signature
def train_step_fn(loss_fn: Callable, tx: optax.GradientTransformation) -> Callable:
    """``step(trainable, frozen, opt_state, batch, rng) -> (trainable, opt_state, loss, aux)``
    for ``loss_fn(params, batch, rng) -> (loss, aux)``: :func:`train_step` underneath, with
    ``rng`` as the step's key."""

    def adapted(params, model_state, batch, rng):
        loss, aux = loss_fn(params, batch, rng)
        return loss, ({"aux": aux}, model_state)

    core = train_step(adapted, tx)

    def step(trainable, frozen, opt_state, batch, rng):
        state = {"step": jnp.zeros((), jnp.int32), "trainable": trainable,
                 "opt_state": opt_state, "model_state": {}, "rng": rng}  # fmt: skip
        state, metrics = core(state, frozen, batch)
        return state["trainable"], state["opt_state"], metrics["loss"], metrics["aux"]

    return step


def jit_train_step(loss_fn: Callable, tx: optax.GradientTransformation) -> Callable:
    return jax.jit(train_step_fn(loss_fn, tx), donate_argnums=(0, 2))


def run_stages(
    params: PyTree,
    stages: list[partition.Rules],
    steps_per_stage: list[int],
    loss_fn: Callable,
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


__all__ = [
    "LOSS_WEIGHT",
    "all_finite",
    "gradients",
    "init_state",
    "jit_train_step",
    "run_stages",
    "train_step",
    "train_step_fn",
]
