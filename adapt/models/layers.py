"""Pieces every model shares: attention arithmetic, activations, mask helpers.

Projections are always plain ``nn.Dense`` submodules named as in Hugging Face, so methods (LoRA,
IA3, QLoRA) attach by module path through ``nn.intercept_methods`` and model code stays
method-agnostic. The two explicit extension points every model offers are documented in
:mod:`adapt.models` and are no-ops here.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

Array = jax.Array


def flat_dot_general(
    lhs: Array,
    rhs: Array,
    dimension_numbers,
    precision=None,
    preferred_element_type=None,
    **kwargs,
) -> Array:
    """``lax.dot_general`` for ``nn.Dense(dot_general=...)``: (..., in) inputs flattened to 2-D.

    Same result as Flax's default. Why: differentiating a Dense applied to (B, T, in) gives the
    kernel gradient as a contraction over two dimensions, which XLA:CPU lowers by copying the
    (B*T, out) output gradient into a transposed layout first; from a 2-D input it is one plain
    matmul. In a microbenchmark of MiniLM's 384 x 1536 layer (batch 32 x 128) the Dense backward
    went from 113 ms to 72 ms (PyTorch: 74 ms); in benchmarks/vs_pytorch.py the full fine-tuning
    step gained about 10%. Other contractions are passed through unchanged.
    """
    (lhs_contract, rhs_contract), (lhs_batch, rhs_batch) = dimension_numbers
    plain = tuple(lhs_contract) == (lhs.ndim - 1,) and not lhs_batch and not rhs_batch
    if not plain or lhs.ndim <= 2:
        return jax.lax.dot_general(
            lhs,
            rhs,
            dimension_numbers,
            precision=precision,
            preferred_element_type=preferred_element_type,
            **kwargs,
        )
    out = jax.lax.dot_general(
        lhs.reshape(-1, lhs.shape[-1]),
        rhs,
        (((1,), tuple(rhs_contract)), ((), ())),
        precision=precision,
        preferred_element_type=preferred_element_type,
        **kwargs,
    )
    return out.reshape(*lhs.shape[:-1], *out.shape[1:])


def _gelu_exact(x: Array) -> Array:
    return jax.nn.gelu(x, approximate=False)


def _gelu_tanh(x: Array) -> Array:
    return jax.nn.gelu(x, approximate=True)


ACTIVATIONS: dict[str, Callable[[Array], Array]] = {
    "gelu": _gelu_exact,
    "gelu_new": _gelu_tanh,
    "gelu_pytorch_tanh": _gelu_tanh,
    "relu": jax.nn.relu,
    "silu": jax.nn.silu,
    "swish": jax.nn.silu,
    "tanh": jnp.tanh,
}


def activation(name: str) -> Callable[[Array], Array]:
    try:
        return ACTIVATIONS[name]
    except KeyError:
        raise ValueError(
            f"activation {name!r} is not implemented (have: {sorted(ACTIVATIONS)})"
        ) from None


ATTENTION_IMPLS = ("einsum", "jax")


def check_attention(implementation: str, dropout_rate: float, deterministic: bool) -> bool:
    """Whether attention-weight dropout applies (training with a positive rate); with
    ``attention_impl="jax"`` that is an error that says what to set instead."""
    active = not deterministic and dropout_rate > 0
    if active and implementation == "jax":
        raise ValueError(
            f"attention_impl='jax' (jax.nn.dot_product_attention) has no dropout of the "
            f"attention weights, and this model trains with attention_probs_dropout_prob="
            f"{dropout_rate}: set model.config.attention_probs_dropout_prob=0.0 too, or keep "
            "attention_impl='einsum'"
        )
    return active


def dot_product_attention(
    query: Array,
    key: Array,
    value: Array,
    mask: Array | None,
    *,
    dtype=jnp.float32,
    dropout: Callable[[Array], Array] | None = None,
    implementation: str = "einsum",
) -> Array:
    """Softmax attention. ``query``: (B, T, H, D); ``key``/``value``: (B, S, Hkv, D) with
    ``H % Hkv == 0`` (grouped-query attention repeats kv heads); ``mask``: bool broadcastable to
    (B, H, T, S), True = may attend. Softmax runs in float32 whatever the compute dtype.
    ``dropout``, if given, is applied to the attention weights (BERT/ViT's
    ``attention_probs_dropout_prob``), e.g. ``lambda w: nn.Dropout(rate)(w, deterministic)``.

    ``implementation`` (a model config's ``attention_impl``): ``"einsum"``, the arithmetic above
    written out (what every parity test checks); ``"jax"``, ``jax.nn.dot_product_attention``,
    which XLA fuses and which runs cuDNN's flash attention on GPUs where it applies (equal to
    ``"einsum"`` within float32 rounding: tests/test_attention_impl.py). It has no dropout of
    the attention weights: the models ask for it only where that dropout is off."""
    if implementation not in ATTENTION_IMPLS:
        raise ValueError(f"attention_impl must be one of {ATTENTION_IMPLS}, got {implementation!r}")
    if implementation == "jax":
        if dropout is not None:
            raise ValueError("jax.nn.dot_product_attention has no attention-weight dropout")
        return jax.nn.dot_product_attention(query, key, value, mask=mask).astype(query.dtype)
    heads, kv_heads = query.shape[2], key.shape[2]
    if heads != kv_heads:
        if heads % kv_heads:
            raise ValueError(f"{heads} query heads do not group over {kv_heads} kv heads")
        key = jnp.repeat(key, heads // kv_heads, axis=2)
        value = jnp.repeat(value, heads // kv_heads, axis=2)
    depth = query.shape[-1]
    scores = jnp.einsum("bthd,bshd->bhts", query, key).astype(jnp.float32) / jnp.sqrt(
        jnp.asarray(depth, jnp.float32)
    )
    if mask is not None:
        scores = jnp.where(mask, scores, jnp.finfo(jnp.float32).min)
    weights = jax.nn.softmax(scores, axis=-1).astype(dtype)
    if dropout is not None:
        weights = dropout(weights)
    return jnp.einsum("bhts,bshd->bthd", weights, value)


def padding_mask(attention_mask: Array) -> Array:
    """(B, S) 1/0 key-padding mask -> bool (B, 1, 1, S)."""
    return attention_mask.astype(bool)[:, None, None, :]


def causal_mask(query_len: int, key_len: int, offset: Array | int = 0) -> Array:
    """bool (1, 1, T, S): query t (at absolute position offset + t) sees keys <= its position."""
    q = jnp.arange(query_len)[:, None] + offset
    k = jnp.arange(key_len)[None, :]
    return (k <= q)[None, None]
