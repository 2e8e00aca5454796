"""LLaMA: parity with transformers (float32, CPU), export round trip, KV cache, strict loading."""

import json
import shutil

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from adapt.convert import hf_llama  # noqa: E402
from adapt.convert.hf import load_pretrained, read_config, save_pretrained  # noqa: E402
from adapt.convert.hf_config import UnsupportedConfigError  # noqa: E402
from adapt.convert.mapping import CheckpointMismatchError  # noqa: E402
from adapt.convert.safetensors_io import SafetensorsReader, save_safetensors  # noqa: E402
from adapt.generate import greedy_generate  # noqa: E402

VOCAB = 97
# (tied, layers, bias): both tyings at both depths; biases on in half of them.
VARIANTS = [(False, 2, False), (True, 2, True), (False, 4, True), (True, 4, False)]


def _hf_config(tied, layers, bias, **extra):
    return transformers.LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=56,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        rms_norm_eps=1e-5,
        rope_parameters={"rope_type": "default", "rope_theta": 500.0},
        max_position_embeddings=64,
        tie_word_embeddings=tied,
        attention_bias=bias,
        mlp_bias=bias,
        pad_token_id=0,
        **extra,
    )


@pytest.fixture(scope="module")
def hf_models(tmp_path_factory, randomized_eval):
    """variant -> (eval-mode transformers model, its saved directory); built once per module."""
    cache = {}

    def get(tied, layers, bias):
        key = (tied, layers, bias)
        if key not in cache:
            torch.manual_seed(hash(key) % 1000)
            model = randomized_eval(transformers.LlamaForCausalLM(_hf_config(tied, layers, bias)))
            path = tmp_path_factory.mktemp(f"llama_{'tied' if tied else 'untied'}_{layers}_{bias}")
            model.save_pretrained(path, safe_serialization=True)
            cache[key] = (model, path)
        return cache[key]

    return get


def _batch():
    """Left-padded rows, plus one right-padded row (positions come from the mask either way)."""
    rng = np.random.default_rng(0)
    ids = rng.integers(3, VOCAB, size=(4, 9)).astype(np.int32)
    mask = np.ones_like(ids)
    mask[1, :3] = 0  # left padding
    mask[2, :7] = 0  # heavy left padding
    mask[3, -2:] = 0  # right padding
    ids[mask == 0] = 0
    return ids, mask


def _positions(mask):
    return np.maximum(np.cumsum(mask, -1) - 1, 0)


def _hf_forward(model, ids, mask, **kw):
    with torch.no_grad():
        return model(
            input_ids=torch.tensor(ids, dtype=torch.long),
            attention_mask=torch.tensor(mask, dtype=torch.long),
            position_ids=torch.tensor(_positions(mask), dtype=torch.long),
            **kw,
        )


@pytest.mark.parametrize("tied,layers,bias", VARIANTS)
def test_matches_transformers_on_padded_batch(hf_models, tied, layers, bias):
    hf, path = hf_models(tied, layers, bias)
    module, params, config = load_pretrained(path)
    assert config.num_key_value_heads == 2 and config.rope_theta == 500.0
    assert config.tie_word_embeddings == tied
    assert ("lm_head" in params) == (not tied)
    assert params["model"]["layers_0"]["self_attn"]["q_proj"]["kernel"].shape == (32, 32)
    assert params["model"]["layers_0"]["self_attn"]["k_proj"]["kernel"].shape == (32, 16)

    ids, mask = _batch()
    ours = module.apply({"params": params}, ids, mask, output_hidden_states=True)
    ref = _hf_forward(hf, ids, mask, output_hidden_states=True)
    real = mask.astype(bool)
    atol = 1e-5 if layers <= 2 else 1e-4
    np.testing.assert_allclose(
        np.asarray(ours["logits"])[real], ref.logits.numpy()[real], atol=atol, rtol=0
    )
    assert len(ours["hidden_states"]) == len(ref.hidden_states) == layers + 1
    for got, want in zip(ours["hidden_states"], ref.hidden_states, strict=True):
        np.testing.assert_allclose(np.asarray(got)[real], want.numpy()[real], atol=atol, rtol=0)

    # Our positions come from the mask: each padded row equals transformers on that row alone,
    # unpadded, with its default positions (0, 1, ...).
    for row in (1, 2, 3):
        with torch.no_grad():
            alone = hf(input_ids=torch.tensor(ids[row : row + 1, real[row]], dtype=torch.long))
        np.testing.assert_allclose(
            np.asarray(ours["logits"])[row, real[row]], alone.logits.numpy()[0], atol=atol, rtol=0
        )


@pytest.mark.parametrize("tied", [False, True])
def test_export_reloads_in_transformers(hf_models, tmp_path, tied):
    hf, path = hf_models(tied, 2, tied)
    module, params, config = load_pretrained(path)
    out = save_pretrained(params, config, tmp_path / "export", architecture="LlamaForCausalLM")
    assert ("lm_head.weight" in SafetensorsReader(out)) == (not tied)
    assert hf_llama.config_from_hf(read_config(out)) == config

    reloaded = transformers.LlamaForCausalLM.from_pretrained(out, attn_implementation="eager")
    reloaded.eval()
    ids, mask = _batch()
    real = mask.astype(bool)
    want = _hf_forward(hf, ids, mask).logits.numpy()[real]
    np.testing.assert_array_equal(_hf_forward(reloaded, ids, mask).logits.numpy()[real], want)
    ours = module.apply({"params": params}, ids, mask)["logits"]
    np.testing.assert_allclose(np.asarray(ours)[real], want, atol=1e-5, rtol=0)


def test_base_model_architecture_both_ways(hf_models, tmp_path):
    hf, path = hf_models(False, 2, False)
    # A causal-LM checkpoint feeds a bare LlamaModel (its lm_head is dropped) ...
    module, params, config = load_pretrained(path, architecture="LlamaModel")
    assert set(params) == {"embed_tokens", "layers_0", "layers_1", "norm"}
    ids, mask = _batch()
    real = mask.astype(bool)
    want = _hf_forward(hf.model, ids, mask).last_hidden_state.numpy()[real]
    got = module.apply({"params": params}, ids, mask)["last_hidden_state"]
    np.testing.assert_allclose(np.asarray(got)[real], want, atol=1e-5, rtol=0)
    # ... and exports as transformers' LlamaModel (no "model." prefix).
    out = save_pretrained(params, config, tmp_path / "base", architecture="LlamaModel")
    assert "embed_tokens.weight" in SafetensorsReader(out)
    base = transformers.LlamaModel.from_pretrained(out, attn_implementation="eager").eval()
    np.testing.assert_allclose(
        _hf_forward(base, ids, mask).last_hidden_state.numpy()[real], want, atol=1e-6, rtol=0
    )


def _prefix_interceptor(prefix_k, prefix_v):
    """Prepend fixed keys/values in every attention layer, as prefix tuning will."""

    def interceptor(next_fun, args, kwargs, context):
        if context.method_name != "extend_kv":
            return next_fun(*args, **kwargs)
        k, v, m = next_fun(*args, **kwargs)
        b = k.shape[0]
        pk = jnp.broadcast_to(prefix_k, (b, *prefix_k.shape)).astype(k.dtype)
        pv = jnp.broadcast_to(prefix_v, (b, *prefix_v.shape)).astype(v.dtype)
        pm = jnp.ones((b, prefix_k.shape[0]), bool)
        return (
            jnp.concatenate([pk, k], 1),
            jnp.concatenate([pv, v], 1),
            jnp.concatenate([pm, m.astype(bool)], 1),
        )

    return interceptor


@pytest.mark.slow
def test_kv_cache_decode_equals_full_recompute(hf_models):
    """Prefill a left-padded prompt, then decode 1, 1 and 3 tokens: logits equal one full pass.
    Prefix keys/values are prepended through ``extend_kv`` (as prefix tuning will), so the cache,
    the slot mask and the always-visible prefix are checked together. (The plain cached path is
    also checked against transformers' generate below.)"""
    _, path = hf_models(False, 2, False)
    module, params, _ = load_pretrained(path)
    ids, mask = _batch()
    prompt, pmask = ids[:3, :6], mask[:3, :6]  # rows 1 and 2 are left-padded
    follow = np.random.default_rng(1).integers(3, VOCAB, size=(3, 5)).astype(np.int32)
    full_ids = np.concatenate([prompt, follow], 1)
    full_mask = np.concatenate([pmask, np.ones_like(follow)], 1)
    real = full_mask.astype(bool)

    rng = np.random.default_rng(2)
    prefix = [jnp.asarray(rng.standard_normal((3, 2, 8)), jnp.float32) for _ in range(2)]

    @jax.jit
    def apply(*args, **kw):
        with nn.intercept_methods(_prefix_interceptor(*prefix)):
            return module.apply({"params": params}, *args, **kw)

    full = np.asarray(apply(full_ids, full_mask)["logits"])
    plain = module.apply({"params": params}, full_ids, full_mask)["logits"]
    assert np.abs(np.asarray(plain) - full)[real].max() > 1e-2  # the prefix matters

    cache = module.init_cache(3, 14)  # 3 slots never used: invisible to every query
    out = apply(prompt, pmask, cache=cache)
    got = np.asarray(out["logits"])[real[:, :6]]
    np.testing.assert_allclose(got, full[:, :6][real[:, :6]], atol=1e-5, rtol=0)
    cache = out["cache"]
    for start, stop in ((0, 1), (1, 2), (2, 5)):
        chunk = follow[:, start:stop]
        out = apply(chunk, np.ones_like(chunk), cache=cache)
        cache = out["cache"]
        np.testing.assert_allclose(
            np.asarray(out["logits"]), full[:, 6 + start : 6 + stop], atol=1e-5, rtol=0
        )
    assert int(cache["index"]) == 11
    np.testing.assert_array_equal(np.asarray(cache["mask"])[:, :11], real)
    assert not np.asarray(cache["mask"])[:, 11:].any()


def test_greedy_generate_cached_equals_uncached_and_transformers(hf_models):
    hf, path = hf_models(True, 2, True)
    module, params, _ = load_pretrained(path)
    ids, mask = _batch()
    ids, mask = ids[:3], mask[:3]  # left-padded prompts only
    cached = greedy_generate(module, params, ids, mask, max_new_tokens=8)
    full = greedy_generate(module, params, ids, mask, max_new_tokens=8, use_cache=False)
    assert cached.shape == (3, 17)
    np.testing.assert_array_equal(np.asarray(cached), np.asarray(full))
    np.testing.assert_array_equal(np.asarray(cached)[:, :9], ids)
    with torch.no_grad():
        ref = hf.generate(
            input_ids=torch.tensor(ids, dtype=torch.long),
            attention_mask=torch.tensor(mask, dtype=torch.long),
            max_new_tokens=8,
            min_new_tokens=8,
            do_sample=False,
            eos_token_id=None,
            pad_token_id=0,
        )
    np.testing.assert_array_equal(np.asarray(cached), ref.numpy())
    ids_r, mask_r = _batch()
    with pytest.raises(ValueError, match="left-padded"):
        greedy_generate(module, params, ids_r[3:], mask_r[3:])


def test_extend_inputs_prepending_embeddings_equals_prepending_tokens(hf_models):
    _, path = hf_models(False, 2, False)
    module, params, _ = load_pretrained(path)
    ids, mask = _batch()
    prefix_ids = np.array([[5, 6, 7]], np.int32)
    prefix_emb = params["model"]["embed_tokens"]["embedding"][prefix_ids[0]]

    def interceptor(next_fun, args, kwargs, context):
        if context.method_name != "extend_inputs":
            return next_fun(*args, **kwargs)
        emb, m = next_fun(*args, **kwargs)
        b = emb.shape[0]
        soft = jnp.broadcast_to(prefix_emb, (b, *prefix_emb.shape))
        return jnp.concatenate([soft, emb], 1), jnp.concatenate([jnp.ones((b, 3), m.dtype), m], 1)

    with nn.intercept_methods(interceptor):
        got = module.apply({"params": params}, ids, mask)["logits"]
    assert got.shape == (4, 12, VOCAB)
    want = module.apply(
        {"params": params},
        np.concatenate([np.repeat(prefix_ids, 4, 0), ids], 1),
        np.concatenate([np.ones((4, 3), np.int32), mask], 1),
    )["logits"]
    real = np.concatenate([np.ones((4, 3), bool), mask.astype(bool)], 1)
    np.testing.assert_allclose(np.asarray(got)[real], np.asarray(want)[real], atol=1e-5, rtol=0)


def test_bfloat16_is_honoured(hf_models):
    _, path = hf_models(False, 2, False)
    module, params, _ = load_pretrained(path)
    m16, p16, c16 = load_pretrained(path, dtype=jnp.bfloat16, param_dtype=jnp.bfloat16)
    assert all(x.dtype == jnp.bfloat16 for x in jax.tree.leaves(p16))
    ids, mask = _batch()
    real = mask.astype(bool)
    out16 = m16.apply({"params": p16}, ids, mask)["logits"]
    assert out16.dtype == jnp.bfloat16
    ref = np.asarray(module.apply({"params": params}, ids, mask)["logits"])[real]
    err = np.abs(np.asarray(out16, np.float32)[real] - ref).max()
    assert err < 0.05 * np.abs(ref).max(), err
    cache = m16.init_cache(4, 12)
    assert cache["layers"][0]["key"].dtype == jnp.bfloat16


BASE = {
    "model_type": "llama",
    "vocab_size": 10,
    "hidden_size": 8,
    "intermediate_size": 16,
    "num_hidden_layers": 1,
    "num_attention_heads": 2,
}


@pytest.mark.parametrize(
    "extra,named",
    [
        (
            {"rope_parameters": {"rope_type": "linear", "factor": 2.0, "rope_theta": 1e4}},
            "rope_parameters",
        ),
        ({"rope_theta": 1e4, "rope_scaling": {"type": "linear", "factor": 2.0}}, "rope_scaling"),
        ({"rope_parameters": {"rope_type": "llama3", "factor": 8.0}}, "llama3"),
        ({"hidden_act": "gelu"}, "hidden_act"),
        ({"pretraining_tp": 2}, "pretraining_tp"),
        ({"attention_dropout": 0.1}, "attention_dropout"),
        ({"sliding_window": 16}, "sliding_window"),
    ],
)
def test_unsupported_config_fields_are_named(extra, named):
    with pytest.raises(UnsupportedConfigError, match=named):
        hf_llama.config_from_hf({**BASE, **extra})


def test_config_reading():
    cfg = hf_llama.config_from_hf({**BASE, "rope_theta": 1e6, "rope_scaling": None})
    assert cfg.rope_theta == 1e6 and cfg.num_key_value_heads == 2 and cfg.head_dim == 4
    cfg = hf_llama.config_from_hf(
        {**BASE, "rope_parameters": {"rope_type": "default", "rope_theta": 7.0}}
    )
    assert cfg.rope_theta == 7.0
    assert hf_llama.config_from_hf(_hf_config(True, 2, False)).rope_theta == 500.0


def test_rope_scaling_checkpoint_is_refused(hf_models, tmp_path):
    _, path = hf_models(False, 2, False)
    shutil.copy(path / "model.safetensors", tmp_path / "model.safetensors")
    cfg = json.loads((path / "config.json").read_text())
    cfg["rope_parameters"] = {"rope_type": "linear", "factor": 2.0, "rope_theta": 500.0}
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(UnsupportedConfigError, match="rope_parameters.*linear"):
        load_pretrained(tmp_path)


def test_mismatched_checkpoint_lists_every_problem(hf_models, tmp_path):
    _, path = hf_models(False, 2, False)
    tensors = dict(SafetensorsReader(path))
    del tensors["model.layers.1.mlp.up_proj.weight"]
    tensors["model.layers.0.self_attn.k_proj.weight"] = tensors[
        "model.layers.0.self_attn.k_proj.weight"
    ][:8]
    tensors["model.layers.0.self_attn.extra.weight"] = np.zeros((2, 2), np.float32)
    save_safetensors(tensors, tmp_path)
    shutil.copy(path / "config.json", tmp_path / "config.json")
    with pytest.raises(CheckpointMismatchError) as err:
        load_pretrained(tmp_path)
    msg = str(err.value)
    assert "model/layers_1/mlp/up_proj/kernel" in msg  # missing
    assert "model.layers.0.self_attn.extra.weight" in msg  # unexpected
    assert "model.layers.0.self_attn.k_proj.weight [8, 32]" in msg  # wrong shape
