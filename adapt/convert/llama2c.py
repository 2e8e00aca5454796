"""Karpathy's llama2.c checkpoints (legacy "version 0" ``.bin``); their SentencePiece tokenizers
are read by :class:`adapt.data.tokenizers.SentencePieceTokenizer` (re-exported here).

The legacy export is a header of 7 little-endian int32 (``dim, hidden_dim, n_layers, n_heads,
n_kv_heads, vocab_size, seq_len``; a negative ``vocab_size`` means an untied classifier follows)
and then float32 arrays, each stacked over layers, matrices in PyTorch ``(out, in)`` layout::

    token_embedding (V, dim); rms_att (L, dim); wq (L, dim, dim); wk (L, kv_dim, dim);
    wv (L, kv_dim, dim); wo (L, dim, dim); rms_ffn (L, dim); w1 (L, hidden, dim);
    w2 (L, dim, hidden); w3 (L, hidden, dim); rms_final (dim);
    freq_cis_real (seq_len, head/2); freq_cis_imag (seq_len, head/2); [wcls (V, dim)]

llama2.c rotates adjacent pairs ``(2j, 2j+1)``; our model (like HF) rotates ``(j, j + head/2)``.
Permuting the rows of ``wq``/``wk`` within each head (evens first, then odds: the permutation HF's
``convert_llama_weights_to_hf.py`` applies) makes the two identical, so one RoPE serves both. The
stored RoPE tables are checked against ``rope_theta`` rather than trusted silently.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from adapt import paths
from adapt.data.tokenizers import SentencePieceTokenizer
from adapt.errors import AdaptError
from adapt.models.families import Loaded, ModelOptionError
from adapt.models.llama import LlamaConfig, LlamaForCausalLM

_HEADER_INTS = 7
_V1_MAGIC = 0x616B3432  # "ak42": the versioned llama2.c export, a different layout


class Llama2cFormatError(AdaptError, ValueError):
    """The file is not a legacy llama2.c checkpoint, or is truncated/corrupt."""


def read_llama2c(path: str | os.PathLike) -> tuple[dict[str, int], dict[str, np.ndarray]]:
    """The header and the raw float32 arrays, under llama2.c's names, unpermuted."""
    path = Path(path)
    raw = path.read_bytes()
    if len(raw) < 4 * _HEADER_INTS:
        raise Llama2cFormatError(f"{path}: {len(raw)} bytes is too short for a llama2.c header")
    head = np.frombuffer(raw, "<i4", _HEADER_INTS)
    if int(head[0]) == _V1_MAGIC:
        raise Llama2cFormatError(
            f"{path}: versioned llama2.c export (magic 'ak42'); only the legacy v0 format is read"
        )
    dim, hidden, n_layers, n_heads, n_kv, vocab, seq_len = (int(v) for v in head)
    header = dict(
        dim=dim,
        hidden_dim=hidden,
        n_layers=n_layers,
        n_heads=n_heads,
        n_kv_heads=n_kv,
        vocab_size=abs(vocab),
        seq_len=seq_len,
        shared_classifier=int(vocab > 0),
    )
    if min(dim, hidden, n_layers, n_heads, n_kv, seq_len) <= 0 or vocab == 0 or dim % n_heads:
        raise Llama2cFormatError(f"{path}: implausible header {header}")
    vocab, head_size = abs(vocab), dim // n_heads
    kv_dim = n_kv * head_size
    shapes = {
        "token_embedding": (vocab, dim),
        "rms_att": (n_layers, dim),
        "wq": (n_layers, dim, dim),
        "wk": (n_layers, kv_dim, dim),
        "wv": (n_layers, kv_dim, dim),
        "wo": (n_layers, dim, dim),
        "rms_ffn": (n_layers, dim),
        "w1": (n_layers, hidden, dim),
        "w2": (n_layers, dim, hidden),
        "w3": (n_layers, hidden, dim),
        "rms_final": (dim,),
        "freq_cis_real": (seq_len, head_size // 2),
        "freq_cis_imag": (seq_len, head_size // 2),
    }
    if not header["shared_classifier"]:
        shapes["wcls"] = (vocab, dim)
    need = 4 * (_HEADER_INTS + sum(int(np.prod(s)) for s in shapes.values()))
    if len(raw) != need:
        raise Llama2cFormatError(
            f"{path}: header {header} implies {need} bytes, the file has {len(raw)}; "
            "truncated, or not a legacy llama2.c checkpoint"
        )
    arrays, offset = {}, 4 * _HEADER_INTS
    for name, shape in shapes.items():
        count = int(np.prod(shape))
        arrays[name] = np.frombuffer(raw, "<f4", count, offset).reshape(shape).astype(np.float32)
        offset += 4 * count
    return header, arrays


def interleaved_to_half(w: np.ndarray, n_heads: int) -> np.ndarray:
    """Reorder the output rows of a q/k projection ``(n_heads * head, in)`` from adjacent-pair
    RoPE layout to ``rotate_half`` layout (per head: even rows, then odd rows)."""
    rows, cols = w.shape
    return (
        w.reshape(n_heads, rows // n_heads // 2, 2, cols).transpose(0, 2, 1, 3).reshape(rows, cols)
    )


def _check_rope(header: dict[str, int], arrays: dict[str, np.ndarray], theta: float) -> None:
    half = arrays["freq_cis_real"].shape[1]
    head_size = 2 * half
    inv_freq = 1.0 / theta ** (np.arange(0, head_size, 2, dtype=np.float64) / head_size)
    angles = np.arange(header["seq_len"], dtype=np.float64)[:, None] * inv_freq
    err = max(
        np.abs(np.cos(angles) - arrays["freq_cis_real"]).max(),
        np.abs(np.sin(angles) - arrays["freq_cis_imag"]).max(),
    )
    if err > 1e-3:
        raise Llama2cFormatError(
            f"the checkpoint's stored RoPE tables do not match rope_theta={theta} "
            f"(max abs difference {err:.3g}); pass the theta it was trained with"
        )


def load_llama2c(
    path: str | os.PathLike,
    *,
    rope_theta: float = 10000.0,
    rms_norm_eps: float = 1e-5,
    dtype: Any = jnp.float32,
    param_dtype: Any = jnp.float32,
) -> tuple[LlamaForCausalLM, dict, LlamaConfig]:
    """Read a legacy llama2.c ``.bin`` into ``(module, params, config)`` like ``load_pretrained``.

    ``rms_norm_eps`` is not stored in the file; llama2.c's ``run.c`` hard-codes 1e-5."""
    header, a = read_llama2c(path)
    _check_rope(header, a, rope_theta)
    config = LlamaConfig(
        vocab_size=header["vocab_size"],
        hidden_size=header["dim"],
        intermediate_size=header["hidden_dim"],
        num_hidden_layers=header["n_layers"],
        num_attention_heads=header["n_heads"],
        num_key_value_heads=header["n_kv_heads"],
        rms_norm_eps=rms_norm_eps,
        rope_theta=rope_theta,
        max_position_embeddings=header["seq_len"],
        tie_word_embeddings=bool(header["shared_classifier"]),
        bos_token_id=1,
        eos_token_id=2,
        dtype=dtype,
        param_dtype=param_dtype,
    )
    flat = {
        "model/embed_tokens/embedding": a["token_embedding"],
        "model/norm/scale": a["rms_final"],
    }
    for i in range(config.num_hidden_layers):
        p = f"model/layers_{i}/"
        flat.update(
            {
                p + "input_layernorm/scale": a["rms_att"][i],
                p + "post_attention_layernorm/scale": a["rms_ffn"][i],
                p + "self_attn/q_proj/kernel": interleaved_to_half(a["wq"][i], header["n_heads"]).T,
                p + "self_attn/k_proj/kernel": interleaved_to_half(
                    a["wk"][i], header["n_kv_heads"]
                ).T,
                p + "self_attn/v_proj/kernel": a["wv"][i].T,
                p + "self_attn/o_proj/kernel": a["wo"][i].T,
                p + "mlp/gate_proj/kernel": a["w1"][i].T,
                p + "mlp/down_proj/kernel": a["w2"][i].T,
                p + "mlp/up_proj/kernel": a["w3"][i].T,
            }
        )
    if not config.tie_word_embeddings:
        flat["lm_head/kernel"] = a["wcls"].T
    params = paths.unflatten(
        {k: jnp.asarray(np.ascontiguousarray(v), dtype=param_dtype) for k, v in flat.items()}
    )
    return LlamaForCausalLM(config), params, config


def load_for_run(
    path: str | os.PathLike,
    *,
    num_labels: int | None,
    pooling: str | None,
    overrides: dict[str, Any],
    rng: jax.Array,
) -> Loaded:
    """``model.kind="llama2c"`` (the family registry's loader)."""
    if pooling is not None:
        raise ModelOptionError("model.pooling applies to classifiers; a llama2.c model has none")
    module, params, config = load_llama2c(path, **overrides)
    return Loaded(module, params, {}, config, "LlamaForCausalLM")


__all__ = [
    "Llama2cFormatError",
    "SentencePieceTokenizer",
    "interleaved_to_half",
    "load_for_run",
    "load_llama2c",
    "read_llama2c",
]
