"""The sharded, jitted train step and the state it carries.

One :class:`Trainer` serves every model, method and mesh:

- the state is ``{"step", "trainable", "opt_state", "model_state", "rng"}``; the frozen base is
  a separate argument, never differentiated and never donated, so gradients and optimizer state
  exist only for trainable leaves;
- parameters and optimizer state are *born sharded*: shapes come from ``jax.eval_shape`` and the
  init runs under ``jax.jit`` with ``out_shardings`` from :mod:`adapt.sharding`, so no device
  ever holds an unsharded copy;
- one ``jax.jit`` step with in/out shardings and donation of the state; gradient accumulation
  over micro-batches with ``lax.scan``;
- the step is traced inside :func:`adapt.sharding.activation_sharding` (the models' logical
  activation constraints pin the batch to ``data``, so FSDP does not compute for the global
  batch on every device) and :func:`adapt.remat.scope` (``remat`` checkpoints each decoder
  layer of a model that has the hook, LLaMA; see :mod:`adapt.remat` for why not the whole loss);
- a non-finite loss, gradient or updated weight (a NaN learning rate gives finite gradients and
  NaN weights) leaves the state untouched and is reported, so the loop can stop with the last
  good checkpoint intact and nothing non-finite is ever checkpointed;
- gradient accumulation is exact for token-weighted losses: a loss that is a mean over a varying
  number of items (the causal-LM loss over target tokens) reports that number as
  ``metrics[LOSS_WEIGHT]``, and micro-batches are weighted by it, so ``grad_accum=4`` gives the
  loss and gradients of the whole batch at once (not a mean of per-micro-batch means).

``loss_fn(params, model_state, batch, rng) -> (loss, (metrics, new_model_state))`` where
``params`` is the merged (trainable + frozen) tree and ``model_state`` holds non-parameter
collections such as BatchNorm statistics (``{}`` when there are none).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh

from adapt import partition, paths, sharding
from adapt import remat as remat_lib
from adapt.errors import AdaptError
from adapt.quant import nf4

PyTree = Any
LossFn = Callable[[PyTree, PyTree, Mapping[str, jax.Array], jax.Array], tuple[jax.Array, Any]]

REMAT_POLICIES = remat_lib.POLICIES  # the names Trainer(remat=...) accepts
LOSS_WEIGHT = "loss_weight"  # metrics key: how many items the loss averages (module docstring)


class NonFiniteLossError(AdaptError, FloatingPointError):
    """The loss or gradients became NaN/inf; the state was not updated."""


def _tree_all_finite(tree: PyTree) -> jax.Array:
    leaves = [
        jnp.all(jnp.isfinite(x))
        for x in jax.tree.leaves(tree)
        if jnp.issubdtype(x.dtype, jnp.inexact)
    ]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.array(True)


def _key_name(key: Any) -> str:
    for attr in ("key", "name", "idx"):
        if hasattr(key, attr):
            return str(getattr(key, attr))
    return str(key)


def _like_params(opt_state: PyTree, params: PyTree, param_sh: PyTree, default: Any) -> PyTree:
    """Shard each optimizer-state leaf like the parameter it mirrors.

    Optax states (Adam's moments, multi_transform's masked inner states) embed the parameter
    tree, so a state leaf's key path ends with its parameter's path; counters and other leaves
    match nothing and are replicated.
    """
    flat_sh, flat_p = paths.flatten(param_sh), paths.flatten(params)
    by_length = sorted(flat_sh, key=len, reverse=True)

    def pick(key_path, leaf):
        joined = "/".join(_key_name(k) for k in key_path)
        for p in by_length:
            if (joined == p or joined.endswith("/" + p)) and np.shape(leaf) == np.shape(flat_p[p]):
                return flat_sh[p]
        return default

    return jax.tree_util.tree_map_with_path(pick, opt_state)


class Trainer:
    """Builds the state and the jitted step for one partition of one model."""

    def __init__(
        self,
        loss_fn: LossFn,
        tx: optax.GradientTransformation,
        mesh: Mesh,
        rules: Sequence[tuple[str, str]] = (),
        *,
        grad_accum: int = 1,
        remat: str = "none",
        data_axis: str = "data",
    ) -> None:
        if grad_accum < 1:
            raise ValueError(f"grad_accum must be >= 1, got {grad_accum}")
        remat_lib.check(remat)
        self.loss_fn, self.tx, self.mesh, self.rules = loss_fn, tx, mesh, list(rules)
        self.grad_accum, self.remat, self.data_axis = grad_accum, remat, data_axis
        self._step = None

    # ------------------------------------------------------------------------------ shardings
    def param_shardings(self, tree: PyTree) -> PyTree:
        return sharding.param_shardings(tree, self.mesh, self.rules)

    def state_shardings(self, abstract_state: PyTree) -> PyTree:
        """Shardings for a state: params by rule, optimizer moments like their params, the rest
        (step counters, rng) replicated."""
        trainable_sh = self.param_shardings(abstract_state["trainable"])
        rep = sharding.replicated(self.mesh)
        opt_sh = _like_params(
            abstract_state["opt_state"], abstract_state["trainable"], trainable_sh, rep
        )
        return {
            "step": rep,
            "trainable": trainable_sh,
            "opt_state": opt_sh,
            "model_state": jax.tree.map(lambda _: rep, abstract_state["model_state"]),
            "rng": rep,
        }

    def init_state(self, trainable: PyTree, model_state: PyTree, rng: jax.Array) -> PyTree:
        """A sharded state from (host or device) trainable params. The optimizer state is
        created directly in its shardings."""
        trainable = jax.device_put(trainable, self.param_shardings(trainable))

        def make(trainable, model_state, rng):
            return {
                "step": jnp.zeros((), jnp.int32),
                "trainable": trainable,
                "opt_state": self.tx.init(trainable),
                "model_state": model_state,
                "rng": rng,
            }

        abstract = jax.eval_shape(make, trainable, model_state, rng)
        out_sh = self.state_shardings(abstract)
        return jax.jit(make, out_shardings=out_sh)(trainable, model_state, rng)

    def abstract_state(self, trainable: PyTree, model_state: PyTree, rng: jax.Array) -> PyTree:
        """``jax.ShapeDtypeStruct``s with shardings: what a checkpoint restores into."""

        def make(trainable, model_state, rng):
            return {
                "step": jnp.zeros((), jnp.int32),
                "trainable": trainable,
                "opt_state": self.tx.init(trainable),
                "model_state": model_state,
                "rng": rng,
            }

        abstract = jax.eval_shape(make, trainable, model_state, rng)
        shardings = self.state_shardings(abstract)
        return jax.tree.map(
            lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings
        )

    # ----------------------------------------------------------------------------------- step
    def _grads(self, trainable, frozen, model_state, batch, rng):
        def objective(tr, ms, micro, key):
            params = partition.merge(tr, frozen)
            loss, (metrics, new_ms) = self.loss_fn(params, ms, micro, key)
            return loss, (metrics, new_ms)

        grad_fn = jax.value_and_grad(objective, has_aux=True)
        if self.grad_accum == 1:
            (loss, (metrics, new_ms)), grads = grad_fn(trainable, model_state, batch, rng)
            metrics.pop(LOSS_WEIGHT, None)
            return loss, metrics, new_ms, grads

        def split(x):
            if x.shape[0] % self.grad_accum:
                raise ValueError(
                    f"batch of {x.shape[0]} does not split into {self.grad_accum} micro-batches"
                )
            return x.reshape(self.grad_accum, x.shape[0] // self.grad_accum, *x.shape[1:])

        micro = jax.tree.map(split, batch)

        def body(carry, inputs):
            ms, acc_grads, acc_loss, acc_weight = carry
            mb, i = inputs
            (loss, (metrics, ms)), grads = grad_fn(trainable, ms, mb, jax.random.fold_in(rng, i))
            weight = jnp.asarray(metrics.pop(LOSS_WEIGHT, 1.0), jnp.float32)
            acc_grads = jax.tree.map(lambda a, g: a + weight * g, acc_grads, grads)
            return (ms, acc_grads, acc_loss + weight * loss, acc_weight + weight), metrics

        zeros = jax.tree.map(jnp.zeros_like, trainable)
        start = (model_state, zeros, jnp.zeros((), jnp.float32), jnp.zeros((), jnp.float32))
        (new_ms, grads, loss, weight), metrics = jax.lax.scan(
            body, start, (micro, jnp.arange(self.grad_accum))
        )
        scale = 1.0 / jnp.maximum(weight, 1e-30)
        grads = jax.tree.map(lambda g: (g * scale).astype(g.dtype), grads)
        metrics = jax.tree.map(lambda m: jnp.mean(m, axis=0), metrics)  # as logged, per micro
        return loss * scale, metrics, new_ms, grads

    def _train_step(self, state, frozen, batch):
        rng = jax.random.fold_in(state["rng"], state["step"])
        with (
            sharding.activation_sharding(self.mesh, self.rules, self.data_axis),
            remat_lib.scope(self.remat) as remat_scope,
        ):
            loss, metrics, new_ms, grads = self._grads(
                state["trainable"], frozen, state["model_state"], batch, rng
            )
        if self.remat != "none" and not remat_scope.seen:
            raise ValueError(
                f"remat={self.remat!r}: the model has no per-layer rematerialisation hook (LLaMA "
                "has one; BERT, ViT and ResNet do not), and checkpointing the whole loss would "
                "recompute the forward without lowering the peak; use remat='none'"
            )
        updates, opt_state = self.tx.update(grads, state["opt_state"], state["trainable"])
        trainable = optax.apply_updates(state["trainable"], updates)
        finite = (
            jnp.isfinite(loss)
            & _tree_all_finite(grads)
            & _tree_all_finite(trainable)
            & _tree_all_finite(new_ms)
        )
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

    def compile_step(self, state: PyTree, frozen: PyTree, batch: Mapping[str, Any]) -> Callable:
        """The jitted step for these shapes (jit caches by shape; one compile per batch shape)."""
        if self._step is None:
            state_sh = jax.tree.map(lambda x: x.sharding, state)
            frozen_sh = jax.tree.map(lambda x: x.sharding, frozen)
            batch_sh = sharding.batch_sharding(self.mesh, self.data_axis)
            self._step = jax.jit(
                self._train_step,
                in_shardings=(state_sh, frozen_sh, batch_sh),
                out_shardings=(state_sh, sharding.replicated(self.mesh)),
                donate_argnums=(0,),
            )
        return self._step

    def step(self, state: PyTree, frozen: PyTree, batch: Mapping[str, Any]) -> tuple[PyTree, dict]:
        """One update. ``batch`` holds this process's rows (numpy) or global arrays."""
        if not all(isinstance(v, jax.Array) for v in batch.values()):
            batch = sharding.global_batch(batch, self.mesh, self.data_axis)
        return self.compile_step(state, frozen, batch)(state, frozen, batch)


def place_frozen(
    frozen: PyTree, mesh: Mesh, rules: Sequence[tuple[str, str]], dtype=None
) -> PyTree:
    """Put the frozen base on the mesh by the same rules (optionally cast, e.g. to bfloat16:
    frozen weights need no float32 master copy)."""
    if dtype is not None:  # quantised leaves (NF4 statistics) keep their own dtypes
        frozen = paths.map_with_path(
            lambda p, x: (
                x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) and nf4.TAG not in p else x
            ),
            frozen,
        )
    return jax.device_put(frozen, sharding.param_shardings(frozen, mesh, rules))


def check_finite(metrics: Mapping[str, Any], step: int) -> None:
    """Raise :class:`NonFiniteLossError` if the step at ``step`` was not finite."""
    if not bool(np.asarray(metrics["finite"])):
        raise NonFiniteLossError(
            f"the loss, gradients or updated weights became non-finite at step {step} "
            f"(loss={float(metrics['loss'])}); that update was discarded. Lower the learning "
            "rate, add gradient clipping (optim clip_norm), or check the data."
        )
