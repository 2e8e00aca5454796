"""LLaMA (decoder-only transformer: RMSNorm, RoPE, grouped-query attention, SwiGLU) in Flax linen.

Parameter paths mirror Hugging Face's ``LlamaForCausalLM`` module paths
(``model.layers.0.self_attn.q_proj.weight`` <-> ``model/layers_0/self_attn/q_proj/kernel``), so
conversion is a name table and methods attach to projections by path regex.

Two things differ from a plain encoder and are worth knowing:

- **Positions come from the attention mask** (``cumsum(mask) - 1``), not from ``arange``. A
  left-padded batch therefore gives each row the positions it would have alone, which is what
  batched generation needs. RoPE uses Hugging Face's ``rotate_half`` layout (the layout HF
  checkpoints store q/k projections in; llama2.c's adjacent-pair layout is permuted on import).
- **A functional KV cache** for incremental decoding. :func:`init_cache` preallocates
  ``(B, max_length, Hkv, D)`` keys/values per layer plus a slot mask and a write index; pass it as
  ``cache=`` and take the updated one from ``outputs["cache"]``. Shapes never change, so one
  ``jax.jit`` serves every decode step. Keys are cached after RoPE. Slot ``s`` is visible to a
  query in slot ``t`` if ``s <= t`` and the slot holds a real token, so a left-padded prompt can be
  prefilled in one call and decoding continues one token (or a chunk) at a time. Writing past
  ``max_length`` is not detected under ``jit`` (``dynamic_update_slice`` clamps): size the cache
  for prompt + new tokens.

Two attributes serve training at scale and change no value:

- ``LlamaForCausalLM(config, remat=...)`` checkpoints every decoder layer (``nn.remat`` with a
  policy of :data:`adapt.remat.POLICIES`; ``None``, the default, takes the policy of the
  Trainer's :func:`adapt.remat.scope`, i.e. ``Trainer(remat=...)``). It is a module attribute,
  not a :class:`LlamaConfig` field, because the config mirrors Hugging Face's exactly.
- Activations carry logical axis names (``("batch", "length", "embed")`` at the layer
  boundaries, ``"mlp"`` on the SwiGLU product, ``"vocab"`` on the logits) through
  ``nn.with_logical_constraint``: no-ops unless a step is traced inside
  :func:`adapt.sharding.activation_sharding`, which pins them to the mesh (MaxText's scheme).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from adapt import remat as remat_lib
from adapt.models.affine import Dense
from adapt.models.layers import ATTENTION_IMPLS, activation, dot_product_attention

Array = jax.Array
Cache = dict[str, Any]
RESIDUAL = ("batch", "length", "embed")  # logical axes of the residual stream (B, T, hidden)


def _constrain(x: Array, names: tuple[str, ...]) -> Array:
    """Pin ``x`` to the active logical-axis rules (a no-op outside a rules context)."""
    return nn.with_logical_constraint(x, names)


@dataclasses.dataclass(frozen=True)
class LlamaConfig:
    """Field names follow ``transformers.LlamaConfig``. ``num_key_value_heads`` and ``head_dim``
    default (``None``) to ``num_attention_heads`` and ``hidden_size // num_attention_heads``;
    they are resolved in ``__post_init__`` so code can read them as ints."""

    vocab_size: int = 32000
    hidden_size: int = 4096
    intermediate_size: int = 11008
    num_hidden_layers: int = 32
    num_attention_heads: int = 32
    num_key_value_heads: int | None = None
    head_dim: int | None = None
    hidden_act: str = "silu"
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    max_position_embeddings: int = 2048
    tie_word_embeddings: bool = False
    attention_bias: bool = False
    mlp_bias: bool = False
    initializer_range: float = 0.02
    bos_token_id: int | None = 1
    eos_token_id: int | None = 2
    pad_token_id: int | None = None
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    # "einsum": adapt's written-out softmax attention; "jax": jax.nn.dot_product_attention (XLA's
    # fused kernel, cuDNN flash attention on GPU), equal within float32 rounding. Not exported.
    attention_impl: str = "einsum"

    def __post_init__(self):
        if self.attention_impl not in ATTENTION_IMPLS:
            raise ValueError(
                f"attention_impl must be one of {ATTENTION_IMPLS}, got {self.attention_impl!r}"
            )
        if self.num_key_value_heads is None:
            object.__setattr__(self, "num_key_value_heads", self.num_attention_heads)
        if self.head_dim is None:
            object.__setattr__(self, "head_dim", self.hidden_size // self.num_attention_heads)
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(
                f"num_attention_heads={self.num_attention_heads} is not a multiple of "
                f"num_key_value_heads={self.num_key_value_heads}"
            )
        if self.head_dim % 2:
            raise ValueError(f"head_dim={self.head_dim} must be even for RoPE")

    def projection_bias(self, name: str) -> bool:
        """Whether projection ``name`` (``q_proj`` ... ``down_proj``) has a bias: the attention
        ones follow ``attention_bias``, the MLP ones ``mlp_bias``. A variant with another layout
        (Qwen2: q/k/v only) overrides this in its config class and reuses the model unchanged."""
        return self.mlp_bias if name in _MLP_PROJECTIONS else self.attention_bias


_MLP_PROJECTIONS = ("gate_proj", "up_proj", "down_proj")


def init_cache(config: LlamaConfig, batch_size: int, max_length: int, dtype: Any = None) -> Cache:
    """An empty KV cache: ``{"index": (), "mask": (B, L) bool, "layers": ({"key", "value"}, ...)}``.

    ``index`` is the next slot to write (shared by the batch); ``mask`` marks slots holding real
    tokens (padding written by a left-padded prefill stays False)."""
    dtype = config.dtype if dtype is None else dtype
    shape = (batch_size, max_length, config.num_key_value_heads, config.head_dim)
    return {
        "index": jnp.zeros((), jnp.int32),
        "mask": jnp.zeros((batch_size, max_length), bool),
        "layers": tuple(
            {"key": jnp.zeros(shape, dtype), "value": jnp.zeros(shape, dtype)}
            for _ in range(config.num_hidden_layers)
        ),
    }


def rope_cos_sin(positions: Array, head_dim: int, theta: float) -> tuple[Array, Array]:
    """float32 ``(B, T, head_dim)`` cos/sin tables, computed like HF (``inv_freq`` in float32,
    frequencies repeated for the two halves)."""
    inv_freq = 1.0 / (theta ** (jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim))
    freqs = positions.astype(jnp.float32)[..., None] * inv_freq
    emb = jnp.concatenate([freqs, freqs], axis=-1)
    return jnp.cos(emb), jnp.sin(emb)


def apply_rope(x: Array, cos: Array, sin: Array) -> Array:
    """Rotate ``x`` (B, T, H, D) in the ``rotate_half`` layout: dim ``i`` pairs with ``i + D/2``.
    Done in float32 so bfloat16 models do not lose precision in the angles."""
    xf = x.astype(jnp.float32)
    half = x.shape[-1] // 2
    rotated = jnp.concatenate([-xf[..., half:], xf[..., :half]], axis=-1)
    out = xf * cos[:, :, None, :] + rotated * sin[:, :, None, :]
    return out.astype(x.dtype)


class LlamaRMSNorm(nn.Module):
    """RMSNorm as HF computes it: statistics in float32, cast back, then scale."""

    config: LlamaConfig

    @nn.compact
    def __call__(self, x: Array) -> Array:
        cfg = self.config
        scale = self.param("scale", nn.initializers.ones, (x.shape[-1],), cfg.param_dtype)
        xf = x.astype(jnp.float32)
        xf = xf * jax.lax.rsqrt(jnp.mean(xf * xf, axis=-1, keepdims=True) + cfg.rms_norm_eps)
        return (scale.astype(cfg.dtype) * xf.astype(cfg.dtype)).astype(cfg.dtype)


def _dense(cfg: LlamaConfig, features: int, name: str) -> Dense:
    return Dense(
        features,
        use_bias=name != "lm_head" and cfg.projection_bias(name),
        dtype=cfg.dtype,
        param_dtype=cfg.param_dtype,
        kernel_init=nn.initializers.normal(cfg.initializer_range),
        name=name,
    )


class LlamaAttention(nn.Module):
    """Causal self-attention with RoPE, GQA and an optional KV cache."""

    config: LlamaConfig

    def extend_kv(self, key: Array, value: Array, key_mask: Array) -> tuple[Array, Array, Array]:
        """Extension point (no-op): prefix tuning intercepts this to prepend learned keys/values.

        ``key``/``value``: (B, S, Hkv, D), keys already rotated (RoPE); with a cache, S is the
        whole cache length. ``key_mask``: bool (B, S), True = real token. Returned keys may be
        longer than S; the extra ones must be *prepended*, and every query may attend to them."""
        return key, value, key_mask

    def sdpa(self, query: Array, key: Array, value: Array, mask: Array) -> Array:
        """The attention arithmetic, as a method so methods can intercept it (gated prefix
        tuning adds a second attention over its prefix here). ``query``: (B, T, H, D); ``key``/
        ``value``: (B, S, Hkv, D) as returned by :meth:`extend_kv`; ``mask``: bool (B, 1, T, S).
        Returns (B, T, H, D)."""
        cfg = self.config
        return dot_product_attention(
            query, key, value, mask, dtype=cfg.dtype, implementation=cfg.attention_impl
        )

    @nn.compact
    def __call__(
        self,
        x: Array,
        cos: Array,
        sin: Array,
        key_mask: Array,
        query_slots: Array,
        kv_cache: Cache | None = None,
        cache_index: Array | None = None,
    ) -> tuple[Array, Cache | None]:
        cfg = self.config
        b, t, _ = x.shape
        heads, kv_heads, d = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
        q = _dense(cfg, heads * d, "q_proj")(x).reshape(b, t, heads, d)
        k = _dense(cfg, kv_heads * d, "k_proj")(x).reshape(b, t, kv_heads, d)
        v = _dense(cfg, kv_heads * d, "v_proj")(x).reshape(b, t, kv_heads, d)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)

        new_cache = None
        if kv_cache is not None:
            start = (0, cache_index, 0, 0)
            k = jax.lax.dynamic_update_slice(
                kv_cache["key"], k.astype(kv_cache["key"].dtype), start
            )
            v = jax.lax.dynamic_update_slice(
                kv_cache["value"], v.astype(kv_cache["value"].dtype), start
            )
            new_cache = {"key": k, "value": v}
        k, v = k.astype(cfg.dtype), v.astype(cfg.dtype)

        s = k.shape[1]
        k, v, key_mask = self.extend_kv(k, v, key_mask)
        causal = jnp.arange(s)[None, :] <= query_slots[:, None]  # (T, S)
        extra = k.shape[1] - s
        if extra:  # prepended (prefix) keys are visible to every query
            causal = jnp.concatenate([jnp.ones((t, extra), bool), causal], axis=1)
        mask = key_mask.astype(bool)[:, None, None, :] & causal[None, None]
        out = self.sdpa(q, k, v, mask).reshape(b, t, heads * d)
        return _dense(cfg, cfg.hidden_size, "o_proj")(out), new_cache


class LlamaMLP(nn.Module):
    """SwiGLU: ``down(act(gate(x)) * up(x))``."""

    config: LlamaConfig

    @nn.compact
    def __call__(self, x: Array) -> Array:
        cfg = self.config
        gate = _dense(cfg, cfg.intermediate_size, "gate_proj")(x)
        up = _dense(cfg, cfg.intermediate_size, "up_proj")(x)
        hidden = _constrain(activation(cfg.hidden_act)(gate) * up, ("batch", "length", "mlp"))
        return _dense(cfg, cfg.hidden_size, "down_proj")(hidden)


class LlamaDecoderLayer(nn.Module):
    config: LlamaConfig

    @nn.compact
    def __call__(self, x, cos, sin, key_mask, query_slots, kv_cache=None, cache_index=None):
        attn, new_cache = LlamaAttention(self.config, name="self_attn")(
            LlamaRMSNorm(self.config, name="input_layernorm")(x),
            cos,
            sin,
            key_mask,
            query_slots,
            kv_cache,
            cache_index,
        )
        x = _constrain(x + attn, RESIDUAL)
        h = LlamaRMSNorm(self.config, name="post_attention_layernorm")(x)
        return _constrain(x + LlamaMLP(self.config, name="mlp")(h), RESIDUAL), new_cache


class LlamaModel(nn.Module):
    """The decoder stack (HF ``LlamaModel``): ``embed_tokens``, ``layers_{i}``, ``norm``.
    ``remat``: rematerialisation policy per decoder layer (see the module docstring)."""

    config: LlamaConfig
    remat: str | None = None

    def setup(self):
        cfg = self.config
        self.embed_tokens = nn.Embed(
            cfg.vocab_size,
            cfg.hidden_size,
            dtype=cfg.dtype,
            param_dtype=cfg.param_dtype,
            embedding_init=nn.initializers.normal(cfg.initializer_range),
        )
        layer = remat_lib.checkpointed(LlamaDecoderLayer, remat_lib.layer_policy(self.remat))
        self.layers = [layer(cfg) for _ in range(cfg.num_hidden_layers)]
        self.norm = LlamaRMSNorm(cfg)

    def extend_inputs(self, embeddings: Array, attention_mask: Array) -> tuple[Array, Array]:
        """Extension point (no-op): prompt tuning intercepts this to prepend soft prompts.

        ``embeddings``: (B, T, hidden); ``attention_mask``: (B, T). A longer T may be returned;
        positions, masks and outputs follow the returned length. With a KV cache this runs on
        every call (prefill and each decode step), so a method that prepends must do so only
        when the cache is empty, and the cache must have room for the extra tokens."""
        return embeddings, attention_mask

    def __call__(
        self,
        input_ids: Array,
        attention_mask: Array | None = None,
        position_ids: Array | None = None,
        cache: Cache | None = None,
        deterministic: bool = True,
        output_hidden_states: bool = False,
    ) -> dict[str, Any]:
        """``input_ids``/``attention_mask``: (B, T). ``position_ids`` (after ``extend_inputs``)
        default to ``cumsum(attention_mask) - 1``, offset by the real tokens already in
        ``cache``. ``deterministic`` is accepted for interface uniformity (LLaMA has no
        dropout). Returns ``last_hidden_state``, ``hidden_states`` (embeddings, then each
        layer's output, the last one normed, as HF) if asked, and ``cache`` if one was given."""
        del deterministic
        cfg = self.config
        if attention_mask is None:
            attention_mask = jnp.ones(input_ids.shape, jnp.int32)
        x, attention_mask = self.extend_inputs(self.embed_tokens(input_ids), attention_mask)
        x = _constrain(x, RESIDUAL)
        t = x.shape[1]
        mask = attention_mask.astype(jnp.int32)
        if cache is None:
            offset = jnp.zeros((mask.shape[0], 1), jnp.int32)
            key_mask, index = mask.astype(bool), None
            query_slots = jnp.arange(t)
        else:
            index = cache["index"]
            offset = jnp.sum(cache["mask"], axis=-1, dtype=jnp.int32)[:, None]
            key_mask = jax.lax.dynamic_update_slice(cache["mask"], mask.astype(bool), (0, index))
            query_slots = index + jnp.arange(t)
        if position_ids is None:
            position_ids = offset + jnp.maximum(jnp.cumsum(mask, axis=-1) - 1, 0)
        cos, sin = rope_cos_sin(position_ids, cfg.head_dim, cfg.rope_theta)

        hidden_states = [x]
        new_layers = []
        for i, layer in enumerate(self.layers):
            kv = None if cache is None else cache["layers"][i]
            x, new_kv = layer(x, cos, sin, key_mask, query_slots, kv, index)
            new_layers.append(new_kv)
            hidden_states.append(x)
        x = self.norm(x)
        out: dict[str, Any] = {"last_hidden_state": x}
        if output_hidden_states:
            out["hidden_states"] = (*hidden_states[:-1], x)
        if cache is not None:
            out["cache"] = {"index": index + t, "mask": key_mask, "layers": tuple(new_layers)}
        return out


class LlamaForCausalLM(nn.Module):
    """``model`` + ``lm_head`` (a Dense, or the transposed embedding when tied). ``remat``:
    rematerialisation policy per decoder layer (see the module docstring)."""

    config: LlamaConfig
    remat: str | None = None

    def setup(self):
        self.model = LlamaModel(self.config, self.remat)
        if not self.config.tie_word_embeddings:
            self.lm_head = _dense(self.config, self.config.vocab_size, "lm_head")

    @nn.nowrap
    def init_cache(self, batch_size: int, max_length: int, dtype: Any = None) -> Cache:
        """An empty KV cache for this model (no params needed); see :func:`init_cache`."""
        return init_cache(self.config, batch_size, max_length, dtype)

    def __call__(
        self,
        input_ids: Array,
        attention_mask: Array | None = None,
        position_ids: Array | None = None,
        cache: Cache | None = None,
        deterministic: bool = True,
        output_hidden_states: bool = False,
    ) -> dict[str, Any]:
        """As :meth:`LlamaModel.__call__`, plus ``logits`` (B, T, vocab) in the compute dtype."""
        out = self.model(
            input_ids,
            attention_mask,
            position_ids,
            cache,
            deterministic=deterministic,
            output_hidden_states=output_hidden_states,
        )
        h = out["last_hidden_state"]
        if self.config.tie_word_embeddings:
            logits = self.model.embed_tokens.attend(h)
        else:
            logits = self.lm_head(h)
        return {"logits": _constrain(logits, ("batch", "length", "vocab")), **out}


__all__ = [
    "LlamaAttention",
    "LlamaConfig",
    "LlamaDecoderLayer",
    "LlamaForCausalLM",
    "LlamaMLP",
    "LlamaModel",
    "LlamaRMSNorm",
    "apply_rope",
    "init_cache",
    "rope_cos_sin",
]
