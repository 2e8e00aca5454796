"""Classifier pooling: each choice against a hand computation, the checkpoint's default, and the
exports that can and cannot hold it."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from adapt.convert import native
from adapt.convert.hf import load_pretrained, save_pretrained
from adapt.convert.hf_config import UnsupportedConfigError
from adapt.convert.sentence_transformers import pooling_of
from adapt.models import bert, vit

SENTENCES = ["A man is playing a guitar.", "The stock market fell sharply today.", "Hi"]


def _batch(minilm_dir):
    import tokenizers

    tok = tokenizers.Tokenizer.from_file(str(minilm_dir / "tokenizer.json"))
    tok.no_padding()
    encs = tok.encode_batch(SENTENCES)
    width = max(len(e.ids) for e in encs)
    ids = np.zeros((len(encs), width), np.int32)
    mask = np.zeros((len(encs), width), np.int32)
    for i, e in enumerate(encs):
        ids[i, : len(e.ids)], mask[i, : len(e.ids)] = e.ids, 1
    return ids, mask


def test_minilm_defaults_to_mean_pooling_equal_to_sentence_transformers(minilm_dir):
    """all-MiniLM-L6-v2 ships sentence-transformers files that say mean pooling: a classifier
    on it pools that way by default, and the pooled vector is sentence-transformers' own
    embedding (before its Normalize module) within 1e-5."""
    st = pytest.importorskip("sentence_transformers")
    assert pooling_of(minilm_dir) == "mean"
    module, params, config = load_pretrained(
        minilm_dir, architecture="BertForSequenceClassification", num_labels=3
    )
    assert config.pooling == "mean" and "pooler" not in params["bert"]
    ids, mask = _batch(minilm_dir)
    out = module.apply({"params": params}, ids, attention_mask=mask)
    pooled = bert.pool(out, "mean")
    # the head is one linear layer on that vector
    want = pooled @ params["classifier"]["kernel"] + params["classifier"]["bias"]
    np.testing.assert_allclose(out["logits"], want, atol=1e-5)
    # sentence-transformers, checked on this machine against its own normalised embedding
    model = st.SentenceTransformer(str(minilm_dir), device="cpu")
    features = model.tokenize(SENTENCES)
    st_pooled = model[1](model[0](features))["sentence_embedding"].detach().numpy()
    normalised = model.encode(SENTENCES, convert_to_numpy=True)
    np.testing.assert_allclose(
        st_pooled / np.linalg.norm(st_pooled, axis=1, keepdims=True), normalised, atol=1e-5
    )
    np.testing.assert_allclose(np.asarray(pooled), st_pooled, atol=1e-5)


def _tiny_bert(**overrides):
    return bert.BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2,
                           num_attention_heads=2, intermediate_size=24, num_labels=3,
                           **overrides)  # fmt: skip


@pytest.mark.parametrize("pooling", ["pooler", "cls", "mean"])
def test_each_bert_pooling_is_its_hand_computation(pooling):
    config = _tiny_bert(pooling=pooling)
    model = bert.BertForSequenceClassification(config)
    ids = np.array([[2, 5, 7, 9, 0, 0], [3, 4, 0, 0, 0, 0]], np.int32)
    mask = (ids > 0).astype(np.int32)
    params = model.init(jax.random.key(0), jnp.asarray(ids))["params"]
    out = model.apply({"params": params}, ids, attention_mask=mask)
    hidden = np.asarray(out["last_hidden_state"])
    if pooling == "pooler":
        dense = params["bert"]["pooler"]["dense"]
        vec = np.tanh(hidden[:, 0] @ dense["kernel"] + dense["bias"])
    elif pooling == "cls":
        vec = hidden[:, 0]
        assert "pooler" not in params["bert"]
    else:
        vec = np.stack([hidden[i, mask[i] == 1].mean(0) for i in range(len(ids))])
        assert "pooler" not in params["bert"]
    want = vec @ params["classifier"]["kernel"] + params["classifier"]["bias"]
    np.testing.assert_allclose(out["logits"], want, atol=1e-5)


def test_a_plain_hugging_face_bert_keeps_its_pooler_and_a_bad_pooling_is_named(tmp_path):
    transformers = pytest.importorskip("transformers")
    hf_config = transformers.BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1,
                                        num_attention_heads=2, intermediate_size=24)  # fmt: skip
    transformers.BertModel(hf_config).save_pretrained(tmp_path)
    _, params, config = load_pretrained(tmp_path, architecture="BertForSequenceClassification")
    assert config.effective_pooling == "pooler" and "pooler" in params["bert"]
    _, params, config = load_pretrained(
        tmp_path, architecture="BertForSequenceClassification", pooling="mean"
    )
    assert config.pooling == "mean" and "pooler" not in params["bert"]
    with pytest.raises(UnsupportedConfigError, match="pooling 'gap' is not one of bert"):
        load_pretrained(tmp_path, architecture="BertForSequenceClassification", pooling="gap")


def test_export_refuses_a_pooling_hugging_face_cannot_hold_and_native_keeps_it(tmp_path):
    config = _tiny_bert(pooling="mean")
    model = bert.BertForSequenceClassification(config)
    ids = np.array([[2, 5, 7, 0]], np.int32)
    params = model.init(jax.random.key(1), jnp.asarray(ids))["params"]
    with pytest.raises(UnsupportedConfigError, match="pooling 'mean' cannot be written.*native"):
        save_pretrained(
            params, config, tmp_path / "hf", architecture="BertForSequenceClassification"
        )
    native.save_native(
        params, config, tmp_path / "nat", architecture="BertForSequenceClassification"
    )
    assert json.loads((tmp_path / "nat" / "adapt.json").read_text())["config"] == {
        "pooling": "mean"
    }
    module, back, loaded = native.load_native(tmp_path / "nat")
    assert loaded.pooling == "mean"
    mask = (ids > 0).astype(np.int32)
    np.testing.assert_allclose(
        module.apply({"params": back}, ids, attention_mask=mask)["logits"],
        model.apply({"params": params}, ids, attention_mask=mask)["logits"],
        atol=1e-6,
    )
    # with pooler pooling the same model exports to Hugging Face as before
    pooler = _tiny_bert()
    pooler_params = bert.BertForSequenceClassification(pooler).init(jax.random.key(1), ids)
    save_pretrained(pooler_params["params"], pooler, tmp_path / "hf2",
                    architecture="BertForSequenceClassification")  # fmt: skip


@pytest.mark.parametrize("pooling", ["cls", "gap"])
def test_vit_pooling_is_its_hand_computation_and_gap_does_not_export(tmp_path, pooling):
    config = vit.ViTConfig(image_size=8, patch_size=4, num_channels=1, hidden_size=16,
                           num_hidden_layers=1, num_attention_heads=2, intermediate_size=24,
                           num_labels=3, pooling=pooling)  # fmt: skip
    model = vit.ViTForImageClassification(config)
    images = np.random.default_rng(0).standard_normal((2, 8, 8, 1)).astype(np.float32)
    params = model.init(jax.random.key(0), images)["params"]
    hidden = vit.ViTModel(config, add_pooling_layer=False).apply({"params": params["vit"]}, images)[
        "last_hidden_state"
    ]
    vec = hidden[:, 0] if pooling == "cls" else hidden[:, 1:].mean(1)
    want = vec @ params["classifier"]["kernel"] + params["classifier"]["bias"]
    np.testing.assert_allclose(model.apply({"params": params}, images)["logits"], want, atol=1e-5)
    if pooling == "gap":
        with pytest.raises(UnsupportedConfigError, match="pooling 'gap' cannot be written"):
            save_pretrained(params, config, tmp_path, architecture="ViTForImageClassification")


def test_sentence_transformers_pooling_files(tmp_path):
    assert pooling_of(tmp_path) is None  # not a sentence-transformers folder
    (tmp_path / "modules.json").write_text(json.dumps([
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling",
         "type": "sentence_transformers.models.Pooling"},
    ]))  # fmt: skip
    (tmp_path / "1_Pooling").mkdir()
    for flags, want in [({"pooling_mode_cls_token": True}, "cls"),
                        ({"pooling_mode_mean_tokens": True}, "mean")]:  # fmt: skip
        (tmp_path / "1_Pooling" / "config.json").write_text(json.dumps(flags))
        assert pooling_of(tmp_path) == want
    (tmp_path / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode_max_tokens": 1}))
    with pytest.raises(UnsupportedConfigError, match="pooling_mode_max_tokens.*model.pooling"):
        pooling_of(tmp_path)
