"""adapt.models.affine: Flax's Dense and LayerNorm with GEMV parameter gradients.

They must be indistinguishable from ``flax.linen`` in parameters, values and every gradient;
only the way XLA computes the bias/scale gradients differs.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from adapt.models.affine import Dense, LayerNorm, column_sum


def _compare(ours: nn.Module, flax_module: nn.Module, x: jax.Array, rtol: float, atol: float):
    params = flax_module.init(jax.random.key(0), x)["params"]
    # non-trivial parameters: the initial ones (zero bias, unit scale) would hide mistakes
    params = jax.tree.map(
        lambda p: p + 0.3 * jax.random.normal(jax.random.key(p.size), p.shape, p.dtype), params
    )
    ours_params = ours.init(jax.random.key(0), x)["params"]
    assert jax.tree.map(jnp.shape, ours_params) == jax.tree.map(jnp.shape, params)
    probe = jax.random.normal(jax.random.key(7), flax_module.apply({"params": params}, x).shape)

    def loss(module, p, x):
        y = module.apply({"params": p}, x)
        return jnp.sum(y.astype(jnp.float32) * probe), y

    (l_ref, y_ref), g_ref = jax.value_and_grad(
        lambda p, x: loss(flax_module, p, x), argnums=(0, 1), has_aux=True
    )(params, x)
    (l_ours, y_ours), g_ours = jax.value_and_grad(
        lambda p, x: loss(ours, p, x), argnums=(0, 1), has_aux=True
    )(params, x)
    assert y_ours.dtype == y_ref.dtype
    np.testing.assert_allclose(
        np.asarray(y_ours, np.float32), np.asarray(y_ref, np.float32), rtol=rtol, atol=atol
    )
    for ours_leaf, ref_leaf in zip(jax.tree.leaves(g_ours), jax.tree.leaves(g_ref), strict=True):
        assert ours_leaf.dtype == ref_leaf.dtype
        scale = float(jnp.max(jnp.abs(ref_leaf.astype(jnp.float32))))
        np.testing.assert_allclose(
            np.asarray(ours_leaf, np.float32),
            np.asarray(ref_leaf, np.float32),
            rtol=rtol,
            atol=atol * max(scale, 1.0),
        )


@pytest.mark.parametrize("shape", [(4, 6, 8), (5, 8), (2, 3, 4, 8)])
def test_dense_matches_flax(shape):
    x = jax.random.normal(jax.random.key(1), shape)
    _compare(Dense(12), nn.Dense(12), x, rtol=1e-5, atol=1e-5)
    kw = dict(features=12, dot_general=jax.lax.dot_general)  # a given contraction is used as is
    _compare(Dense(**kw), nn.Dense(**kw), x, rtol=1e-5, atol=1e-5)


def test_dense_contracts_a_flattened_input_by_default():
    x = jnp.ones((4, 6, 8))
    params = Dense(12).init(jax.random.key(0), x)
    jaxpr = jax.make_jaxpr(Dense(12).apply)(params, x)
    dots = [e for e in jaxpr.jaxpr.eqns if e.primitive.name == "dot_general"]
    assert [d.invars[0].aval.shape for d in dots] == [(24, 8)]
    given = jax.make_jaxpr(Dense(12, dot_general=jax.lax.dot_general).apply)(params, x)
    dots = [e for e in given.jaxpr.eqns if e.primitive.name == "dot_general"]
    assert [d.invars[0].aval.shape for d in dots] == [(4, 6, 8)]


def test_dense_without_bias_and_in_bfloat16():
    x = jax.random.normal(jax.random.key(1), (4, 6, 8))
    _compare(Dense(12, use_bias=False), nn.Dense(12, use_bias=False), x, rtol=1e-5, atol=1e-5)
    kw = dict(features=12, dtype=jnp.bfloat16, param_dtype=jnp.bfloat16)
    _compare(Dense(**kw), nn.Dense(**kw), x.astype(jnp.bfloat16), rtol=2e-2, atol=2e-2)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_layer_norm_matches_flax(dtype):
    x = 3.0 + 2.0 * jax.random.normal(jax.random.key(2), (4, 6, 16), dtype)
    kw = dict(epsilon=1e-12, use_fast_variance=False, dtype=dtype, param_dtype=dtype)
    tol = 1e-5 if dtype == jnp.float32 else 2e-2
    _compare(LayerNorm(**kw), nn.LayerNorm(**kw), x, rtol=tol, atol=tol)


def test_layer_norm_other_configurations_run_flax_code():
    x = jax.random.normal(jax.random.key(3), (4, 6, 16))
    for kw in (dict(use_bias=False), dict(reduction_axes=(-2, -1)), dict(use_fast_variance=True)):
        _compare(LayerNorm(**kw), nn.LayerNorm(**kw), x, rtol=1e-5, atol=1e-5)


def test_column_sum_is_the_sum_over_leading_axes():
    g = jax.random.normal(jax.random.key(4), (3, 5, 7))
    np.testing.assert_allclose(column_sum(g), g.sum((0, 1)), rtol=1e-5, atol=1e-5)
    assert column_sum(g.astype(jnp.bfloat16)).dtype == jnp.bfloat16


def test_dense_is_still_a_flax_dense_for_method_interception():
    # methods (LoRA, IA3, QLoRA) find their targets with isinstance(module, nn.Dense)
    assert issubclass(Dense, nn.Dense) and issubclass(LayerNorm, nn.LayerNorm)
