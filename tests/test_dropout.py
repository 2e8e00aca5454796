"""8-bit dropout masks: the drop rate, the preserved expectation, independence, sharding."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec

from adapt.models.dropout import Dropout, drop_threshold, dropout_mask


@pytest.mark.parametrize("shape", [(64, 12, 32, 32), (4000, 7), (30001,)])
def test_mask_drops_the_quantised_rate_and_keeps_the_expectation(shape):
    rate = 0.1
    assert drop_threshold(rate) == 26  # 0.1 -> 26/256 = 0.1016
    keep = np.asarray(dropout_mask(jax.random.key(0), shape, rate))
    assert keep.shape == shape
    n = keep.size
    expected = 1 - 26 / 256
    assert abs(keep.mean() - expected) < 5 * np.sqrt(expected * (1 - expected) / n)
    y = Dropout(rate).apply({}, jnp.ones(shape), False, rngs={"dropout": jax.random.key(1)})
    assert abs(float(jnp.mean(y)) - 1.0) < 5 * np.sqrt(26 / 230 / n)  # E[y] = x exactly
    np.testing.assert_allclose(np.unique(np.asarray(y)), [0.0, 256 / 230], rtol=1e-6)


def test_neighbouring_elements_are_independent():
    """The four bytes of one 32-bit word land on neighbouring elements, and the two words of one
    threefry evaluation on elements half a row apart (128 here): no correlation between them,
    nor any position within a word dropped more often."""
    keep = np.asarray(dropout_mask(jax.random.key(2), (2000, 256), 0.5)).astype(np.float64)
    for lag in (1, 2, 3, 4, 128):
        corr = np.corrcoef(keep[:, :-lag].ravel(), keep[:, lag:].ravel())[0, 1]
        assert abs(corr) < 0.01, (lag, corr)
    by_byte = keep.reshape(2000, 64, 4).mean(axis=(0, 1))
    np.testing.assert_allclose(by_byte, 0.5, atol=0.01)


def test_other_prng_implementations_draw_through_jax_random_bits():
    keep = np.asarray(dropout_mask(jax.random.key(8, impl="rbg"), (500, 64), 0.25))
    assert keep.shape == (500, 64)
    assert abs(keep.mean() - 0.75) < 5 * np.sqrt(0.75 * 0.25 / keep.size)


def test_identity_when_deterministic_or_rate_zero_and_zero_at_rate_one():
    x = jax.random.normal(jax.random.key(3), (8, 16))
    rngs = {"dropout": jax.random.key(4)}
    np.testing.assert_array_equal(Dropout(0.1).apply({}, x, True), x)
    np.testing.assert_array_equal(Dropout(0.1, deterministic=True).apply({}, x), x)
    np.testing.assert_array_equal(Dropout(0.0).apply({}, x, False, rngs=rngs), x)
    np.testing.assert_array_equal(Dropout(1.0).apply({}, x, False, rngs=rngs), 0 * x)
    same = Dropout(0.3).apply({}, x, False, rngs=rngs)
    np.testing.assert_array_equal(same, Dropout(0.3).apply({}, x, False, rngs=rngs))
    other = Dropout(0.3).apply({}, x, False, rngs={"dropout": jax.random.key(5)})
    assert not np.array_equal(np.asarray(same) == 0, np.asarray(other) == 0)
    with pytest.raises(ValueError, match="must lie in"):
        Dropout(1.5).apply({}, x, False, rngs=rngs)


def test_a_batch_sharded_input_gets_the_same_mask_as_one_device():
    """Bits are drawn over the leading axes with partitionable threefry: sharding the batch over 8
    devices changes nothing (the harness's data-parallel step relies on it)."""
    assert jax.device_count() == 8
    mesh = jax.make_mesh((8,), ("data",))
    x = jnp.ones((16, 4, 32, 32))
    key = jax.random.key(6)

    def drop(x):
        return Dropout(0.1).apply({}, x, False, rngs={"dropout": key})

    single = jax.jit(drop)(x)
    sharded_x = jax.device_put(x, NamedSharding(mesh, PartitionSpec("data")))
    sharded = jax.jit(drop)(sharded_x)
    assert sharded.sharding.spec[0] == "data"
    np.testing.assert_array_equal(np.asarray(single), np.asarray(sharded))


def test_bert_layers_use_it():
    """Every dropout of the BERT and ViT modules goes through the 8-bit mask (no nn.Dropout left)."""
    import inspect

    from adapt.models import bert, vit

    for module in (bert, vit):
        source = inspect.getsource(module)
        assert "nn.Dropout" not in source and "Dropout(" in source
    assert issubclass(Dropout, nn.Module)
