"""Shared model pieces: the 2-D Dense contraction is the default one, values and gradients."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from adapt.models.layers import flat_dot_general


@pytest.mark.parametrize("shape", [(3, 5, 8), (2, 3, 4, 8), (6, 8), (8,)])
def test_flat_dense_matches_flax_default_in_value_and_gradient(shape):
    x = jax.random.normal(jax.random.key(0), shape)
    flat, default = nn.Dense(7, dot_general=flat_dot_general), nn.Dense(7)
    params = default.init(jax.random.key(1), x)
    assert jax.tree.structure(params) == jax.tree.structure(flat.init(jax.random.key(1), x))

    def loss(module, p, x):
        return jnp.sum(jnp.sin(module.apply(p, x)))

    out_flat, out_default = flat.apply(params, x), default.apply(params, x)
    assert out_flat.shape == out_default.shape == (*shape[:-1], 7)
    np.testing.assert_allclose(out_flat, out_default, rtol=1e-6, atol=1e-6)
    g_flat = jax.grad(loss, argnums=(1, 2))(flat, params, x)
    g_default = jax.grad(loss, argnums=(1, 2))(default, params, x)
    for a, b in zip(jax.tree.leaves(g_flat), jax.tree.leaves(g_default), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_other_contractions_pass_through_unchanged():
    lhs = jax.random.normal(jax.random.key(0), (2, 4, 3))
    rhs = jax.random.normal(jax.random.key(1), (2, 3, 5))
    batched = (((2,), (1,)), ((0,), (0,)))  # a batched matmul is not a Dense
    np.testing.assert_array_equal(
        flat_dot_general(lhs, rhs, batched), jax.lax.dot_general(lhs, rhs, batched)
    )
    first_axis = (((1,), (0,)), ((), ()))  # contracting a middle axis: not flattened
    rhs2 = jax.random.normal(jax.random.key(2), (4, 6))
    np.testing.assert_array_equal(
        flat_dot_general(lhs, rhs2, first_axis), jax.lax.dot_general(lhs, rhs2, first_axis)
    )
