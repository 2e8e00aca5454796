"""Hugging Face LLaMA (``model_type: "llama"``) <-> :mod:`adapt.models.llama`.

The config is read strictly: RoPE variants (linear/dynamic/yarn/llama3 scaling), tensor-parallel
``pretraining_tp`` slicing and attention dropout change the computation, so a config asking for
them is refused by name rather than loaded into a model that would compute something else.
transformers 5 writes RoPE settings as ``rope_parameters = {"rope_type": ..., "rope_theta": ...}``;
older configs use ``rope_theta`` plus ``rope_scaling``. Both are read; only the default rope type
is accepted.

Weights: every ``nn.Linear`` weight is transposed into a Flax kernel; HF checkpoints already store
q/k projections in the ``rotate_half`` RoPE layout our model uses, so nothing is permuted. With
tied embeddings our params hold no ``lm_head`` and the export writes none (transformers re-ties);
a tied checkpoint that nevertheless stores ``lm_head.weight`` is accepted and the copy ignored,
as transformers does.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import jax.numpy as jnp

from adapt.convert.hf import Family
from adapt.convert.hf_config import UnsupportedConfigError, as_dict, check_fields
from adapt.convert.mapping import IDENTITY, TRANSPOSE, Rule
from adapt.models.llama import LlamaConfig, LlamaForCausalLM, LlamaModel

ARCHITECTURES = ("LlamaForCausalLM", "LlamaModel")

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
    "attention_bias",
    "mlp_bias",
    "initializer_range",
    "bos_token_id",
    "eos_token_id",
    "pad_token_id",
)


def default_rope(value: Any) -> bool:
    """Whether ``rope_parameters`` asks for plain RoPE (no scaling): all adapt implements."""
    return (
        value is None
        or isinstance(value, dict)
        and value.get("rope_type", value.get("type", "default")) == "default"
        and set(value) <= {"rope_type", "type", "rope_theta"}
    )


def decoder_config(cls: type, hf: dict, direct: Sequence[str], family: str, overrides: dict) -> Any:
    """``cls`` (LlamaConfig or a variant's subclass) from a checked ``config.json`` dict: the
    ``direct`` fields copied, the RoPE theta read, ``overrides`` applied; an override that is
    not a field of ``cls`` is a TypeError naming it."""
    kwargs = {k: hf[k] for k in direct if k in hf}
    theta = rope_theta_of(hf, family)
    if theta is not None:
        kwargs["rope_theta"] = theta
    kwargs.update(overrides)
    unknown = sorted(set(kwargs) - {f.name for f in dataclasses.fields(cls)})
    if unknown:
        raise TypeError(f"{cls.__name__} has no field(s) {unknown}")
    return cls(**kwargs)


def rope_theta_of(hf: dict, family: str) -> float | None:
    """The RoPE theta of a config that passed :func:`default_rope` (transformers 5's
    ``rope_parameters.rope_theta`` or the older top-level ``rope_theta``; None: neither)."""
    rope = hf.get("rope_parameters") or {}
    if "rope_theta" in rope and "rope_theta" in hf and rope["rope_theta"] != hf["rope_theta"]:
        raise UnsupportedConfigError(
            f"{family} config gives two RoPE thetas: rope_theta={hf['rope_theta']!r} and "
            f"rope_parameters.rope_theta={rope['rope_theta']!r}"
        )
    theta = rope.get("rope_theta", hf.get("rope_theta"))
    return None if theta is None else float(theta)


def config_from_hf(hf: Any, **overrides: Any) -> LlamaConfig:
    """Strictly map a LLaMA ``config.json`` dict (or ``transformers.LlamaConfig``) to ours."""
    hf = as_dict(hf)
    check_fields(
        hf,
        "llama",
        implemented=(*_DIRECT, "rope_theta"),
        required={"pretraining_tp": 1, "attention_dropout": 0.0, "rope_scaling": None},
        allowed={"hidden_act": {"silu"}, "rope_parameters": default_rope},
    )
    return decoder_config(LlamaConfig, hf, _DIRECT, "llama", overrides)


def config_to_hf(config: LlamaConfig, architecture: str) -> dict:
    """A transformers-5 ``config.json`` (``rope_parameters`` holds the theta)."""
    out = {f: getattr(config, f) for f in _DIRECT}
    out.update(
        model_type="llama",
        architectures=[architecture],
        rope_parameters={"rope_type": "default", "rope_theta": config.rope_theta},
        hidden_act=config.hidden_act,
        pretraining_tp=1,
        attention_dropout=0.0,
        dtype=jnp.dtype(config.param_dtype).name,
    )
    return out


def build(config: LlamaConfig, architecture: str):
    if architecture == "LlamaForCausalLM":
        return LlamaForCausalLM(config)
    if architecture == "LlamaModel":
        return LlamaModel(config)
    raise UnsupportedConfigError(
        f"llama architecture {architecture!r} (supported: {ARCHITECTURES})"
    )


def dummy_inputs(config: LlamaConfig, architecture: str) -> tuple:
    return (jnp.zeros((1, 1), jnp.int32),)


def table(config: LlamaConfig, architecture: str, hf_keys: Sequence[str] | None) -> list[Rule]:
    """Our ``LlamaForCausalLM`` lives under ``model/`` like HF's; our bare ``LlamaModel`` has no
    prefix, like HF's. On import either checkpoint kind feeds either architecture (the HF prefix
    is taken from the checkpoint's keys). Variants with LLaMA's layout (Qwen2) share the table:
    bias rules match only the projections that have biases."""
    causal = architecture.endswith("ForCausalLM")
    ours = "model/" if causal else ""
    if hf_keys is None:
        hf = "model." if causal else ""
    else:
        hf = "model." if any(k.startswith("model.") for k in hf_keys) else ""
    layer, hf_layer = f"{ours}layers_{{i}}/", f"{hf}layers.{{i}}."
    rules = [
        Rule(f"{ours}embed_tokens/embedding", f"{hf}embed_tokens.weight", IDENTITY),
        Rule(f"{ours}norm/scale", f"{hf}norm.weight", IDENTITY),
        Rule(f"{layer}input_layernorm/scale", f"{hf_layer}input_layernorm.weight", IDENTITY),
        Rule(
            f"{layer}post_attention_layernorm/scale",
            f"{hf_layer}post_attention_layernorm.weight",
            IDENTITY,
        ),
    ]
    for proj in ("q_proj", "k_proj", "v_proj", "o_proj"):
        rules.append(
            Rule(f"{layer}self_attn/{proj}/kernel", f"{hf_layer}self_attn.{proj}.weight", TRANSPOSE)
        )
        rules.append(
            Rule(f"{layer}self_attn/{proj}/bias", f"{hf_layer}self_attn.{proj}.bias", IDENTITY)
        )
    for proj in ("gate_proj", "up_proj", "down_proj"):
        rules.append(Rule(f"{layer}mlp/{proj}/kernel", f"{hf_layer}mlp.{proj}.weight", TRANSPOSE))
        rules.append(Rule(f"{layer}mlp/{proj}/bias", f"{hf_layer}mlp.{proj}.bias", IDENTITY))
    rules.append(Rule("lm_head/kernel", "lm_head.weight", TRANSPOSE))
    return rules


FAMILY = Family(
    name="llama",
    model_types=("llama",),
    architectures=ARCHITECTURES,
    config_from_hf=config_from_hf,
    config_to_hf=config_to_hf,
    build=build,
    dummy_inputs=dummy_inputs,
    table=table,
    # Non-persistent RoPE buffers some old checkpoints carry; a tied model's redundant lm_head
    # copy (an untied model's lm_head.weight is matched by the table before this is consulted).
    ignore=(r".*rotary_emb\.inv_freq", r"lm_head\.weight"),
)
