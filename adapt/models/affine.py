"""Dense and LayerNorm whose bias and scale gradients are matrix-vector products.

The gradient of a bias added to a (B, T, features) activation is the column sum of the output
gradient over B*T rows, and a LayerNorm's scale and bias gradients are two more such sums.
XLA:CPU lowers these column reductions through its tree-reduction rewrite (32 x 32 reduce-window
tiles), which on MiniLM's (32, 128, 1536) intermediate activation takes ~13 ms where the same sum
written as ``ones @ g`` (one GEMV) takes ~1 ms; over a fine-tuning step the reductions were ~6%
of the time. Here the sums are GEMVs, through a ``jax.custom_vjp`` on the affine part only; the
forward values, the input gradients and the parameter tree (``kernel``/``bias``,
``scale``/``bias``, the Hugging Face-mirrored names) are Flax's, so conversion, methods that
attach by module path (they check ``isinstance(module, nn.Dense)``) and BitFit are unchanged.
tests/test_affine.py checks values and all gradients against ``flax.linen``.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from adapt.models.layers import flat_dot_general

Array = jax.Array


def column_sum(g: Array) -> Array:
    """Sum over every axis but the last, as one matrix-vector product (see module doc)."""
    rows = g.reshape(-1, g.shape[-1])
    ones = jnp.ones((rows.shape[0],), rows.dtype)
    return jnp.dot(ones, rows, preferred_element_type=jnp.float32).astype(g.dtype)


@jax.custom_vjp
def add_bias(y: Array, bias: Array) -> Array:
    """``y + bias`` over the last axis; the bias gradient is a GEMV. Same dtypes required."""
    return y + bias


def _add_bias_fwd(y: Array, bias: Array) -> tuple[Array, None]:
    return y + bias, None


def _add_bias_bwd(_, g: Array) -> tuple[Array, Array]:
    return g, column_sum(g)


add_bias.defvjp(_add_bias_fwd, _add_bias_bwd)


@jax.custom_vjp
def scale_shift(x: Array, scale: Array, bias: Array) -> Array:
    """``x * scale + bias`` over the last axis; the scale and bias gradients are GEMVs."""
    return x * scale + bias


def _scale_shift_fwd(x: Array, scale: Array, bias: Array) -> tuple[Array, tuple[Array, Array]]:
    return x * scale + bias, (x, scale)


def _scale_shift_bwd(res: tuple[Array, Array], g: Array) -> tuple[Array, Array, Array]:
    x, scale = res
    return g * scale, column_sum(g * x), column_sum(g)


scale_shift.defvjp(_scale_shift_fwd, _scale_shift_bwd)


class Dense(nn.Dense):
    """``flax.linen.Dense`` (same fields and parameters) with the bias added by :func:`add_bias`.

    Unless a ``dot_general`` is given, the input is contracted as a 2-D matrix
    (:func:`adapt.models.layers.flat_dot_general`): same values, faster kernel gradient on CPU.
    """

    @nn.compact
    def __call__(self, inputs: Array) -> Array:
        kernel = self.param(
            "kernel", self.kernel_init, (jnp.shape(inputs)[-1], self.features), self.param_dtype
        )
        bias = (
            self.param("bias", self.bias_init, (self.features,), self.param_dtype)
            if self.use_bias
            else None
        )
        inputs, kernel, bias = self.promote_dtype(inputs, kernel, bias, dtype=self.dtype)
        # default contraction: (..., in) flattened to 2-D, one plain matmul forward and back
        dot_general = self.dot_general if self.dot_general is not None else flat_dot_general
        if self.dot_general_cls is not None:
            dot_general = self.dot_general_cls()
        y = dot_general(
            inputs, kernel, (((inputs.ndim - 1,), (0,)), ((), ())), precision=self.precision
        )
        if bias is None:
            return y
        return add_bias(y, bias.astype(y.dtype))  # a custom dot_general may return another dtype


class LayerNorm(nn.LayerNorm):
    """``flax.linen.LayerNorm`` with the scale/bias applied by :func:`scale_shift`.

    Covers the configuration the models use (normalise and scale the last axis, two-pass
    variance, both scale and bias); any other configuration runs Flax's own code.
    """

    @nn.compact
    def __call__(self, x: Array, *, mask: Array | None = None) -> Array:
        plain = (
            self.reduction_axes == -1
            and self.feature_axes == -1
            and self.use_scale
            and self.use_bias
            and not self.use_fast_variance
            and self.force_float32_reductions
            and self.axis_name is None
            and mask is None
        )
        if not plain:
            return super().__call__(x, mask=mask)
        features = x.shape[-1]
        scale = self.param("scale", self.scale_init, (features,), self.param_dtype)
        bias = self.param("bias", self.bias_init, (features,), self.param_dtype)
        # statistics in at least float32, as Flax computes them
        stats_dtype = jnp.promote_types(jnp.float32, x.dtype)
        xs = x.astype(stats_dtype)
        mean = xs.mean(-1, keepdims=True)
        centred = xs - mean
        var = jnp.square(centred).mean(-1, keepdims=True)
        normed = centred * lax.rsqrt(var + self.epsilon)
        dtype = self.dtype or jnp.result_type(x, scale, bias)
        out = scale_shift(normed, scale.astype(stats_dtype), bias.astype(stats_dtype))
        return out.astype(dtype)


__all__ = ["Dense", "LayerNorm", "add_bias", "column_sum", "scale_shift"]
