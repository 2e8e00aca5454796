"""``attention_impl="jax"`` (``jax.nn.dot_product_attention``: XLA's fused attention, cuDNN flash
attention on GPUs) against adapt's written-out attention (``"einsum"``, what the parity tests
check against transformers): the same outputs and gradients within float32 rounding on BERT,
ViT, LLaMA and Qwen2, with padding masks and grouped-query attention."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from adapt.models import bert, layers, llama, qwen2, vit

TOL = 1e-5


def test_the_layer_matches_with_grouped_heads_and_fully_masked_rows():
    q, k, v = (jax.random.normal(jax.random.key(i), s) for i, s in
               enumerate([(2, 5, 4, 8), (2, 7, 2, 8), (2, 7, 2, 8)]))  # fmt: skip
    mask = jax.random.bernoulli(jax.random.key(9), 0.7, (2, 1, 5, 7))
    mask = mask.at[1, 0, 3].set(False)  # a query that may attend to nothing (a padded row)
    einsum = layers.dot_product_attention(q, k, v, mask)
    fused = layers.dot_product_attention(q, k, v, mask, implementation="jax")
    assert jnp.abs(einsum - fused).max() <= TOL
    assert jnp.abs(einsum).max() > 0.1  # not a comparison of zeros
    with pytest.raises(ValueError, match="attention_impl must be one of"):
        layers.dot_product_attention(q, k, v, mask, implementation="flash")


def _both(model_cls, config, *args, train_kwargs=None, **kwargs):
    """Outputs (and parameter gradients of their sum of squares) of the model with each
    implementation, from the same parameters."""
    einsum_model = model_cls(config)
    jax_model = model_cls(dataclasses.replace(config, attention_impl="jax"))
    params = einsum_model.init(jax.random.key(0), *args, **kwargs)
    out = {}
    for name, model in (("einsum", einsum_model), ("jax", jax_model)):

        def loss(p, model=model):
            y = model.apply(p, *args, **kwargs, **(train_kwargs or {}))
            y = y["logits"] if isinstance(y, dict) else y
            return jnp.sum(y.astype(jnp.float32) ** 2), y

        (_, y), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(params)
        out[name] = (y, grads)
    return out


def _assert_close(out):
    (y0, g0), (y1, g1) = out["einsum"], out["jax"]
    assert jnp.abs(y0 - y1).max() <= TOL * max(1.0, float(jnp.abs(y0).max()))
    for a, b in zip(jax.tree.leaves(g0), jax.tree.leaves(g1), strict=True):
        scale = max(1.0, float(jnp.abs(a).max()))
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), atol=TOL * scale, rtol=0)


def _bert_config(**kw):
    return bert.BertConfig(vocab_size=40, hidden_size=32, num_hidden_layers=2,
                           num_attention_heads=4, intermediate_size=48, num_labels=3,
                           attention_probs_dropout_prob=0.0, **kw)  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize("pooling", ["pooler", "mean"])
def test_bert_with_padding(pooling):
    ids = jax.random.randint(jax.random.key(1), (3, 9), 1, 40)
    mask = jnp.ones((3, 9), jnp.int32).at[1, 6:].set(0).at[2, 2:].set(0)
    out = _both(bert.BertForSequenceClassification, _bert_config(pooling=pooling), ids,
                attention_mask=mask)  # fmt: skip
    _assert_close(out)


@pytest.mark.slow
def test_bert_training_path_with_dropout_off_and_the_dropout_refusal():
    config = _bert_config(hidden_dropout_prob=0.1)  # hidden dropout is fine; attention's is not
    ids = jnp.arange(2 * 7).reshape(2, 7) % 39 + 1
    mask = jnp.ones((2, 7), jnp.int32).at[0, 5:].set(0)
    out = _both(bert.BertForSequenceClassification, config, ids, attention_mask=mask,
                train_kwargs={"deterministic": False, "rngs": {"dropout": jax.random.key(3)}})  # fmt: skip
    _assert_close(out)
    model = bert.BertForSequenceClassification(
        dataclasses.replace(config, attention_impl="jax", attention_probs_dropout_prob=0.1)
    )
    params = model.init(jax.random.key(0), ids, attention_mask=mask)
    model.apply(params, ids, attention_mask=mask)  # evaluation: no dropout, no problem
    with pytest.raises(ValueError, match="attention_probs_dropout_prob=0.0 too"):
        model.apply(params, ids, attention_mask=mask, deterministic=False,
                    rngs={"dropout": jax.random.key(1)})  # fmt: skip


@pytest.mark.slow
def test_vit():
    config = vit.ViTConfig(image_size=16, patch_size=4, num_channels=3, hidden_size=32,
                           num_hidden_layers=2, num_attention_heads=4, intermediate_size=48,
                           num_labels=5)  # fmt: skip
    pixels = jax.random.normal(jax.random.key(2), (2, 16, 16, 3))
    _assert_close(_both(vit.ViTForImageClassification, config, pixels))


@pytest.mark.parametrize("family", [pytest.param("llama", marks=pytest.mark.slow), "qwen2"])
def test_decoders_with_grouped_query_attention_and_padding(family):
    module, config_cls = {
        "llama": (llama.LlamaForCausalLM, llama.LlamaConfig),
        "qwen2": (qwen2.Qwen2ForCausalLM, qwen2.Qwen2Config),
    }[family]
    config = config_cls(vocab_size=50, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                        num_attention_heads=4, num_key_value_heads=2)  # fmt: skip
    ids = jax.random.randint(jax.random.key(4), (2, 8), 1, 50)
    mask = jnp.ones((2, 8), jnp.int32).at[1, :3].set(0)  # left padding: fully masked rows
    _assert_close(_both(module, config, ids, attention_mask=mask))


def test_an_unknown_implementation_is_refused_by_every_config():
    for make in (lambda: _bert_config(attention_impl="flash"),
                 lambda: vit.ViTConfig(attention_impl="flash"),
                 lambda: llama.LlamaConfig(attention_impl="flash")):  # fmt: skip
        with pytest.raises(ValueError, match=r"attention_impl must be one of \('einsum', 'jax'\)"):
            make()


def test_a_run_refuses_the_fused_attention_with_attention_dropout_before_training():
    from adapt.config import ConfigError
    from adapt.harness.model_setup import load_model

    section = {"kind": "hf", "path": "all-MiniLM-L6-v2", "architecture": "classifier",
               "config": {"attention_impl": "jax"}}  # fmt: skip
    with pytest.raises(ConfigError, match="attention_probs_dropout_prob=0.0"):
        load_model(section, 2, jax.random.key(0))
    section["config"]["attention_probs_dropout_prob"] = 0.0
    model = load_model(section, 2, jax.random.key(0))
    assert model.config.attention_impl == "jax"
