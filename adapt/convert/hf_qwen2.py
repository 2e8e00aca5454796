"""Hugging Face Qwen2 (``model_type: "qwen2"``: Qwen2, Qwen2.5) <-> :mod:`adapt.models.qwen2`.

The weights are named and laid out as LLaMA's (:func:`adapt.convert.hf_llama.table`, whose bias
rules now meet the q/k/v biases). The config is read as strictly as LLaMA's: RoPE scaling,
attention dropout and sliding-window attention change the computation and are refused by name.
``sliding_window`` and ``max_window_layers`` only matter when ``use_sliding_window`` is on, so
with it off (every released checkpoint) they are accepted and not used, as transformers does.
"""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp

from adapt.convert.hf import Family
from adapt.convert.hf_config import UnsupportedConfigError, as_dict, check_fields
from adapt.convert.hf_llama import decoder_config, default_rope, table
from adapt.models.qwen2 import Qwen2Config, Qwen2ForCausalLM, Qwen2Model

ARCHITECTURES = ("Qwen2ForCausalLM", "Qwen2Model")

# HF field -> our field, copied as is.
_DIRECT = (
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "head_dim",
    "hidden_act",
    "rms_norm_eps",
    "max_position_embeddings",
    "tie_word_embeddings",
    "initializer_range",
    "bos_token_id",
    "eos_token_id",
    "pad_token_id",
)


def _full_attention(layer_types: Any) -> bool:
    return layer_types is None or all(t == "full_attention" for t in layer_types)


def config_from_hf(hf: Any, **overrides: Any) -> Qwen2Config:
    """Strictly map a Qwen2 ``config.json`` dict (or ``transformers.Qwen2Config``) to ours."""
    hf = as_dict(hf)
    check_fields(
        hf,
        "qwen2",
        implemented=(*_DIRECT, "rope_theta", "sliding_window", "max_window_layers"),
        required={"use_sliding_window": False, "attention_dropout": 0.0, "rope_scaling": None},
        allowed={
            "hidden_act": {"silu"},
            "layer_types": _full_attention,
            "rope_parameters": default_rope,
        },
    )
    return decoder_config(Qwen2Config, hf, _DIRECT, "qwen2", overrides)


def config_to_hf(config: Qwen2Config, architecture: str) -> dict:
    """A transformers-5 ``config.json`` (``rope_parameters`` holds the theta)."""
    out = {f: getattr(config, f) for f in _DIRECT}
    out.update(
        model_type="qwen2",
        architectures=[architecture],
        rope_parameters={"rope_type": "default", "rope_theta": config.rope_theta},
        use_sliding_window=False,
        attention_dropout=0.0,
        dtype=jnp.dtype(config.param_dtype).name,
    )
    return out


def build(config: Qwen2Config, architecture: str):
    if architecture == "Qwen2ForCausalLM":
        return Qwen2ForCausalLM(config)
    if architecture == "Qwen2Model":
        return Qwen2Model(config)
    raise UnsupportedConfigError(
        f"qwen2 architecture {architecture!r} (supported: {ARCHITECTURES})"
    )


def dummy_inputs(config: Qwen2Config, architecture: str) -> tuple:
    return (jnp.zeros((1, 1), jnp.int32),)


FAMILY = Family(
    name="qwen2",
    model_types=("qwen2",),
    architectures=ARCHITECTURES,
    config_from_hf=config_from_hf,
    config_to_hf=config_to_hf,
    build=build,
    dummy_inputs=dummy_inputs,
    table=table,
    ignore=(r".*rotary_emb\.inv_freq", r"lm_head\.weight"),  # as LLaMA's (see hf_llama.FAMILY)
)
