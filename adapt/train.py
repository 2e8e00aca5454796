"""The sharded, jitted train step and the state it carries.

One :class:`Trainer` serves every model, method and mesh. The step itself is
:func:`adapt.step.train_step` (state, frozen base, batch, penalty inputs; accumulation,
regulariser, non-finite guard: see there); the Trainer adds what a mesh needs:

- parameters and optimizer state are *born sharded*: shapes come from ``jax.eval_shape`` and the
  init runs under ``jax.jit`` with ``out_shardings`` from :mod:`adapt.sharding`, so no device
  ever holds an unsharded copy;
- one ``jax.jit`` of the step with in/out shardings and donation of the state;
- the step is traced inside :func:`adapt.sharding.activation_sharding` (the models' logical
  activation constraints pin the batch to ``data``, so FSDP does not compute for the global
  batch on every device) and :func:`adapt.remat.scope` (``remat`` checkpoints each decoder
  layer of a model that has the hook; see :mod:`adapt.remat` for why not the whole loss);
- a regulariser's inputs (``penalty_inputs``: EWC's anchor and Fisher) are placed on the mesh
  like the leaves they mirror and passed to every step as their own argument;
- ``per_device=True`` runs the same step per device instead (``jax.shard_map`` over the data
  axis, gradients and metrics averaged with explicit ``lax.psum`` / ``pmean``: the pmap style
  of many research codebases; ``mesh.mode="per_device"`` in a config), for data parallelism
  with replicated parameters; it gives the jitted step's losses.

``loss_fn(params, model_state, batch, rng) -> (loss, (metrics, new_model_state))`` as in
:mod:`adapt.step`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, PartitionSpec

from adapt import paths, sharding
from adapt import remat as remat_lib
from adapt import step as step_lib
from adapt.errors import AdaptError
from adapt.quant import nf4
from adapt.step import LOSS_WEIGHT  # noqa: F401 - adapt.train.LOSS_WEIGHT, as before

PyTree = Any
LossFn = Callable[[PyTree, PyTree, Mapping[str, jax.Array], jax.Array], tuple[jax.Array, Any]]

REMAT_POLICIES = remat_lib.POLICIES  # the names Trainer(remat=...) accepts


class NonFiniteLossError(AdaptError, FloatingPointError):
    """The loss or gradients became NaN/inf; the state was not updated."""


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
        penalty: step_lib.Penalty | None = None,
        penalty_inputs: PyTree = None,
        per_device: bool = False,
    ) -> None:
        remat_lib.check(remat)
        if per_device and (set(mesh.axis_names) != {data_axis} or list(rules)):
            raise ValueError(
                f"the per-device step is data parallel: a mesh of the one axis {data_axis!r} "
                f"(got {dict(mesh.shape)}) and replicated parameters (rules 'dp')"
            )
        self.loss_fn, self.tx, self.mesh, self.rules = loss_fn, tx, mesh, list(rules)
        self.grad_accum, self.remat, self.data_axis = grad_accum, remat, data_axis
        self.penalty, self.penalty_inputs = penalty, penalty_inputs
        self.per_device = per_device
        self._core = step_lib.train_step(
            loss_fn, tx, grad_accum=grad_accum, penalty=penalty,
            reduce_axis=data_axis if per_device else None,
        )  # fmt: skip
        self._step = None

    def with_penalty(self, penalty: step_lib.Penalty, inputs: PyTree) -> Trainer:
        """This trainer with ``penalty(params, inputs)`` added to its loss; ``inputs`` are
        placed as given (put them on the mesh first, e.g. with :func:`place_frozen`)."""
        return Trainer(
            self.loss_fn, self.tx, self.mesh, self.rules, grad_accum=self.grad_accum,
            remat=self.remat, data_axis=self.data_axis, penalty=penalty, penalty_inputs=inputs,
            per_device=self.per_device,
        )  # fmt: skip

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
            return step_lib.init_state(trainable, self.tx, model_state, rng)

        abstract = jax.eval_shape(make, trainable, model_state, rng)
        out_sh = self.state_shardings(abstract)
        return jax.jit(make, out_shardings=out_sh)(trainable, model_state, rng)

    def abstract_state(self, trainable: PyTree, model_state: PyTree, rng: jax.Array) -> PyTree:
        """``jax.ShapeDtypeStruct``s with shardings: what a checkpoint restores into."""

        def make(trainable, model_state, rng):
            return step_lib.init_state(trainable, self.tx, model_state, rng)

        abstract = jax.eval_shape(make, trainable, model_state, rng)
        shardings = self.state_shardings(abstract)
        return jax.tree.map(
            lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings
        )

    # ----------------------------------------------------------------------------------- step
    def _train_step(self, state, frozen, batch, penalty_inputs):
        # per device, each shard is a device's own batch: no global activation constraints
        activations = (
            contextlib.nullcontext()
            if self.per_device
            else sharding.activation_sharding(self.mesh, self.rules, self.data_axis)
        )
        with activations, remat_lib.scope(self.remat) as remat_scope:
            new_state, metrics = self._core(state, frozen, batch, penalty_inputs)
        if self.remat != "none" and not remat_scope.seen:
            raise ValueError(
                f"remat={self.remat!r}: the model has no per-layer rematerialisation hook (a "
                "model opts in by wrapping its layers with adapt.remat.checkpointed), and "
                "checkpointing the whole loss would recompute the forward without lowering the "
                "peak; use remat='none'"
            )
        return new_state, metrics

    def compile_step(self, state: PyTree, frozen: PyTree, batch: Mapping[str, Any]) -> Callable:
        """The jitted ``step(state, frozen, batch, penalty_inputs)`` for these shapes (jit caches
        by shape; one compile per batch shape)."""
        if self._step is None:
            state_sh = jax.tree.map(lambda x: x.sharding, state)
            frozen_sh = jax.tree.map(lambda x: x.sharding, frozen)
            inputs_sh = jax.tree.map(lambda x: x.sharding, self.penalty_inputs)
            batch_sh = sharding.batch_sharding(self.mesh, self.data_axis)
            step = self._train_step
            if self.per_device:  # the same step per device, gradients averaged by lax.psum
                replicated, rows = PartitionSpec(), PartitionSpec(self.data_axis)
                step = jax.shard_map(
                    step,
                    mesh=self.mesh,
                    in_specs=(replicated, replicated, rows, replicated),
                    out_specs=(replicated, replicated),
                    check_vma=False,  # the collectives make the outputs equal on every device
                )
            self._step = jax.jit(
                step,
                in_shardings=(state_sh, frozen_sh, batch_sh, inputs_sh),
                out_shardings=(state_sh, sharding.replicated(self.mesh)),
                donate_argnums=(0,),
            )
        return self._step

    def step(self, state: PyTree, frozen: PyTree, batch: Mapping[str, Any]) -> tuple[PyTree, dict]:
        """One update. ``batch`` holds this process's rows (numpy) or global arrays."""
        if not all(isinstance(v, jax.Array) for v in batch.values()):
            batch = sharding.global_batch(batch, self.mesh, self.data_axis)
        return self.compile_step(state, frozen, batch)(state, frozen, batch, self.penalty_inputs)


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
