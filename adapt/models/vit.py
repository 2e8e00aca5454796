"""Vision Transformer (ViT) in Flax linen, parameter-for-parameter like Hugging Face's ``ViTModel``.

Module paths mirror the Hugging Face checkpoint layout (the one ``transformers`` writes and the hub
holds), so HF ``vit.encoder.layer.3.attention.attention.query.weight`` is our
``vit/encoder/layer_3/attention/attention/query/kernel``; every projection is a plain ``nn.Dense``
so LoRA/IA3 attach by path.

Images are **NHWC** (Flax's convention); Hugging Face takes NCHW, so feed HF
``pixel_values.transpose(0, 3, 1, 2)`` of ours. The patch embedding is an ``nn.Conv`` with
kernel = stride = patch size, i.e. a linear map of each non-overlapping patch.

Other resolutions: ``interpolate_pos_encoding=True`` resizes the stored position embeddings on the
fly exactly as ``ViTEmbeddings.interpolate_pos_encoding`` does (torch bicubic,
``align_corners=False``); :func:`resize_position_embeddings` does it once, in the params, for
fine-tuning at a new fixed size. Both use ``jax.image.resize(method="bicubic-pytorch",
antialias=False)``, which reproduces torch (a = -0.75 kernel, replicated edges; agrees to ~2e-6).
Plain ``"bicubic"``, or ``"bicubic-pytorch"`` with jax's default ``antialias=True``, uses the Keys
kernel (a = -0.5) with renormalised borders and differs from torch by 0.2-1.5 on unit-variance
embeddings (measured on 4x4 -> 6x6, 4x4 -> 3x3 and 5x5 -> 2x9 grids).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from adapt import paths
from adapt.models import layers
from adapt.models.affine import Dense, LayerNorm
from adapt.models.dropout import Dropout
from adapt.models.families import Loaded, ModelOptionError

Array = jax.Array
POOLINGS = ("cls", "gap")


def _pair(x: int | tuple[int, int]) -> tuple[int, int]:
    return (x, x) if isinstance(x, int) else (int(x[0]), int(x[1]))


@dataclasses.dataclass(frozen=True)
class ViTConfig:
    """Fields named as in ``transformers.ViTConfig``; ``dtype`` is the compute dtype and
    ``param_dtype`` the storage dtype of every parameter."""

    image_size: int | tuple[int, int] = 224
    patch_size: int | tuple[int, int] = 16
    num_channels: int = 3
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    hidden_dropout_prob: float = 0.0
    attention_probs_dropout_prob: float = 0.0
    layer_norm_eps: float = 1e-12
    qkv_bias: bool = True
    pooler_output_size: int | None = None  # None: hidden_size (as transformers)
    pooler_act: str = "tanh"
    initializer_range: float = 0.02
    num_labels: int = 2
    id2label: tuple[str, ...] = ()  # class names, kept for a faithful export; may be empty
    # What the classifier reads: "cls" (the final-normed [CLS] token, as transformers) or "gap"
    # (the mean of the final-normed patch tokens, as big_vision's ViTs); None: "cls".
    pooling: str | None = None
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    # "einsum": adapt's written-out softmax attention; "jax": jax.nn.dot_product_attention (XLA's
    # fused kernel, cuDNN flash attention on GPU), equal within float32 rounding. Not exported.
    attention_impl: str = "einsum"

    def __post_init__(self):
        if self.attention_impl not in layers.ATTENTION_IMPLS:
            raise ValueError(
                f"attention_impl must be one of {layers.ATTENTION_IMPLS}, got {self.attention_impl!r}"
            )
        if self.pooling not in (None, *POOLINGS):
            raise ValueError(f"pooling must be one of {POOLINGS} or None, got {self.pooling!r}")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"hidden_size={self.hidden_size} is not a multiple of "
                f"num_attention_heads={self.num_attention_heads}"
            )

    @property
    def grid(self) -> tuple[int, int]:
        """Patches per (height, width) at ``image_size``: the layout of the position table."""
        (h, w), (ph, pw) = _pair(self.image_size), _pair(self.patch_size)
        return h // ph, w // pw


# --------------------------------------------------------------------- position interpolation
def interpolate_position_embeddings(
    position_embeddings: Array, old_grid: tuple[int, int], new_grid: tuple[int, int]
) -> Array:
    """Resize a ``(1, 1 + gh*gw, D)`` table (CLS first) to ``new_grid``; the CLS entry is kept.
    Computed in float32 at full precision, returned in the input dtype."""
    if tuple(old_grid) == tuple(new_grid):
        return position_embeddings
    dim = position_embeddings.shape[-1]
    cls_pos = position_embeddings[:, :1]
    patch_pos = position_embeddings[:, 1:].reshape(1, *old_grid, dim).astype(jnp.float32)
    # antialias=False is essential: with it on, jax switches to the Keys (a = -0.5) kernel.
    resized = jax.image.resize(
        patch_pos, (1, *new_grid, dim), method="bicubic-pytorch", antialias=False
    ).reshape(1, new_grid[0] * new_grid[1], dim)
    return jnp.concatenate([cls_pos, resized.astype(position_embeddings.dtype)], axis=1)


def resize_position_embeddings(
    params: dict, config: ViTConfig, image_size: int | tuple[int, int]
) -> tuple[dict, ViTConfig]:
    """Permanently resize the stored position embeddings for ``image_size`` (e.g. fine-tune a
    224-pixel checkpoint at 384). Returns new ``(params, config)``; the result computes what
    ``interpolate_pos_encoding=True`` computes at that size, without resizing at every step.
    Works for ``ViTModel`` and ``ViTForImageClassification`` params."""
    new_config = dataclasses.replace(config, image_size=image_size)
    flat = paths.flatten(params)
    hits = [p for p in flat if p.endswith("embeddings/position_embeddings")]
    if len(hits) != 1:
        raise ValueError(f"expected one '.../embeddings/position_embeddings' leaf, found {hits}")
    flat[hits[0]] = interpolate_position_embeddings(flat[hits[0]], config.grid, new_config.grid)
    return paths.unflatten(flat), new_config


# ----------------------------------------------------------------------------------- modules
def _dense(cfg: ViTConfig, features: int, name: str, use_bias: bool = True) -> Dense:
    return Dense(
        features,
        use_bias=use_bias,
        dtype=cfg.dtype,
        param_dtype=cfg.param_dtype,
        kernel_init=nn.initializers.normal(cfg.initializer_range),
        name=name,
    )


def _layer_norm(cfg: ViTConfig, name: str) -> LayerNorm:
    # Two-pass variance like torch; the fast E[x^2]-E[x]^2 form loses ~1e-6 to cancellation.
    return LayerNorm(
        epsilon=cfg.layer_norm_eps,
        dtype=cfg.dtype,
        param_dtype=cfg.param_dtype,
        use_fast_variance=False,
        name=name,
    )


class ViTPatchEmbeddings(nn.Module):
    config: ViTConfig

    @nn.compact
    def __call__(self, pixel_values: Array) -> Array:
        cfg = self.config
        if pixel_values.shape[-1] != cfg.num_channels:
            raise ValueError(
                f"pixel_values must be NHWC with {cfg.num_channels} channels, got shape "
                f"{pixel_values.shape} (Hugging Face's NCHW images need .transpose(0, 2, 3, 1))"
            )
        patch = _pair(cfg.patch_size)
        x = nn.Conv(
            cfg.hidden_size,
            kernel_size=patch,
            strides=patch,
            padding="VALID",
            dtype=cfg.dtype,
            param_dtype=cfg.param_dtype,
            name="projection",
        )(pixel_values)
        return x.reshape(x.shape[0], -1, x.shape[-1])  # row-major patches, as HF's flatten(2)


class ViTEmbeddings(nn.Module):
    config: ViTConfig

    @nn.compact
    def __call__(
        self, pixel_values: Array, deterministic: bool, interpolate_pos_encoding: bool
    ) -> Array:
        cfg = self.config
        init = nn.initializers.truncated_normal(cfg.initializer_range)
        gh, gw = cfg.grid
        cls_token = self.param("cls_token", init, (1, 1, cfg.hidden_size), cfg.param_dtype)
        pos = self.param(
            "position_embeddings", init, (1, 1 + gh * gw, cfg.hidden_size), cfg.param_dtype
        )
        patches = ViTPatchEmbeddings(cfg, name="patch_embeddings")(pixel_values)
        (ph, pw), (h, w) = _pair(cfg.patch_size), pixel_values.shape[1:3]
        if (h, w) != _pair(cfg.image_size) and not interpolate_pos_encoding:
            raise ValueError(
                f"input image size ({h}*{w}) does not match the model's {cfg.image_size}; "
                "pass interpolate_pos_encoding=True or resize_position_embeddings()"
            )
        pos = interpolate_position_embeddings(pos, (gh, gw), (h // ph, w // pw))  # no-op if same
        cls = jnp.broadcast_to(cls_token.astype(cfg.dtype), (patches.shape[0], 1, cfg.hidden_size))
        x = jnp.concatenate([cls, patches.astype(cfg.dtype)], axis=1) + pos.astype(cfg.dtype)
        return Dropout(cfg.hidden_dropout_prob)(x, deterministic=deterministic)


class ViTSelfAttention(nn.Module):
    config: ViTConfig

    def extend_kv(self, key: Array, value: Array, key_mask: Array) -> tuple[Array, Array, Array]:
        """Extension point (no-op): prefix tuning intercepts this method by name to prepend
        learned keys/values. ``key``/``value``: (B, S, H, D); ``key_mask``: bool (B, S), True =
        attendable. May return a longer S; the attention below follows the returned mask."""
        return key, value, key_mask

    def sdpa(self, query: Array, key: Array, value: Array, mask: Array, dropout=None) -> Array:
        """Extension point: scaled dot-product attention, (B, T, H, D) -> (B, T, H, D). Methods
        that change how attention mixes (gated prefixes) intercept this method by name."""
        return layers.dot_product_attention(
            query,
            key,
            value,
            mask,
            dtype=self.config.dtype,
            dropout=dropout,
            implementation=self.config.attention_impl,
        )

    @nn.compact
    def __call__(self, hidden_states: Array, attention_mask: Array, deterministic: bool) -> Array:
        cfg = self.config
        heads = cfg.num_attention_heads
        head_dim = cfg.hidden_size // heads

        def project(name: str) -> Array:
            y = _dense(cfg, cfg.hidden_size, name, use_bias=cfg.qkv_bias)(hidden_states)
            return y.reshape(*y.shape[:2], heads, head_dim)

        query, key, value = project("query"), project("key"), project("value")
        key, value, key_mask = self.extend_kv(key, value, attention_mask.astype(bool))
        mask = layers.padding_mask(key_mask)
        rate = cfg.attention_probs_dropout_prob
        active = layers.check_attention(cfg.attention_impl, rate, deterministic)
        drop = Dropout(rate, deterministic=deterministic) if active else None
        out = self.sdpa(query, key, value, mask, drop)
        return out.reshape(*out.shape[:2], cfg.hidden_size)


class ViTSelfOutput(nn.Module):
    config: ViTConfig

    @nn.compact
    def __call__(self, hidden_states: Array, deterministic: bool) -> Array:
        x = _dense(self.config, self.config.hidden_size, "dense")(hidden_states)
        return Dropout(self.config.hidden_dropout_prob)(x, deterministic=deterministic)


class ViTAttention(nn.Module):
    config: ViTConfig

    @nn.compact
    def __call__(self, hidden_states: Array, attention_mask: Array, deterministic: bool) -> Array:
        x = ViTSelfAttention(self.config, name="attention")(
            hidden_states, attention_mask, deterministic
        )
        return ViTSelfOutput(self.config, name="output")(x, deterministic)


class ViTIntermediate(nn.Module):
    config: ViTConfig

    @nn.compact
    def __call__(self, hidden_states: Array) -> Array:
        x = _dense(self.config, self.config.intermediate_size, "dense")(hidden_states)
        return layers.activation(self.config.hidden_act)(x)


class ViTOutput(nn.Module):
    config: ViTConfig

    @nn.compact
    def __call__(self, hidden_states: Array, deterministic: bool) -> Array:
        x = _dense(self.config, self.config.hidden_size, "dense")(hidden_states)
        return Dropout(self.config.hidden_dropout_prob)(x, deterministic=deterministic)


class ViTLayer(nn.Module):
    """Pre-norm block: x + attn(LN(x)), then x + MLP(LN(x))."""

    config: ViTConfig

    @nn.compact
    def __call__(self, hidden_states: Array, attention_mask: Array, deterministic: bool) -> Array:
        cfg = self.config
        normed = _layer_norm(cfg, "layernorm_before")(hidden_states)
        hidden_states = hidden_states + ViTAttention(cfg, name="attention")(
            normed, attention_mask, deterministic
        )
        normed = _layer_norm(cfg, "layernorm_after")(hidden_states)
        mlp = ViTIntermediate(cfg, name="intermediate")(normed)
        return hidden_states + ViTOutput(cfg, name="output")(mlp, deterministic)


class ViTEncoder(nn.Module):
    config: ViTConfig

    @nn.compact
    def __call__(
        self, hidden_states: Array, attention_mask: Array, deterministic: bool
    ) -> tuple[Array, tuple[Array, ...]]:
        """Returns the last layer's output and every layer's input plus that output (HF's
        ``hidden_states``: ``num_hidden_layers + 1`` entries, the last before the final norm)."""
        states = [hidden_states]
        for i in range(self.config.num_hidden_layers):
            hidden_states = ViTLayer(self.config, name=f"layer_{i}")(
                hidden_states, attention_mask, deterministic
            )
            states.append(hidden_states)
        return hidden_states, tuple(states)


class ViTPooler(nn.Module):
    config: ViTConfig

    @nn.compact
    def __call__(self, hidden_states: Array) -> Array:
        cfg = self.config
        x = _dense(cfg, cfg.pooler_output_size or cfg.hidden_size, "dense")(hidden_states[:, 0])
        return layers.activation(cfg.pooler_act)(x)


class ViTModel(nn.Module):
    """The backbone: embeddings, encoder, final LayerNorm and (optionally) HF's tanh pooler.

    Returns ``{"last_hidden_state", "pooler_output"?, "hidden_states"?}``. Sequence position 0 is
    the CLS token; an :meth:`extend_inputs` implementation should keep it there (visual prompt
    tuning inserts its tokens after it), since the pooler and classifier read position 0.
    """

    config: ViTConfig
    add_pooling_layer: bool = True

    def extend_inputs(self, embeddings: Array, attention_mask: Array) -> tuple[Array, Array]:
        """Extension point (no-op): prompt tuning intercepts this method by name to add learned
        tokens. ``embeddings``: (B, T, hidden) after patch + position embedding;
        ``attention_mask``: (B, T), 1 = real token. May return a longer T."""
        return embeddings, attention_mask

    @nn.compact
    def __call__(
        self,
        pixel_values: Array,
        deterministic: bool = True,
        output_hidden_states: bool = False,
        interpolate_pos_encoding: bool = False,
    ) -> dict[str, Any]:
        cfg = self.config
        x = ViTEmbeddings(cfg, name="embeddings")(
            pixel_values, deterministic, interpolate_pos_encoding
        )
        attention_mask = jnp.ones(x.shape[:2], jnp.int32)
        x, attention_mask = self.extend_inputs(x, attention_mask)
        x, states = ViTEncoder(cfg, name="encoder")(x, attention_mask, deterministic)
        x = _layer_norm(cfg, "layernorm")(x)
        out: dict[str, Any] = {"last_hidden_state": x}
        if self.add_pooling_layer:
            out["pooler_output"] = ViTPooler(cfg, name="pooler")(x)
        if output_hidden_states:
            out["hidden_states"] = states
        return out


class ViTForImageClassification(nn.Module):
    """``vit`` backbone (no pooler) + a linear ``classifier`` on the final-normed CLS token
    (``pooling="gap"``: on the mean of the patch tokens; prompt tokens, if any, count too).

    Returns ``{"logits", "hidden_states"?}``."""

    config: ViTConfig

    @nn.compact
    def __call__(
        self,
        pixel_values: Array,
        deterministic: bool = True,
        output_hidden_states: bool = False,
        interpolate_pos_encoding: bool = False,
    ) -> dict[str, Any]:
        cfg = self.config
        out = ViTModel(cfg, add_pooling_layer=False, name="vit")(
            pixel_values, deterministic, output_hidden_states, interpolate_pos_encoding
        )
        hidden = out["last_hidden_state"]
        pooled = hidden[:, 1:].mean(axis=1) if cfg.pooling == "gap" else hidden[:, 0]
        logits = _dense(cfg, cfg.num_labels, "classifier")(pooled)
        result: dict[str, Any] = {"logits": logits}
        if output_hidden_states:
            result["hidden_states"] = out["hidden_states"]
        return result


def scratch_for_run(
    path: Any,
    *,
    num_labels: int | None,
    pooling: str | None,
    overrides: dict[str, Any],
    rng: jax.Array,
) -> Loaded:
    """``model.kind="vit"``: a ViT classifier of the config in ``model.config``, to be initialised
    from scratch (the family registry's loader; there are no weights to read)."""
    overrides = dict(overrides)
    if num_labels is not None:
        overrides["num_labels"] = num_labels
    if pooling is not None:
        overrides["pooling"] = pooling
    try:
        config = ViTConfig(**overrides)
    except (TypeError, ValueError) as e:
        raise ModelOptionError(f"model.config / model.pooling for kind 'vit': {e}") from None
    module = ViTForImageClassification(config)
    return Loaded(module, {}, {}, config, "ViTForImageClassification", scratch=True)


__all__ = [
    "ViTConfig",
    "ViTForImageClassification",
    "ViTModel",
    "interpolate_position_embeddings",
    "resize_position_embeddings",
    "scratch_for_run",
]
