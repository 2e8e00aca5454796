"""BERT / RoBERTa: conversion from and to transformers, numerical parity, strict loading.

Every model here is a tiny randomly initialised transformers model saved to ``tmp_path``. Its
weights are re-drawn with a large spread (LayerNorm scales and biases included) so that a swapped
or mis-transposed tensor cannot hide behind transformers' near-identity initialisation.
"""

from __future__ import annotations

import dataclasses
import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from safetensors.numpy import load_file, save_file

from adapt import paths
from adapt.convert.hf import load_pretrained, save_pretrained
from adapt.convert.hf_config import UnsupportedConfigError
from adapt.convert.mapping import CheckpointMismatchError

ATOL = 1e-5
LENGTHS = (9, 6, 3)  # real tokens per row; the rest of each row is right padding


def _hf_config(model_type: str, **kw) -> transformers.PretrainedConfig:
    common = dict(
        vocab_size=100,
        hidden_size=32,
        num_hidden_layers=3,
        num_attention_heads=4,
        intermediate_size=37,
        max_position_embeddings=40,
    )
    if model_type == "roberta":
        # type_vocab_size=1 as in real RoBERTa checkpoints; pad_token_id=1 (the default).
        return transformers.RobertaConfig(**{**common, "type_vocab_size": 1, **kw})
    return transformers.BertConfig(**{**common, "type_vocab_size": 2, **kw})


def _tiny_hf(architecture: str, seed: int = 0, **kw) -> torch.nn.Module:
    model_type = "roberta" if architecture.startswith("Roberta") else "bert"
    torch.manual_seed(seed)
    model = getattr(transformers, architecture)(_hf_config(model_type, **kw))
    with torch.no_grad():
        for name, p in model.named_parameters():
            is_norm_scale = name.endswith(("LayerNorm.weight", "layer_norm.weight"))
            p.copy_((1.0 if is_norm_scale else 0.0) + 0.3 * torch.randn_like(p))
    return model.eval()


def _batch(config, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    t = max(LENGTHS)
    mask = (np.arange(t)[None, :] < np.array(LENGTHS)[:, None]).astype(np.int64)
    ids = rng.integers(3, config.vocab_size, (len(LENGTHS), t))
    ids = np.where(mask == 1, ids, config.pad_token_id)
    batch = {"input_ids": ids, "attention_mask": mask}
    if config.type_vocab_size > 1:  # exercise the token-type embedding with both segments
        batch["token_type_ids"] = (np.arange(t)[None, :] >= 2).astype(np.int64) * mask
    return batch


def _hf_run(model, batch) -> dict[str, np.ndarray]:
    with torch.no_grad():
        out = model(**{k: torch.tensor(v) for k, v in batch.items()}, output_hidden_states=True)
    res = {f"hidden_states_{i}": h.numpy() for i, h in enumerate(out.hidden_states)}
    for key in ("logits", "last_hidden_state", "pooler_output"):
        if getattr(out, key, None) is not None:
            res[key] = getattr(out, key).numpy()
    return res


def _ours_run(module, params, batch, **kw) -> dict[str, np.ndarray]:
    out = module.apply(
        {"params": params},
        jnp.asarray(batch["input_ids"]),
        jnp.asarray(batch["attention_mask"]),
        None if "token_type_ids" not in batch else jnp.asarray(batch["token_type_ids"]),
        output_hidden_states=True,
        **kw,
    )
    res = {f"hidden_states_{i}": np.asarray(h) for i, h in enumerate(out["hidden_states"])}
    for key in ("logits", "last_hidden_state", "pooler_output"):
        if key in out:
            res[key] = np.asarray(out[key])
    return res


def _assert_same(ours: dict, theirs: dict, atol: float = ATOL) -> None:
    """Every output transformers returns, ours returns too, equal within ``atol``.

    All positions are compared, pads included: BERT computes pad positions normally (pads are
    only masked as keys), and transformers' values there are well defined.
    """
    assert set(theirs) <= set(ours), (sorted(theirs), sorted(ours))
    for key, want in theirs.items():
        # A near-zero reference would make the tolerance meaningless.
        assert np.abs(want).max() > 0.1, key
        np.testing.assert_allclose(ours[key], want, atol=atol, rtol=0, err_msg=key)


ARCHITECTURES = [
    "BertForSequenceClassification",
    "RobertaModel",
    "RobertaForSequenceClassification",
    "BertForTokenClassification",
    "BertForMaskedLM",
    "RobertaForMaskedLM",
]


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_parity_and_export_round_trip(architecture, tmp_path):
    """transformers -> adapt matches every hidden state and the logits; adapt -> transformers
    writes exactly the keys transformers itself writes and reloads to the same outputs."""
    hf_model = _tiny_hf(architecture, num_labels=3)
    hf_model.save_pretrained(tmp_path / "hf")
    batch = _batch(hf_model.config)
    want = _hf_run(hf_model, batch)
    assert len([k for k in want if k.startswith("hidden_states_")]) == 4  # embeddings + 3 layers

    module, params, config = load_pretrained(tmp_path / "hf")
    assert type(module).__name__ == architecture.replace("Roberta", "Bert")
    _assert_same(_ours_run(module, params, batch), want)

    save_pretrained(params, config, tmp_path / "ours", architecture=architecture)
    exported = load_file(tmp_path / "ours" / "model.safetensors")
    assert sorted(exported) == sorted(load_file(tmp_path / "hf" / "model.safetensors"))
    reloaded, info = getattr(transformers, architecture).from_pretrained(
        tmp_path / "ours", output_loading_info=True
    )
    assert type(reloaded).__name__ == architecture
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    _assert_same(_hf_run(reloaded.eval(), batch), want)


def test_roberta_positions_skip_padding(tmp_path):
    """The RoBERTa position offset is what the parity above rests on: BERT-style positions
    (0..T-1) give different numbers, and HF's pads-keep-pad_token_id rule is honoured."""
    hf_model = _tiny_hf("RobertaModel")
    hf_model.save_pretrained(tmp_path)
    batch = _batch(hf_model.config)
    module, params, config = load_pretrained(tmp_path)
    assert config.position_offset == config.pad_token_id + 1 == 2
    good = _ours_run(module, params, batch)["last_hidden_state"]
    bert_style = dataclasses.replace(config, position_offset=0)
    bad = _ours_run(type(module)(bert_style), params, batch)["last_hidden_state"]
    assert np.abs(good - bad).max() > 1e-2
    # Left padding: real tokens still start at position 2, so they match the unpadded sequence.
    ids = batch["input_ids"][2:, :3]
    left = {
        "input_ids": np.concatenate([np.full((1, 4), config.pad_token_id), ids], axis=1),
        "attention_mask": np.concatenate([np.zeros((1, 4)), np.ones((1, 3))], axis=1),
    }
    alone = _ours_run(module, params, {"input_ids": ids, "attention_mask": np.ones((1, 3))})
    padded = _ours_run(module, params, left)
    np.testing.assert_allclose(
        padded["last_hidden_state"][:, 4:], alone["last_hidden_state"], atol=ATOL
    )
    np.testing.assert_allclose(
        padded["last_hidden_state"], _hf_run(hf_model, left)["last_hidden_state"], atol=ATOL
    )


def test_checkpoint_mismatch_lists_every_problem(tmp_path):
    _tiny_hf("BertForSequenceClassification").save_pretrained(tmp_path)
    state = load_file(tmp_path / "model.safetensors")
    del state["bert.encoder.layer.1.output.dense.bias"]
    state["bert.encoder.layer.0.attention.self.rotary.weight"] = np.zeros((4, 4), np.float32)
    state["bert.encoder.layer.2.intermediate.dense.weight"] = np.zeros((36, 32), np.float32)
    save_file(state, tmp_path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(CheckpointMismatchError) as err:
        load_pretrained(tmp_path)
    message = str(err.value)
    assert "bert/encoder/layer_1/output/dense/bias" in message  # missing (our name)
    assert "bert.encoder.layer.0.attention.self.rotary.weight" in message  # unexpected
    assert "bert.encoder.layer.2.intermediate.dense.weight" in message  # wrong shape
    assert "[32, 36]" in message and "[32, 37]" in message  # ... with both shapes


@pytest.mark.parametrize(
    "field, value",
    [
        ("position_embedding_type", "relative_key"),
        ("is_decoder", True),
        ("add_cross_attention", True),
        ("tie_word_embeddings", False),
        ("hidden_act", "gelu_fast"),
        ("embedding_size", 16),
    ],
)
def test_unsupported_config_is_named(field, value, tmp_path):
    _tiny_hf("BertModel").save_pretrained(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg[field] = value
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(UnsupportedConfigError, match=field):
        load_pretrained(tmp_path)


def test_base_checkpoint_feeds_a_new_classification_head(tmp_path):
    """A bare BertModel checkpoint (keys without ``bert.``, as all-MiniLM-L6-v2 ships) loads as
    BertForSequenceClassification with num_labels=3: encoder untouched, classifier fresh."""
    base = _tiny_hf("BertModel")
    base.save_pretrained(tmp_path / "base")
    assert "embeddings.word_embeddings.weight" in load_file(tmp_path / "base" / "model.safetensors")
    batch = _batch(base.config)
    want = _hf_run(base, batch)

    module, params, config = load_pretrained(
        tmp_path / "base",
        architecture="BertForSequenceClassification",
        num_labels=3,
        rng=jax.random.key(7),
    )
    assert config.num_labels == 3
    kernel, bias = params["classifier"]["kernel"], params["classifier"]["bias"]
    assert kernel.shape == (32, 3) and 0.005 < float(jnp.std(kernel)) < 0.05  # N(0, 0.02)
    assert not np.any(np.asarray(bias))
    got = _ours_run(module, params, batch)
    _assert_same(got, {k: v for k, v in want.items() if k != "logits"})
    assert got["logits"].shape == (3, 3)

    # The fresh head exports and transformers computes the same logits with it.
    save_pretrained(params, config, tmp_path / "cls", architecture="BertForSequenceClassification")
    reloaded = transformers.BertForSequenceClassification.from_pretrained(tmp_path / "cls")
    assert reloaded.config.num_labels == 3
    np.testing.assert_allclose(_hf_run(reloaded.eval(), batch)["logits"], got["logits"], atol=ATOL)

    # And the other way round: a task checkpoint (``bert.`` prefix, no pooler) as a bare encoder.
    mlm = _tiny_hf("BertForMaskedLM", seed=1)
    mlm.save_pretrained(tmp_path / "mlm")
    module, params, _ = load_pretrained(tmp_path / "mlm", architecture="BertModel")
    np.testing.assert_allclose(
        _ours_run(module, params, batch)["last_hidden_state"],
        _hf_run(mlm, batch)["hidden_states_3"],
        atol=ATOL,
    )


def test_old_checkpoint_with_tied_decoder_and_buffers(tmp_path):
    """Checkpoints written by older transformers carry the tied decoder weight/bias, the
    position_ids buffer and TF-era gamma/beta names; they load to the same model."""
    hf_model = _tiny_hf("BertForMaskedLM")
    hf_model.save_pretrained(tmp_path)
    state = load_file(tmp_path / "model.safetensors")
    state["cls.predictions.decoder.weight"] = state["bert.embeddings.word_embeddings.weight"]
    state["cls.predictions.decoder.bias"] = state["cls.predictions.bias"]
    state["bert.embeddings.position_ids"] = np.arange(40, dtype=np.int64)[None]
    for suffix, old in (("weight", "gamma"), ("bias", "beta")):
        state[f"bert.embeddings.LayerNorm.{old}"] = state.pop(f"bert.embeddings.LayerNorm.{suffix}")
    save_file(state, tmp_path / "model.safetensors", metadata={"format": "pt"})
    module, params, _ = load_pretrained(tmp_path)
    batch = _batch(hf_model.config)
    _assert_same(_ours_run(module, params, batch), _hf_run(hf_model, batch))


def test_bfloat16_runs_close_to_float32(tmp_path):
    hf_model = _tiny_hf("BertForSequenceClassification")
    hf_model.save_pretrained(tmp_path)
    batch = _batch(hf_model.config)
    module, params, _ = load_pretrained(tmp_path)
    ref = _ours_run(module, params, batch)
    module16, params16, _ = load_pretrained(tmp_path, dtype=jnp.bfloat16, param_dtype=jnp.bfloat16)
    assert all(p.dtype == jnp.bfloat16 for p in paths.flatten(params16).values())
    got = _ours_run(module16, params16, batch)
    assert got["logits"].dtype == jnp.bfloat16
    for key in ("last_hidden_state", "logits"):
        scale = np.abs(ref[key]).max()
        err = np.abs(got[key].astype(np.float32) - ref[key]).max()
        assert err < 0.1 * scale, (key, err, scale)


def _prepend(x: jax.Array, n: int, value) -> jax.Array:
    pad = jnp.full((x.shape[0], n, *x.shape[2:]), value, x.dtype)
    return jnp.concatenate([pad, x], axis=1)


def test_extension_points_accept_longer_sequences(tmp_path):
    """extend_inputs / extend_kv / sdpa are interceptable; the model follows a longer T or S."""
    hf_model = _tiny_hf("BertForSequenceClassification")
    hf_model.save_pretrained(tmp_path)
    module, params, _ = load_pretrained(tmp_path)
    batch = _batch(hf_model.config)
    ref = _ours_run(module, params, batch)
    calls = {"extend_inputs": 0, "extend_kv": 0, "sdpa": 0}

    def run(n: int, mask_value: int, method: str):
        def interceptor(next_fun, args, kwargs, context):
            out = next_fun(*args, **kwargs)
            if context.method_name == "sdpa":
                calls["sdpa"] += 1
                assert args[1].shape[1] == out.shape[1] + (3 if method == "extend_kv" else 0)
            if context.method_name != method:
                return out
            calls[method] += 1
            *arrays, mask = out
            arrays = [_prepend(a, n, 0.5) for a in arrays]
            return (*arrays, _prepend(mask, n, mask_value))

        with nn.intercept_methods(interceptor):
            return _ours_run(module, params, batch)

    # Masked-out extra keys change nothing; attended ones do.
    same = run(3, False, "extend_kv")
    np.testing.assert_allclose(same["logits"], ref["logits"], atol=ATOL)
    assert calls["extend_kv"] == calls["sdpa"] == 3  # once per layer
    assert np.abs(run(3, True, "extend_kv")["logits"] - ref["logits"]).max() > 1e-3
    # Two prepended input positions: every output grows by two; masked, the rest is unchanged.
    longer = run(2, 0, "extend_inputs")
    assert calls["extend_inputs"] == 1
    assert longer["last_hidden_state"].shape[1] == ref["last_hidden_state"].shape[1] + 2
    np.testing.assert_allclose(
        longer["last_hidden_state"][:, 2:], ref["last_hidden_state"], atol=ATOL
    )


def test_dropout_only_in_training_mode(tmp_path):
    _tiny_hf("BertForSequenceClassification").save_pretrained(tmp_path)
    # Only attention-probability dropout is on, so this exercises the attention dropout path.
    module, params, _ = load_pretrained(
        tmp_path, attention_probs_dropout_prob=0.5, hidden_dropout_prob=0.0
    )
    ids = jnp.ones((2, 5), jnp.int32)
    eval_out = module.apply({"params": params}, ids)["logits"]
    np.testing.assert_array_equal(eval_out, module.apply({"params": params}, ids)["logits"])
    train = [
        module.apply(
            {"params": params}, ids, deterministic=False, rngs={"dropout": jax.random.key(i)}
        )
        for i in range(2)
    ]
    assert np.abs(train[0]["logits"] - train[1]["logits"]).max() > 1e-4
