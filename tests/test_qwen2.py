"""Qwen2, the family added through the registry alone: parity with transformers (float32, CPU),
export round trip, LoRA exported to PEFT, strict config reading."""

import json
from pathlib import Path

import jax
import numpy as np
import pytest

from adapt import paths
from adapt.convert import hf_qwen2
from adapt.convert.hf import load_pretrained, read_config, save_pretrained
from adapt.convert.hf_config import UnsupportedConfigError
from adapt.methods import base, build
from adapt.models import families
from adapt.peft_format import export_adapter

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")

REPO = Path(__file__).resolve().parents[1]
VOCAB = 97
ARCH = "Qwen2ForCausalLM"


def _hf_config(tied: bool, cls=None, **extra):
    cls = cls or transformers.Qwen2Config
    return cls(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=56,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        rms_norm_eps=1e-6,
        rope_parameters={"rope_type": "default", "rope_theta": 500.0},
        max_position_embeddings=64,
        tie_word_embeddings=tied,
        pad_token_id=0,
        **extra,
    )


@pytest.fixture(scope="module")
def hf_models(tmp_path_factory, randomized_eval):
    """tied -> (eval-mode transformers Qwen2, its saved directory)."""
    cache = {}

    def get(tied: bool):
        if tied not in cache:
            torch.manual_seed(int(tied))
            model = randomized_eval(transformers.Qwen2ForCausalLM(_hf_config(tied)))
            path = tmp_path_factory.mktemp(f"qwen2_{'tied' if tied else 'untied'}")
            model.save_pretrained(path, safe_serialization=True)
            cache[tied] = (model, path)
        return cache[tied]

    return get


def _batch():
    """Left-padded rows, plus one right-padded row (positions come from the mask either way)."""
    rng = np.random.default_rng(0)
    ids = rng.integers(3, VOCAB, size=(4, 9)).astype(np.int32)
    mask = np.ones_like(ids)
    mask[1, :3] = 0
    mask[2, :6] = 0
    mask[3, -2:] = 0
    ids[mask == 0] = 0
    return ids, mask


def _hf_logits(model, ids, mask):
    positions = np.maximum(np.cumsum(mask, -1) - 1, 0)
    with torch.no_grad():
        return model(
            input_ids=torch.tensor(ids, dtype=torch.long),
            attention_mask=torch.tensor(mask, dtype=torch.long),
            position_ids=torch.tensor(positions, dtype=torch.long),
        ).logits.numpy()


def test_reference_is_llama_with_qkv_biases(hf_models):
    """The reference checked on this machine first: transformers' Qwen2 equals its LLaMA with
    biased q/k/v and a zero o_proj bias on the same weights, two implementations agreeing."""
    qwen, _ = hf_models(False)
    llama = transformers.LlamaForCausalLM(_hf_config(False, transformers.LlamaConfig,
                                                     attention_bias=True)).eval()  # fmt: skip
    llama.config._attn_implementation = "eager"
    state = qwen.state_dict()
    with torch.no_grad():
        for name, p in llama.named_parameters():
            p.copy_(state[name] if name in state else torch.zeros_like(p))  # o_proj.bias: 0
    ids, mask = _batch()
    real = mask.astype(bool)
    np.testing.assert_allclose(
        _hf_logits(llama, ids, mask)[real], _hf_logits(qwen, ids, mask)[real], atol=1e-5, rtol=0
    )


@pytest.mark.parametrize("tied", [False, True])
def test_matches_transformers_on_padded_batch(hf_models, tied):
    hf, path = hf_models(tied)
    module, params, config = load_pretrained(path)
    attention = params["model"]["layers_0"]["self_attn"]
    assert {"bias", "kernel"} == set(attention["q_proj"]) == set(attention["v_proj"])
    assert set(attention["o_proj"]) == {"kernel"}  # Qwen2's output projection has no bias
    assert ("lm_head" in params) == (not tied) and config.rope_theta == 500.0
    ids, mask = _batch()
    real = mask.astype(bool)
    ours = np.asarray(module.apply({"params": params}, ids, mask)["logits"])
    np.testing.assert_allclose(ours[real], _hf_logits(hf, ids, mask)[real], atol=1e-5, rtol=0)


def test_export_reloads_in_transformers(hf_models, tmp_path):
    hf, path = hf_models(True)
    module, params, config = load_pretrained(path)
    out = save_pretrained(params, config, tmp_path / "export", architecture=ARCH)
    assert read_config(out)["model_type"] == "qwen2"
    assert hf_qwen2.config_from_hf(read_config(out)) == config
    reloaded = transformers.Qwen2ForCausalLM.from_pretrained(out, attn_implementation="eager")
    ids, mask = _batch()
    real = mask.astype(bool)
    want = _hf_logits(hf, ids, mask)[real]
    np.testing.assert_array_equal(_hf_logits(reloaded.eval(), ids, mask)[real], want)


def test_lora_exports_to_peft_with_the_same_logits(hf_models, tmp_path):
    """LoRA with the family's default targets (from its registry record), non-zero B, exported
    as a PEFT adapter: peft.PeftModel on transformers' Qwen2 computes our logits."""
    hf, path = hf_models(False)
    module, params, config = load_pretrained(path)
    method = build("lora", "qwen2", rank=4, alpha=8)
    ids, mask = np.ones((2, 7), np.int32) * 5, np.ones((2, 7), np.int32)
    ids[0] = np.arange(3, 10)
    mask[1, 5:] = 0  # right padding: default positions are the mask's
    extra = paths.flatten(base.init(module, params, [method], jax.random.key(1), ids, mask))
    rng = np.random.default_rng(0)
    extra = {p: rng.normal(0, 0.3, v.shape).astype(np.float32) for p, v in extra.items()}
    assert sorted({p.rsplit("/", 2)[-2] for p in extra}) == ["q_proj", "v_proj"]
    trained = paths.unflatten({**paths.flatten(params), **extra})
    out = export_adapter(trained, [method], config, ARCH, tmp_path / "adapter")
    ours = np.asarray(base.apply(module, trained, [method], ids, mask)["logits"])

    peft_model = peft.PeftModel.from_pretrained(hf, out).eval()
    with torch.no_grad():
        theirs = peft_model(
            input_ids=torch.tensor(ids, dtype=torch.long),
            attention_mask=torch.tensor(mask, dtype=torch.long),
        ).logits.numpy()
    real = mask.astype(bool)
    np.testing.assert_allclose(ours[real], theirs[real], atol=1e-5, rtol=0)
    assert not np.allclose(ours, np.asarray(module.apply({"params": params}, ids, mask)["logits"]))


@pytest.mark.parametrize(
    "extra,named",
    [
        ({"use_sliding_window": True, "sliding_window": 4}, "use_sliding_window=True"),
        ({"attention_dropout": 0.1}, "attention_dropout=0.1"),
        ({"layer_types": ["full_attention", "sliding_attention"]}, "layer_types="),
        ({"rope_parameters": {"rope_type": "yarn", "factor": 2.0}}, "rope_parameters="),
    ],
)
def test_unsupported_config_fields_are_named(extra, named):
    hf = {**_hf_config(False).to_dict(), **extra}
    with pytest.raises(UnsupportedConfigError, match=named.replace("[", r"\[")):
        hf_qwen2.config_from_hf(hf)


def test_a_released_style_config_reads():
    """Qwen2.5-0.5B's config.json shape (transformers 4 style: top-level rope_theta, a
    sliding_window value that is unused while use_sliding_window is off)."""
    hf = {"architectures": [ARCH], "attention_dropout": 0.0, "bos_token_id": 151643,
          "eos_token_id": 151643, "hidden_act": "silu", "hidden_size": 896,
          "initializer_range": 0.02, "intermediate_size": 4864, "max_position_embeddings": 32768,
          "max_window_layers": 24, "model_type": "qwen2", "num_attention_heads": 14,
          "num_hidden_layers": 24, "num_key_value_heads": 2, "rms_norm_eps": 1e-06,
          "rope_theta": 1000000.0, "sliding_window": 32768, "tie_word_embeddings": True,
          "torch_dtype": "bfloat16", "transformers_version": "4.40.1", "use_cache": True,
          "use_sliding_window": False, "vocab_size": 151936}  # fmt: skip
    config = hf_qwen2.config_from_hf(hf)
    assert (config.head_dim, config.num_key_value_heads, config.rope_theta) == (64, 2, 1e6)
    assert families.get("qwen2").converter == hf_qwen2.__name__


@pytest.mark.slow
def test_lora_smoke_run_through_the_harness(tmp_path, randomized_eval):
    """configs/llm/stories_lora.py's smoke run with a tiny random Qwen2 checkpoint (the vendored
    SentencePiece vocabulary's 512 tokens) in place of stories260K: the registry alone takes it
    through data, LoRA with the family's default targets, training and evaluation."""
    from adapt.harness.command_line import load_config_file
    from adapt.harness.loop import run

    torch.manual_seed(0)
    hf = randomized_eval(transformers.Qwen2ForCausalLM(
        transformers.Qwen2Config(vocab_size=512, hidden_size=32, intermediate_size=56,
                                 num_hidden_layers=2, num_attention_heads=4,
                                 num_key_value_heads=2, max_position_embeddings=256,
                                 tie_word_embeddings=True)
    ))  # fmt: skip
    hf.save_pretrained(tmp_path / "qwen2", safe_serialization=True)
    config = load_config_file(str(REPO / "configs/llm/stories_lora.py"), "smoke")
    config.model = {"kind": "hf", "path": str(tmp_path / "qwen2")}
    config.data.source = str(REPO / config.data.source)
    config.data.tokenizer = str(REPO / config.data.tokenizer)
    results = run(config, tmp_path / "w")
    assert results["steps"] == 4 and results["trainable_params"] > 0
    assert np.isfinite(results["eval"]["loss"]) and results["eval"]["perplexity"] > 1
    losses = [json.loads(line) for line in (tmp_path / "w" / "metrics.jsonl").open()]
    assert [m["step"] for m in losses if m["split"] == "train"] == [2, 4]
    # rank-8 LoRA on the family's default targets only: q_proj (32 -> 32) and v_proj (32 -> 16,
    # two KV heads) of both layers
    assert results["trainable_params"] == 2 * (8 * (32 + 32) + 8 * (32 + 16))
