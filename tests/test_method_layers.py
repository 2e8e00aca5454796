"""Methods on any Flax linear layer: nn.Dense, nn.DenseGeneral, nn.Einsum, nn.Conv, and Flax's own
nn.MultiHeadDotProductAttention (identity at init, merge = unmerged, only adapter leaves train)."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from adapt import partition, paths
from adapt.methods import IA3, BottleneckAdapter, LoRA, MethodError, apply, init


class Layer(nn.Module):
    """One layer of each kind, named ``layer``, with a nonlinearity after it."""

    kind: str

    @nn.compact
    def __call__(self, x):
        if self.kind == "dense":
            y = nn.Dense(6, name="layer")(x)
        elif self.kind == "dense_general":  # (b, t, 4, 5) contracted over its last two axes
            y = nn.DenseGeneral((3, 2), axis=(-2, -1), name="layer")(x)
        elif self.kind == "einsum":  # a per-head projection: the kernel's "n" is not contracted
            y = nn.Einsum((4, 5, 3), "btnd,ndh->btnh", name="layer")(x)
        else:  # a strided 3x3 convolution
            y = nn.Conv(6, (3, 3), strides=2, padding="SAME", name="layer")(x)
        return jnp.tanh(y)


SHAPES = {"dense": (2, 7, 5), "dense_general": (2, 7, 4, 5), "einsum": (2, 7, 4, 5),
          "conv": (2, 8, 8, 5)}  # fmt: skip
KINDS = list(SHAPES)


def _setup(kind, methods):
    model = Layer(kind)
    x = jax.random.normal(jax.random.key(0), SHAPES[kind])
    base = model.init(jax.random.key(1), x)["params"]
    extra = init(model, base, methods, jax.random.key(2), x)
    return model, x, base, extra


def _randomise(extra, scale=0.3):
    """Adapter leaves away from their init (B = 0 makes any merge trivially right)."""
    flat = paths.flatten(extra)
    keys = jax.random.split(jax.random.key(3), len(flat))
    return paths.unflatten(
        {
            p: v + scale * jax.random.normal(k, v.shape)
            for (p, v), k in zip(flat.items(), keys, strict=True)
        }
    )


@pytest.mark.parametrize("kind", KINDS)
def test_lora_is_the_identity_at_init_and_merges_exactly(kind):
    lora = LoRA("layer", rank=2, alpha=4)
    model, x, base, extra = _setup(kind, [lora])
    assert set(paths.flatten(extra)) == {"layer/lora_a", "layer/lora_b"}
    plain = model.apply({"params": base}, x)
    np.testing.assert_array_equal(apply(model, partition.merge(base, extra), [lora], x), plain)
    params = partition.merge(base, _randomise(extra))
    adapted = apply(model, params, [lora], x)
    assert float(jnp.max(jnp.abs(adapted - plain))) > 1e-3  # the adapter does something
    merged = model.apply({"params": lora.merge(params)}, x)
    np.testing.assert_allclose(merged, adapted, atol=1e-5)


@pytest.mark.parametrize("kind", KINDS)
def test_ia3_and_adapters_start_as_the_identity(kind):
    plain = None
    for method in (IA3("layer"), BottleneckAdapter("layer", bottleneck=3)):
        model, x, base, extra = _setup(kind, [method])
        plain = model.apply({"params": base}, x)
        out = apply(model, partition.merge(base, extra), [method], x)
        np.testing.assert_allclose(out, plain, atol=1e-6)
    ia3 = IA3("layer")
    model, x, base, extra = _setup(kind, [ia3])
    params = partition.merge(base, _randomise(extra))
    np.testing.assert_allclose(
        model.apply({"params": ia3.merge(params)}, x), apply(model, params, [ia3], x), atol=1e-5
    )


@pytest.mark.parametrize("kind", KINDS)
def test_only_the_adapter_leaves_train(kind):
    lora = LoRA("layer", rank=2, alpha=4)
    model, x, base, extra = _setup(kind, [lora])
    params = partition.merge(base, extra)
    labels = partition.label(params, [*lora.rules(), (".*", None)])
    trainable, frozen = partition.split(params, labels)
    target = jnp.ones_like(model.apply({"params": base}, x)) * 0.5

    def loss(tr):
        return jnp.mean((apply(model, partition.merge(tr, frozen), [lora], x) - target) ** 2)

    tx = optax.adam(1e-2)
    state, first = tx.init(trainable), loss(trainable)
    for _ in range(20):
        grads = jax.grad(loss)(trainable)
        updates, state = tx.update(grads, state, trainable)
        trainable = optax.apply_updates(trainable, updates)
    assert loss(trainable) < first
    assert sorted(paths.flatten(trainable)) == ["layer/lora_a", "layer/lora_b"]
    assert sorted(paths.flatten(frozen)) == ["layer/bias", "layer/kernel"]


class Attention(nn.Module):
    @nn.compact
    def __call__(self, x):
        h = nn.MultiHeadDotProductAttention(num_heads=2, qkv_features=8, name="attn")(x)
        return nn.Dense(3, name="head")(h.mean(axis=1))


@pytest.mark.slow
def test_lora_on_flax_multi_head_attention_trains_and_merges():
    model = Attention()
    x = jax.random.normal(jax.random.key(0), (4, 6, 8))
    y = jnp.arange(4) % 3
    base = model.init(jax.random.key(1), x)["params"]
    lora = LoRA(".*attn/(query|value)", rank=2, alpha=4)
    extra = init(model, base, [lora], jax.random.key(2), x)
    assert sorted(paths.flatten(extra)) == ["attn/query/lora_a", "attn/query/lora_b",
                                            "attn/value/lora_a", "attn/value/lora_b"]  # fmt: skip
    params = partition.merge(base, extra)
    labels = partition.label(params, [*lora.rules(), ("head/.*", "head"), (".*", None)])
    trainable, frozen = partition.split(params, labels)

    def loss(tr):
        logits = apply(model, partition.merge(tr, frozen), [lora], x)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    tx = optax.adam(3e-2)
    state, first = tx.init(trainable), loss(trainable)
    for _ in range(30):
        grads = jax.grad(loss)(trainable)
        updates, state = tx.update(grads, state, trainable)
        trainable = optax.apply_updates(trainable, updates)
    assert loss(trainable) < 0.7 * first
    params = partition.merge(trainable, frozen)
    assert not np.allclose(paths.flatten(params)["attn/value/lora_b"], 0)
    np.testing.assert_allclose(
        model.apply({"params": lora.merge(params)}, x), apply(model, params, [lora], x), atol=1e-5
    )


def test_what_cannot_attach_says_which_layers_can():
    with pytest.raises(MethodError, match=r"nn.Dense, nn.DenseGeneral, nn.Einsum and nn.Conv"):
        _setup("dense", [LoRA("nothing_like_this")])
    with pytest.raises(MethodError, match="DoRA attaches to nn.Dense layers only"):
        _setup("conv", [LoRA("layer", dora=True)])
