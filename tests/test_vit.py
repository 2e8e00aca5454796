"""ViT: parity with transformers (float32, CPU), conversion both ways, position interpolation,
strict errors, bfloat16, and the two extension points.

Every HF parameter is re-drawn with a sizeable spread (HF's init leaves LayerNorms at 1/0 and the
position table at std 0.02, which would hide a swapped norm or a wrong interpolation kernel).
HF takes NCHW images; ours are NHWC, so HF gets ``x.transpose(0, 3, 1, 2)``.
"""

import json
import shutil

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from adapt import paths
from adapt.convert.hf import load_pretrained, save_pretrained
from adapt.convert.hf_config import UnsupportedConfigError
from adapt.convert.hf_vit import config_from_hf
from adapt.convert.mapping import CheckpointMismatchError
from adapt.convert.safetensors_io import SafetensorsReader, save_safetensors
from adapt.models.vit import ViTForImageClassification, resize_position_embeddings

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

TINY = dict(
    image_size=32,
    patch_size=8,
    num_channels=3,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=64,
)
LABELS = {0: "cat", 1: "dog", 2: "emu", 3: "yak", 4: "gnu"}
ATOL = 1e-5


def _randomize(model, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen)
            if "layernorm" in name and name.endswith("weight"):
                p.copy_(1.0 + 0.2 * noise)
            elif "embeddings" in name and "projection" not in name:
                p.copy_(noise)  # cls token and position table at unit scale
            else:
                p.copy_(0.2 * noise)
    model.eval()


def _images(n: int, h: int = 32, w: int = 32, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, h, w, 3)).astype(np.float32)


def _hf(model, x: np.ndarray, **kwargs):
    with torch.no_grad():
        return model(torch.from_numpy(x.transpose(0, 3, 1, 2)), output_hidden_states=True, **kwargs)


@pytest.fixture(scope="module")
def hf_cls(tmp_path_factory):
    """A random tiny ViTForImageClassification saved the way transformers saves it."""
    config = transformers.ViTConfig(
        **TINY, id2label=LABELS, label2id={v: k for k, v in LABELS.items()}
    )
    model = transformers.ViTForImageClassification(config)
    _randomize(model, seed=0)
    path = tmp_path_factory.mktemp("vit_cls")
    model.save_pretrained(path)
    return model, path


@pytest.fixture(scope="module")
def hf_base(tmp_path_factory):
    """A random tiny ViTModel (with pooler), whose checkpoint keys carry no ``vit.`` prefix."""
    model = transformers.ViTModel(transformers.ViTConfig(**TINY, pooler_act="tanh"))
    _randomize(model, seed=1)
    path = tmp_path_factory.mktemp("vit_base")
    model.save_pretrained(path)
    assert not any(k.startswith("vit.") for k in SafetensorsReader(path))
    return model, path


@pytest.fixture(scope="module")
def loaded(hf_cls):
    return load_pretrained(hf_cls[1])


def test_classification_parity(hf_cls, loaded):
    hf_model, _ = hf_cls
    module, params, config = loaded
    assert config.num_labels == 5 and config.id2label == tuple(LABELS.values())
    flat = paths.flatten(params)
    # HF paths, layer_{i} style, Flax leaf names: what LoRA / partition regexes rely on.
    assert flat["vit/encoder/layer_1/attention/attention/query/kernel"].shape == (32, 32)
    assert flat["vit/embeddings/patch_embeddings/projection/kernel"].shape == (8, 8, 3, 32)
    assert "vit/pooler/dense/kernel" not in flat  # HF's classifier has no pooler either

    x = _images(3)
    ours = module.apply({"params": params}, x, output_hidden_states=True)
    ref = _hf(hf_model, x)
    assert len(ours["hidden_states"]) == len(ref.hidden_states) == 3
    for i, (a, b) in enumerate(zip(ours["hidden_states"], ref.hidden_states, strict=True)):
        np.testing.assert_allclose(np.asarray(a), b.numpy(), atol=ATOL, err_msg=f"hidden {i}")
    np.testing.assert_allclose(np.asarray(ours["logits"]), ref.logits.numpy(), atol=ATOL)
    assert float(np.abs(ref.logits.numpy()).max()) > 0.1  # outputs are not trivially ~0


def test_export_reloads_in_transformers(hf_cls, loaded, tmp_path):
    hf_model, src = hf_cls
    _, params, config = loaded
    out = save_pretrained(params, config, tmp_path, architecture="ViTForImageClassification")

    original, exported = SafetensorsReader(src), SafetensorsReader(out)
    assert sorted(exported) == sorted(original)  # the legacy layout transformers writes
    for key in original:
        np.testing.assert_array_equal(exported[key], original[key], err_msg=key)

    assert config_from_hf(json.loads((out / "config.json").read_text())) == config
    reloaded = transformers.ViTForImageClassification.from_pretrained(out).eval()
    assert reloaded.config.id2label == LABELS
    x = _images(2, seed=1)
    np.testing.assert_allclose(
        _hf(reloaded, x).logits.numpy(), _hf(hf_model, x).logits.numpy(), atol=1e-6
    )


def test_base_model_parity_pooler_and_export(hf_base, tmp_path):
    hf_model, src = hf_base
    module, params, config = load_pretrained(src)
    assert "pooler" in params and "vit" not in params  # HF ViTModel keys are unprefixed
    x = _images(2, seed=2)
    ours = module.apply({"params": params}, x, output_hidden_states=True)
    ref = _hf(hf_model, x)
    for a, b in zip(ours["hidden_states"], ref.hidden_states, strict=True):
        np.testing.assert_allclose(np.asarray(a), b.numpy(), atol=ATOL)
    np.testing.assert_allclose(
        np.asarray(ours["last_hidden_state"]), ref.last_hidden_state.numpy(), atol=ATOL
    )
    np.testing.assert_allclose(
        np.asarray(ours["pooler_output"]), ref.pooler_output.numpy(), atol=ATOL
    )

    out = save_pretrained(params, config, tmp_path, architecture="ViTModel")
    assert sorted(SafetensorsReader(out)) == sorted(SafetensorsReader(src))
    reloaded = transformers.ViTModel.from_pretrained(out).eval()
    np.testing.assert_allclose(
        _hf(reloaded, x).pooler_output.numpy(), ref.pooler_output.numpy(), atol=1e-6
    )


def test_base_checkpoint_feeds_classifier_with_new_head(hf_base):
    hf_model, src = hf_base
    module, params, config = load_pretrained(
        src, architecture="ViTForImageClassification", num_labels=3, rng=jax.random.key(7)
    )
    assert config.num_labels == 3 and config.id2label == ()
    kernel = np.asarray(params["classifier"]["kernel"])
    bias = np.asarray(params["classifier"]["bias"])
    assert kernel.shape == (32, 3) and np.abs(kernel).max() > 0  # freshly initialised head
    x = _images(2, seed=3)
    cls = _hf(hf_model, x).last_hidden_state.numpy()[:, 0]
    logits = module.apply({"params": params}, x)["logits"]
    np.testing.assert_allclose(np.asarray(logits), cls @ kernel + bias, atol=ATOL)


def test_classification_checkpoint_as_backbone(hf_cls):
    hf_model, src = hf_cls
    module, params, _ = load_pretrained(src, architecture="ViTModel")
    assert "classifier" not in params and "pooler" in params  # head dropped, pooler fresh
    x = _images(2, seed=4)
    with torch.no_grad():
        ref = hf_model.vit(torch.from_numpy(x.transpose(0, 3, 1, 2))).last_hidden_state
    ours = module.apply({"params": params}, x)["last_hidden_state"]
    np.testing.assert_allclose(np.asarray(ours), ref.numpy(), atol=ATOL)


@pytest.mark.parametrize("size", [(48, 48), (48, 24)], ids=["up", "up_down_nonsquare"])
def test_interpolate_pos_encoding_matches_hf(hf_cls, loaded, size):
    hf_model, _ = hf_cls
    module, params, config = loaded
    x = _images(2, *size, seed=5)
    ref = _hf(hf_model, x, interpolate_pos_encoding=True)
    ours = module.apply(
        {"params": params}, x, output_hidden_states=True, interpolate_pos_encoding=True
    )
    # hidden_states[0] is embeddings + the resized table: isolates the interpolation itself.
    np.testing.assert_allclose(
        np.asarray(ours["hidden_states"][0]), ref.hidden_states[0].numpy(), atol=ATOL
    )
    np.testing.assert_allclose(np.asarray(ours["logits"]), ref.logits.numpy(), atol=ATOL)

    # Resizing the stored table once gives the same model at the new size, without the flag.
    new_params, new_config = resize_position_embeddings(params, config, size)
    pos = new_params["vit"]["embeddings"]["position_embeddings"]
    assert pos.shape == (1, 1 + (size[0] // 8) * (size[1] // 8), 32)
    fixed = ViTForImageClassification(new_config).apply({"params": new_params}, x)
    np.testing.assert_allclose(np.asarray(fixed["logits"]), ref.logits.numpy(), atol=ATOL)


def test_other_size_without_interpolation_raises(loaded):
    module, params, _ = loaded
    with pytest.raises(ValueError, match="interpolate_pos_encoding"):
        module.apply({"params": params}, _images(1, 48, 48))
    with pytest.raises(ValueError, match="NHWC"):
        module.apply({"params": params}, _images(1).transpose(0, 3, 1, 2))


def test_reads_transformers_v5_state_dict_layout(hf_cls, loaded, tmp_path):
    """``save_file(model.state_dict())`` in transformers 5 writes renamed keys (q_proj, mlp.fc1)."""
    from safetensors.torch import save_file

    hf_model, src = hf_cls
    state = hf_model.state_dict()
    assert "vit.layers.0.attention.q_proj.weight" in state  # the layout under test
    save_file({k: v.contiguous() for k, v in state.items()}, tmp_path / "model.safetensors")
    shutil.copy(src / "config.json", tmp_path / "config.json")
    _, params, _ = load_pretrained(tmp_path)
    want = paths.flatten(loaded[1])
    got = paths.flatten(params)
    assert got.keys() == want.keys()
    for k in want:
        np.testing.assert_array_equal(np.asarray(got[k]), np.asarray(want[k]), err_msg=k)


def _copy_with(src, dst, edit) -> None:
    reader = SafetensorsReader(src)
    tensors = {k: np.asarray(reader[k]) for k in reader}
    edit(tensors)
    save_safetensors(tensors, dst)
    shutil.copy(src / "config.json", dst / "config.json")


def test_mis_shaped_and_missing_keys_are_named(hf_cls, tmp_path):
    _, src = hf_cls
    bad = "vit.encoder.layer.1.attention.attention.query.weight"
    gone = "vit.encoder.layer.0.intermediate.dense.bias"

    def edit(t):
        t[bad] = t[bad][:, :16]
        del t[gone]

    _copy_with(src, tmp_path, edit)
    with pytest.raises(CheckpointMismatchError) as err:
        load_pretrained(tmp_path)
    msg = str(err.value)
    assert bad in msg and "[32, 16]" in msg
    assert "vit/encoder/layer_0/intermediate/dense/bias" in msg


@pytest.mark.parametrize(
    "field, value",
    [("head_dim", 4), ("hidden_act", "quick_gelu"), ("use_mask_token", True), ("is_decoder", True)],
)
def test_unsupported_config_field_is_named(hf_cls, field, value):
    _, src = hf_cls
    hf = json.loads((src / "config.json").read_text())
    assert "encoder_stride" in hf  # present in every HF ViT config, deliberately accepted
    config_from_hf(hf)
    with pytest.raises(UnsupportedConfigError, match=field):
        config_from_hf({**hf, field: value})


def test_unsupported_config_through_loader(hf_cls, tmp_path):
    _, src = hf_cls
    _copy_with(src, tmp_path, lambda t: None)
    hf = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**hf, "layer_scale_init_value": 0.1}))
    with pytest.raises(UnsupportedConfigError, match="layer_scale_init_value"):
        load_pretrained(tmp_path)


@pytest.mark.slow
def test_bfloat16(hf_cls, loaded):
    _, src = hf_cls
    module, params, config = load_pretrained(src, dtype=jnp.bfloat16, param_dtype=jnp.bfloat16)
    assert config.dtype == jnp.bfloat16
    assert {v.dtype for v in paths.flatten(params).values()} == {jnp.dtype(jnp.bfloat16)}
    x = _images(2, seed=6)
    logits = module.apply({"params": params}, x)["logits"]
    assert logits.dtype == jnp.bfloat16
    ref = loaded[0].apply({"params": loaded[1]}, x)["logits"]
    scale = float(jnp.abs(ref).max())
    np.testing.assert_allclose(np.asarray(logits, np.float32), np.asarray(ref), atol=0.1 * scale)

    def loss(p):  # a training step at another resolution: grads flow through the resize too
        out = module.apply({"params": p}, _images(2, 48, 48), interpolate_pos_encoding=True)
        return out["logits"].astype(jnp.float32).sum()

    grads = jax.jit(jax.grad(loss))(params)
    assert all(bool(jnp.isfinite(g).all()) for g in jax.tree.leaves(grads))
    assert float(jnp.abs(grads["vit"]["embeddings"]["position_embeddings"]).max()) > 0


def test_extension_points(loaded):
    """Masked-out extra keys/tokens must not change anything; attended ones must."""
    module, params, _ = loaded
    x = _images(2, seed=7)
    base = np.asarray(module.apply({"params": params}, x)["logits"])
    calls = {"extend_kv": 0, "extend_inputs": 0}

    def run(real: bool):
        def interceptor(next_fun, args, kwargs, context):
            name = context.method_name
            if name == "extend_kv":
                calls[name] += 1
                key, value, mask = next_fun(*args, **kwargs)
                b, _, h, d = key.shape
                extra = jnp.full((b, 3, h, d), 2.0, key.dtype)
                extra_mask = jnp.full((b, 3), real)
                return (
                    jnp.concatenate([extra, key], 1),
                    jnp.concatenate([extra, value], 1),
                    jnp.concatenate([extra_mask, mask], 1),
                )
            if name == "extend_inputs":
                calls[name] += 1
                emb, mask = next_fun(*args, **kwargs)
                prompts = jnp.full((emb.shape[0], 4, emb.shape[2]), 1.5, emb.dtype)
                pmask = jnp.full((emb.shape[0], 4), int(real), mask.dtype)
                emb = jnp.concatenate([emb[:, :1], prompts, emb[:, 1:]], 1)  # after CLS
                return emb, jnp.concatenate([mask[:, :1], pmask, mask[:, 1:]], 1)
            return next_fun(*args, **kwargs)

        with nn.intercept_methods(interceptor):
            return np.asarray(module.apply({"params": params}, x)["logits"])

    np.testing.assert_allclose(run(real=False), base, atol=ATOL)
    assert calls == {"extend_kv": 2, "extend_inputs": 1}
    assert np.abs(run(real=True) - base).max() > 1e-2


@pytest.mark.parametrize("field", ["hidden_dropout_prob", "attention_probs_dropout_prob"])
def test_dropout_is_active_only_when_not_deterministic(hf_cls, loaded, field):
    _, src = hf_cls
    module, params, _ = load_pretrained(src, **{field: 0.2})
    x = _images(2, seed=8)

    def run(seed):
        out = module.apply(
            {"params": params}, x, deterministic=False, rngs={"dropout": jax.random.key(seed)}
        )
        return np.asarray(out["logits"])

    assert np.abs(run(0) - run(1)).max() > 1e-3
    np.testing.assert_array_equal(run(0), run(0))
    eval_logits = module.apply({"params": params}, x)["logits"]
    np.testing.assert_array_equal(eval_logits, loaded[0].apply({"params": loaded[1]}, x)["logits"])
