"""The linear layers methods attach to, seen as one matrix from input to output features.

LoRA, IA3 and the bottleneck adapters wrap any of :data:`LAYERS`: Flax's ``nn.Dense``,
``nn.DenseGeneral`` (so ``nn.MultiHeadDotProductAttention``, whose projections are
DenseGeneral), ``nn.Einsum`` and ``nn.Conv``. Each kernel is a linear map from "input"
features to "output" features, and :class:`Layout` says how it is matricised:

- Dense: ``(in, out)`` as it is;
- DenseGeneral: the contracted input axes, flattened, by the feature axes, flattened (the
  kernel is ``(*in_shape, *features)``, so a row-major reshape is exact);
- Einsum ``"lhs,rhs->out"``: the kernel axes contracted with the input only, by the others
  (in the kernel's order); a low-rank update is formed at the kernel's shape, so it costs one
  kernel-sized tensor per call, exact whatever the contraction;
- Conv: ``(kh, kw, ..., in, out)``; LoRA's down-projection is itself a ``kh x kw`` convolution
  to ``r`` channels and its up-projection a 1x1 convolution (PEFT's Conv2d LoRA), so the
  update folds into the kernel as ``einsum("...ir,ro->...io", A, B)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

LAYERS = (nn.Dense, nn.DenseGeneral, nn.Einsum, nn.Conv)
LAYER_NAMES = "nn.Dense, nn.DenseGeneral, nn.Einsum and nn.Conv"


@dataclass(frozen=True)
class Layout:
    """How one layer's kernel is a ``(d_in, d_out)`` matrix (module docstring)."""

    kind: str  # dense | dense_general | einsum | conv
    kernel_shape: tuple[int, ...]
    d_in: int
    d_out: int
    einsum_perm: tuple[int, ...] = ()  # einsum: kernel axes as (in axes..., out axes...)

    def a_shape(self, rank: int) -> tuple[int, ...]:
        """LoRA's down-projection: a convolution kernel for Conv, else ``(d_in, rank)``."""
        if self.kind == "conv":
            return (*self.kernel_shape[:-1], rank)
        return (self.d_in, rank)

    def a_fan_in(self) -> int:
        return int(np.prod(self.kernel_shape[:-1])) if self.kind == "conv" else self.d_in

    def kernel_delta(self, a: jax.Array, b: jax.Array) -> jax.Array:
        """``A B`` at the kernel's shape (what a merge adds, scaled)."""
        if self.kind == "conv":
            return jnp.einsum("...ir,ro->...io", a, b)
        product = a @ b
        if self.kind == "einsum":
            permuted = [self.kernel_shape[i] for i in self.einsum_perm]
            return jnp.transpose(product.reshape(permuted), np.argsort(self.einsum_perm))
        return product.reshape(self.kernel_shape)


def _einsum_parts(spec: str) -> tuple[str, str, str]:
    lhs, rest = spec.replace(" ", "").split(",")
    rhs, out = rest.split("->")
    return lhs, rhs, out


def layout(mod: nn.Module, x: jax.Array) -> Layout:
    """The layout of ``mod`` called on ``x``; raises ValueError for what it cannot express."""
    if isinstance(mod, nn.Dense):
        return Layout("dense", (x.shape[-1], mod.features), x.shape[-1], mod.features)
    if isinstance(mod, nn.DenseGeneral):
        if mod.batch_dims:
            raise ValueError("nn.DenseGeneral with batch_dims is not supported")
        axes = (mod.axis,) if isinstance(mod.axis, int) else tuple(mod.axis)
        features = (mod.features,) if isinstance(mod.features, int) else tuple(mod.features)
        in_shape = tuple(x.shape[a] for a in axes)
        return Layout("dense_general", in_shape + features, math.prod(in_shape),
                      math.prod(features))  # fmt: skip
    if isinstance(mod, nn.Einsum):
        lhs, rhs, out = _einsum_parts(mod.einsum_str)
        shape = tuple(mod.shape)
        ins = [i for i, c in enumerate(rhs) if c in lhs and c not in out]
        outs = [i for i in range(len(rhs)) if i not in ins]
        return Layout("einsum", shape, math.prod(shape[i] for i in ins),
                      math.prod(shape[i] for i in outs), tuple(ins + outs))  # fmt: skip
    if isinstance(mod, nn.Conv):
        if mod.feature_group_count != 1:
            raise ValueError("grouped convolutions (feature_group_count > 1) are not supported")
        kernel_size = (
            (mod.kernel_size,) if isinstance(mod.kernel_size, int) else tuple(mod.kernel_size)
        )
        shape = (*kernel_size, x.shape[-1], mod.features)
        return Layout("conv", shape, math.prod(shape[:-1]), mod.features)
    raise ValueError(f"{type(mod).__name__} is not one of {LAYER_NAMES}")


def low_rank(mod: nn.Module, lay: Layout, h: jax.Array, a: jax.Array, b: jax.Array) -> jax.Array:
    """``h`` through ``A`` then ``B``, shaped like the layer's output (without its bias)."""
    if lay.kind == "dense":
        return (h @ a) @ b
    if lay.kind == "dense_general":
        axes = (mod.axis,) if isinstance(mod.axis, int) else tuple(mod.axis)
        in_shape = lay.kernel_shape[: len(axes)]
        down = jnp.tensordot(h, a.reshape(*in_shape, -1), (axes, tuple(range(len(axes)))))
        return jnp.tensordot(down, b.reshape(b.shape[0], *lay.kernel_shape[len(axes) :]), 1)
    if lay.kind == "einsum":
        return jnp.einsum(mod.einsum_str, h, lay.kernel_delta(a, b))
    down = nn.Conv(
        a.shape[-1], lay.kernel_shape[:-2], strides=mod.strides, padding=mod.padding,
        input_dilation=mod.input_dilation, kernel_dilation=mod.kernel_dilation, use_bias=False,
        dtype=h.dtype, precision=mod.precision, parent=None,
    ).apply({"params": {"kernel": a}}, h)  # fmt: skip
    return down @ b


__all__ = ["LAYERS", "LAYER_NAMES", "Layout", "layout", "low_rank"]
