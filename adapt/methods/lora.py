"""LoRA (Hu et al. 2021), rsLoRA (Kalajievic 2023) and DoRA (Liu et al. 2024) on any ``nn.Dense``
(LoRA and rsLoRA also on ``nn.DenseGeneral``, ``nn.Einsum`` and ``nn.Conv``: their kernels as
matrices, :mod:`adapt.methods.layers`).

The forward pass of a matched Dense becomes ``x @ W + b + s * dropout(x) @ A @ B`` with
``A: (in, r)`` Kaiming-uniform and ``B: (r, out)`` zero (PEFT's initialisation, so the model is
unchanged at init) and ``s = alpha / r`` (``alpha / sqrt(r)`` with rsLoRA). ``W + s A B`` is never
materialised while training and ``W`` gets no gradient: it is a frozen leaf, outside the
differentiated subtree.

DoRA splits the adapted weight into a magnitude ``m`` (one per output feature, initialised to the
column norms of ``W``) and a direction: ``y = m / ||W + s A B|| * (x @ W + s x @ A @ B) + b``,
with the norm treated as a constant in the backward pass (as in the paper, section 4.3, and PEFT).

Several adapters coexist under different names (``LoRA(name="task_a")`` creates
``.../task_a_a``, ``.../task_a_b``); the ones passed to :func:`adapt.methods.base.apply` are
active, the others are ignored, so switching adapters is choosing the list.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from adapt import paths
from adapt.methods.base import DenseMethod, MethodError, Rules
from adapt.methods.layers import Layout, layout, low_rank


def kaiming_uniform_a_sqrt5(key: jax.Array, shape: tuple[int, int], dtype=jnp.float32) -> jax.Array:
    """PyTorch's default Linear init, which PEFT uses for ``lora_A``: U(-1/sqrt(in), 1/sqrt(in))."""
    bound = 1.0 / math.sqrt(shape[0])
    return jax.random.uniform(key, shape, dtype, -bound, bound)


class LoRA(DenseMethod):
    """Low-rank adapters on every linear layer whose module path full-matches ``targets``."""

    def __init__(
        self,
        targets: str | Sequence[str],
        rank: int = 8,
        alpha: float = 16.0,
        dropout: float = 0.0,
        *,
        rslora: bool = False,
        dora: bool = False,
        name: str = "lora",
        param_dtype: Any = jnp.float32,
    ) -> None:
        super().__init__(targets)
        if not isinstance(rank, int) or rank <= 0:
            raise MethodError(f"LoRA rank must be a positive integer, got {rank!r}")
        if alpha <= 0:
            raise MethodError(f"LoRA alpha must be positive, got {alpha!r}")
        if not 0.0 <= dropout < 1.0:
            raise MethodError(f"LoRA dropout must lie in [0, 1), got {dropout!r}")
        if not name.isidentifier():
            raise MethodError(f"adapter name {name!r} must be an identifier")
        self.rank, self.alpha, self.dropout = rank, float(alpha), float(dropout)
        self.rslora, self.dora, self.name = rslora, dora, name
        self.param_dtype = param_dtype
        self.layouts: dict[str, Layout] = {}  # module path -> its kernel's layout

    @property
    def scaling(self) -> float:
        return self.alpha / (math.sqrt(self.rank) if self.rslora else self.rank)

    def leaf_names(self) -> tuple[str, ...]:
        names = (f"{self.name}_a", f"{self.name}_b")
        return names + ((f"{self.name}_magnitude",) if self.dora else ())

    def rules(self) -> Rules:
        return [(f".*/{self.name}_(a|b|magnitude)", self.name)]

    # ---------------------------------------------------------------------------- forward
    def wrap(self, mod, path, x, dense):
        y = dense(x)
        try:
            lay = layout(mod, x)
        except ValueError as e:
            raise MethodError(f"LoRA on {path}: {e}") from None
        if self.dora and lay.kind != "dense":
            raise MethodError(f"DoRA on {path}: DoRA attaches to nn.Dense layers only")
        self.layouts[path] = lay
        fan_in = lay.a_fan_in()
        a = mod.param(
            f"{self.name}_a",
            lambda key, shape, dt: kaiming_uniform_a_sqrt5(key, (fan_in, shape[-1]), dt).reshape(
                shape
            ),
            lay.a_shape(self.rank),
            self.param_dtype,
        )
        b = mod.param(
            f"{self.name}_b", nn.initializers.zeros, (self.rank, lay.d_out), self.param_dtype
        )
        dtype = y.dtype
        h = x
        if self.dropout > 0.0 and mod.has_rng("dropout"):
            keep = jax.random.bernoulli(mod.make_rng("dropout"), 1.0 - self.dropout, x.shape)
            h = jnp.where(keep, x / (1.0 - self.dropout), 0).astype(x.dtype)
        delta = low_rank(mod, lay, h.astype(dtype), a.astype(dtype), b.astype(dtype))
        if not self.dora:
            return y + self.scaling * delta
        kernel = mod.get_variable("params", "kernel")
        magnitude = mod.param(
            f"{self.name}_magnitude",
            lambda _k, shape, dt: jnp.linalg.norm(kernel.astype(jnp.float32), axis=0).astype(dt),
            (lay.d_out,),
            self.param_dtype,
        )
        direction = kernel.astype(jnp.float32) + self.scaling * (
            jax.lax.stop_gradient(a).astype(jnp.float32)
            @ jax.lax.stop_gradient(b).astype(jnp.float32)
        )
        norm = jax.lax.stop_gradient(jnp.linalg.norm(direction, axis=0))
        factor = (magnitude.astype(jnp.float32) / norm).astype(dtype)
        if h is not x:  # with dropout, PEFT applies the rescaling to the dropped input's product
            base = h.astype(dtype) @ kernel.astype(dtype)
        elif mod.use_bias:
            base = y - mod.get_variable("params", "bias").astype(dtype)
        else:
            base = y
        return y + (factor - 1) * base + factor * self.scaling * delta

    # ------------------------------------------------------------------------ merge/unmerge
    def _modules(self, flat: dict) -> list[str]:
        suffix = f"/{self.name}_a"
        return [p[: -len(suffix)] for p in flat if p.endswith(suffix)]

    def _delta(self, mod: str, kernel: Any, a: Any, b: Any) -> jax.Array:
        """``A B`` at the kernel's shape, in float32."""
        a, b = a.astype(jnp.float32), b.astype(jnp.float32)
        lay = self.layouts.get(mod)
        if lay is None:  # not traced in this process: shapes tell Dense and Conv apart
            if kernel.ndim > 2 and a.ndim == 2:  # DenseGeneral or Einsum: axis order unknown
                raise MethodError(
                    f"cannot merge LoRA on {mod} before the model ran with it: call "
                    "adapt.methods.init (or apply) with this LoRA object first"
                )
            kind = "conv" if a.ndim > 2 else "dense"
            lay = Layout(kind, tuple(kernel.shape), a.shape[0], b.shape[-1])
        return lay.kernel_delta(a, b)

    def merge(self, params: dict) -> dict:
        """Fold the adapter into the kernels and drop its leaves: ``W <- W + s A B`` (DoRA:
        ``W <- m * (W + s A B) / ||W + s A B||``). Pure: returns a new tree."""
        flat = dict(paths.flatten(params))
        modules = self._modules(flat)
        if not modules:
            raise MethodError(f"no {self.name}_a leaves to merge; was this adapter initialised?")
        for mod in modules:
            kernel = flat[f"{mod}/kernel"]
            a, b = flat.pop(f"{mod}/{self.name}_a"), flat.pop(f"{mod}/{self.name}_b")
            merged = kernel.astype(jnp.float32) + self.scaling * self._delta(mod, kernel, a, b)
            if self.dora:
                m = flat.pop(f"{mod}/{self.name}_magnitude").astype(jnp.float32)
                merged = merged * (m / jnp.linalg.norm(merged, axis=0))
            flat[f"{mod}/kernel"] = merged.astype(kernel.dtype)
        return paths.unflatten(flat)

    def unmerge(self, merged_params: dict, adapter_params: dict) -> dict:
        """Undo :meth:`merge` given the adapter leaves: ``W <- W - s A B``, leaves restored."""
        if self.dora:
            raise MethodError("DoRA merges are not reversible without the pre-merge norms")
        flat = dict(paths.flatten(merged_params))
        extra = paths.flatten(adapter_params)
        for mod in self._modules(extra):
            a, b = extra[f"{mod}/{self.name}_a"], extra[f"{mod}/{self.name}_b"]
            kernel = flat[f"{mod}/kernel"]
            delta = self.scaling * self._delta(mod, kernel, a, b)
            flat[f"{mod}/kernel"] = (kernel.astype(jnp.float32) - delta).astype(kernel.dtype)
            flat[f"{mod}/{self.name}_a"], flat[f"{mod}/{self.name}_b"] = a, b
        return paths.unflatten(flat)
