"""BERT-style encoders (BERT, RoBERTa, MiniLM) whose parameter paths mirror Hugging Face.

One implementation serves all three: RoBERTa differs from BERT only in how position ids are made
(``position_offset``, see :class:`BertConfig`) and in its task heads; MiniLM (e.g.
all-MiniLM-L6-v2) *is* a small BERT. Module paths equal the Hugging Face state-dict prefixes
(``bert/encoder/layer_3/attention/self/query/kernel`` <-> ``bert.encoder.layer.3.attention.self.
query.weight``; a bare :class:`BertModel` has no ``bert/`` prefix, as in HF), so the conversion
table in :mod:`adapt.convert.hf_bert` is a near-identity and LoRA-style methods can target
``attention/self/(query|value)`` by regex.

Two extension points are explicit no-op methods, so methods can intercept them by name:
:meth:`BertModel.extend_inputs` (prompt tuning: prepend embeddings) and
:meth:`BertSelfAttention.extend_kv` (prefix tuning: prepend keys/values).
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from adapt.models.affine import Dense, LayerNorm
from adapt.models.dropout import Dropout
from adapt.models.layers import (
    ATTENTION_IMPLS,
    activation,
    check_attention,
    dot_product_attention,
)

Array = jax.Array
Dtype = Any
POOLINGS = ("pooler", "cls", "mean")


@dataclasses.dataclass(frozen=True)
class BertConfig:
    """Hyper-parameters; names follow ``transformers.BertConfig``.

    ``model_type`` ("bert" or "roberta") selects the state-dict prefix (``bert/`` or ``roberta/``)
    and the task-head layout. ``position_offset`` is 0 for BERT (positions ``0..T-1`` whatever the
    padding); RoBERTa uses ``pad_token_id + 1``: real tokens get positions counted from there,
    skipping pads, and pads get ``pad_token_id`` (HF ``create_position_ids_from_input_ids``).
    """

    vocab_size: int = 30522
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    pad_token_id: int = 0
    position_offset: int = 0
    model_type: str = "bert"
    num_labels: int = 2
    id2label: tuple[str, ...] | None = None  # label names, index = class id (for export)
    classifier_dropout: float | None = None
    initializer_range: float = 0.02  # std of fresh weights (new task heads)
    # How a sequence classifier reduces the tokens to one vector: "pooler" (BERT's tanh dense
    # on [CLS], HF BertForSequenceClassification), "cls" (the [CLS] / <s> vector; RoBERTa's own
    # head reads it), "mean" (masked mean, sentence-transformers models such as
    # all-MiniLM-L6-v2). None: the architecture's own (pooler for BERT, cls for RoBERTa).
    pooling: str | None = None
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    # "einsum": adapt's written-out softmax attention; "jax": jax.nn.dot_product_attention (XLA's
    # fused kernel, cuDNN flash attention on GPU), equal within float32 rounding. Not exported.
    attention_impl: str = "einsum"

    def __post_init__(self) -> None:
        if self.attention_impl not in ATTENTION_IMPLS:
            raise ValueError(
                f"attention_impl must be one of {ATTENTION_IMPLS}, got {self.attention_impl!r}"
            )
        if self.pooling not in (None, *POOLINGS):
            raise ValueError(f"pooling must be one of {POOLINGS} or None, got {self.pooling!r}")
        if self.pooling == "pooler" and self.model_type == "roberta":
            raise ValueError("RoBERTa classifiers have no pooler; use pooling 'cls' or 'mean'")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def native_pooling(self) -> str:
        """What Hugging Face's sequence classifier of this model type pools with."""
        return "cls" if self.model_type == "roberta" else "pooler"

    @property
    def effective_pooling(self) -> str:
        return self.pooling or self.native_pooling

    @property
    def head_dropout(self) -> float:
        """HF: ``classifier_dropout`` if set, else ``hidden_dropout_prob``."""
        if self.classifier_dropout is None:
            return self.hidden_dropout_prob
        return self.classifier_dropout


def _dense(config: BertConfig, features: int, name: str | None = None) -> Dense:
    return Dense(
        features,
        dtype=config.dtype,
        param_dtype=config.param_dtype,
        kernel_init=nn.initializers.normal(config.initializer_range),
        name=name,
    )


def _layer_norm(config: BertConfig, name: str | None = None) -> LayerNorm:
    # Two-pass variance, as torch computes it: the one-pass E[x^2]-E[x]^2 form costs digits that
    # the 1e-5 parity tests notice.
    return LayerNorm(
        epsilon=config.layer_norm_eps,
        dtype=config.dtype,
        param_dtype=config.param_dtype,
        use_fast_variance=False,
        name=name,
    )


def _embed(config: BertConfig, num: int) -> nn.Embed:
    return nn.Embed(
        num,
        config.hidden_size,
        dtype=config.dtype,
        param_dtype=config.param_dtype,
        embedding_init=nn.initializers.normal(config.initializer_range),
    )


def position_ids_for(input_ids: Array, config: BertConfig) -> Array:
    """Default position ids: ``arange(T)`` for BERT; RoBERTa-style offset positions that skip
    padding when ``config.position_offset > 0`` (so a left-padded sequence still starts at the
    first real position)."""
    batch, length = input_ids.shape
    if config.position_offset == 0:
        return jnp.broadcast_to(jnp.arange(length, dtype=jnp.int32), (batch, length))
    real = (input_ids != config.pad_token_id).astype(jnp.int32)
    return jnp.cumsum(real, axis=1) * real + (config.position_offset - 1)


class BertEmbeddings(nn.Module):
    """word + position + token-type embeddings, then LayerNorm and dropout (HF order)."""

    config: BertConfig
    # Called as (input_ids, token_type_ids, position_ids, deterministic) with word_embeddings and
    # config.position_offset: where PEFT-style virtual tokens enter (methods.prompts).
    virtual_token_site: ClassVar[bool] = True

    def setup(self) -> None:
        cfg = self.config
        self.word_embeddings = _embed(cfg, cfg.vocab_size)
        self.position_embeddings = _embed(cfg, cfg.max_position_embeddings)
        self.token_type_embeddings = _embed(cfg, cfg.type_vocab_size)
        self.LayerNorm = _layer_norm(cfg)
        self.dropout = Dropout(cfg.hidden_dropout_prob)

    def __call__(
        self,
        input_ids: Array,
        token_type_ids: Array,
        position_ids: Array,
        deterministic: bool = True,
    ) -> Array:
        x = self.word_embeddings(input_ids)
        x = x + self.token_type_embeddings(token_type_ids)
        x = x + self.position_embeddings(position_ids)
        return self.dropout(self.LayerNorm(x), deterministic=deterministic)


class BertSelfAttention(nn.Module):
    """Multi-head self-attention: ``query``/``key``/``value`` projections (HF ``attention.self``)."""

    config: BertConfig

    def setup(self) -> None:
        cfg = self.config
        self.query = _dense(cfg, cfg.hidden_size)
        self.key = _dense(cfg, cfg.hidden_size)
        self.value = _dense(cfg, cfg.hidden_size)
        self.dropout = Dropout(cfg.attention_probs_dropout_prob)

    def extend_kv(self, key: Array, value: Array, key_mask: Array) -> tuple[Array, Array, Array]:
        """Extension point (no-op): prefix tuning intercepts this to prepend learned keys/values.

        ``key``/``value``: (B, S, H, D) after the head split; ``key_mask``: bool (B, S), True for
        real tokens. May return a longer S; the attention below follows whatever comes back.
        """
        return key, value, key_mask

    def __call__(self, hidden: Array, attention_mask: Array, deterministic: bool = True) -> Array:
        cfg = self.config
        batch, length, _ = hidden.shape
        heads = (cfg.num_attention_heads, cfg.head_dim)
        q = self.query(hidden).reshape(batch, length, *heads)
        k = self.key(hidden).reshape(batch, length, *heads)
        v = self.value(hidden).reshape(batch, length, *heads)
        k, v, key_mask = self.extend_kv(k, v, attention_mask.astype(bool))
        out = self.sdpa(q, k, v, key_mask[:, None, None, :], deterministic)
        return out.reshape(batch, length, cfg.hidden_size)

    def sdpa(
        self, query: Array, key: Array, value: Array, mask: Array, deterministic: bool = True
    ) -> Array:
        """The attention arithmetic, a method so that methods can wrap it by name (gated prefix
        tuning adds a second, gated attention over learned keys to its output).

        ``query``: (B, T, H, D); ``key``/``value``: (B, S, H, D); ``mask``: bool (B, 1, 1, S).
        Returns (B, T, H, D).
        """
        cfg = self.config
        drop = check_attention(cfg.attention_impl, cfg.attention_probs_dropout_prob, deterministic)
        return dot_product_attention(
            query,
            key,
            value,
            mask,
            dtype=cfg.dtype,
            dropout=(lambda w: self.dropout(w, deterministic=deterministic)) if drop else None,
            implementation=cfg.attention_impl,
        )


class BertSelfOutput(nn.Module):
    """dense, dropout, residual add, LayerNorm (post-norm): HF ``BertSelfOutput`` and, with the
    same parameters and arithmetic, ``BertOutput`` (the feed-forward's second half)."""

    config: BertConfig

    def setup(self) -> None:
        self.dense = _dense(self.config, self.config.hidden_size)
        self.LayerNorm = _layer_norm(self.config)
        self.dropout = Dropout(self.config.hidden_dropout_prob)

    def __call__(self, hidden: Array, residual: Array, deterministic: bool = True) -> Array:
        hidden = self.dropout(self.dense(hidden), deterministic=deterministic)
        return self.LayerNorm(hidden + residual)


class BertAttention(nn.Module):
    config: BertConfig

    def setup(self) -> None:
        # Attribute names are the HF module names: ``attention.self`` and ``attention.output``.
        self.self = BertSelfAttention(self.config)
        self.output = BertSelfOutput(self.config)

    def __call__(self, hidden: Array, attention_mask: Array, deterministic: bool = True) -> Array:
        attended = self.self(hidden, attention_mask, deterministic)
        return self.output(attended, hidden, deterministic)


class BertIntermediate(nn.Module):
    config: BertConfig

    def setup(self) -> None:
        self.dense = _dense(self.config, self.config.intermediate_size)

    def __call__(self, hidden: Array) -> Array:
        return activation(self.config.hidden_act)(self.dense(hidden))


class BertLayer(nn.Module):
    config: BertConfig

    def setup(self) -> None:
        self.attention = BertAttention(self.config)
        self.intermediate = BertIntermediate(self.config)
        self.output = BertSelfOutput(self.config)  # HF BertOutput: the same dense+drop+LN

    def __call__(self, hidden: Array, attention_mask: Array, deterministic: bool = True) -> Array:
        attended = self.attention(hidden, attention_mask, deterministic)
        return self.output(self.intermediate(attended), attended, deterministic)


class BertEncoder(nn.Module):
    config: BertConfig

    def setup(self) -> None:
        # A list assigned in setup names its items ``layer_0``, ``layer_1``, ... (HF ``layer.0``).
        self.layer = [BertLayer(self.config) for _ in range(self.config.num_hidden_layers)]

    def __call__(
        self, hidden: Array, attention_mask: Array, deterministic: bool = True
    ) -> tuple[Array, ...]:
        """Returns every hidden state: the input, then each layer's output."""
        states = [hidden]
        for layer in self.layer:
            hidden = layer(hidden, attention_mask, deterministic)
            states.append(hidden)
        return tuple(states)


class BertPooler(nn.Module):
    """tanh(dense(hidden state of the first token)), HF ``pooler``."""

    config: BertConfig

    def setup(self) -> None:
        self.dense = _dense(self.config, self.config.hidden_size)

    def __call__(self, hidden: Array) -> Array:
        return jnp.tanh(self.dense(hidden[:, 0]))


class BertModel(nn.Module):
    """The encoder backbone (HF ``BertModel`` / ``RobertaModel``).

    Returns ``last_hidden_state`` (B, T, hidden), ``pooler_output`` (B, hidden) when
    ``add_pooling_layer``, and ``hidden_states`` (embedding output + one per layer) when asked.
    """

    config: BertConfig
    add_pooling_layer: bool = True

    def setup(self) -> None:
        self.embeddings = BertEmbeddings(self.config)
        self.encoder = BertEncoder(self.config)
        if self.add_pooling_layer:
            self.pooler = BertPooler(self.config)

    def extend_inputs(self, embeddings: Array, attention_mask: Array) -> tuple[Array, Array]:
        """Extension point (no-op): prompt tuning intercepts this to prepend soft tokens.

        ``embeddings``: (B, T, hidden), the embedding output (after LayerNorm and dropout);
        ``attention_mask``: (B, T). May return a longer T; every output then has that length.
        """
        return embeddings, attention_mask

    def attend(self, hidden: Array) -> Array:
        """Logits against the word-embedding matrix (the MLM decoder tied to the embeddings)."""
        return self.embeddings.word_embeddings.attend(hidden)

    def __call__(
        self,
        input_ids: Array,
        attention_mask: Array | None = None,
        token_type_ids: Array | None = None,
        position_ids: Array | None = None,
        deterministic: bool = True,
        output_hidden_states: bool = False,
    ) -> dict[str, Any]:
        if attention_mask is None:
            attention_mask = jnp.ones(input_ids.shape, jnp.int32)
        if token_type_ids is None:
            token_type_ids = jnp.zeros(input_ids.shape, jnp.int32)
        if position_ids is None:
            position_ids = position_ids_for(input_ids, self.config)
        hidden = self.embeddings(input_ids, token_type_ids, position_ids, deterministic)
        hidden, attention_mask = self.extend_inputs(hidden, attention_mask)
        states = self.encoder(hidden, attention_mask, deterministic)
        # the mask of the sequence the encoder saw (prompt methods may have lengthened it)
        out: dict[str, Any] = {"last_hidden_state": states[-1], "attention_mask": attention_mask}
        if self.add_pooling_layer:
            out["pooler_output"] = self.pooler(states[-1])
        if output_hidden_states:
            out["hidden_states"] = states
        return out


def mean_pool(last_hidden_state: Array, attention_mask: Array) -> Array:
    """Average of the token vectors where ``attention_mask`` is 1 (sentence-transformers pooling,
    as used by all-MiniLM-L6-v2). Computed in float32; (B, T, H), (B, T) -> (B, H)."""
    mask = attention_mask.astype(jnp.float32)[..., None]
    summed = jnp.sum(last_hidden_state.astype(jnp.float32) * mask, axis=1)
    return summed / jnp.maximum(jnp.sum(mask, axis=1), 1e-9)


# ------------------------------------------------------------------------------------- heads
class _TaskModel(nn.Module):
    """A backbone under its HF prefix (``bert`` or ``roberta``) plus a head in :meth:`head`.

    Returns the backbone's outputs plus ``logits``.
    """

    config: BertConfig

    @nn.nowrap
    def has_pooler(self) -> bool:
        """Whether HF builds this architecture's backbone with ``add_pooling_layer=True``."""
        return False

    @nn.compact
    def __call__(
        self,
        input_ids: Array,
        attention_mask: Array | None = None,
        token_type_ids: Array | None = None,
        position_ids: Array | None = None,
        deterministic: bool = True,
        output_hidden_states: bool = False,
    ) -> dict[str, Any]:
        backbone = BertModel(
            self.config,
            add_pooling_layer=self.has_pooler(),
            name=self.config.model_type,
        )
        out = backbone(
            input_ids,
            attention_mask,
            token_type_ids,
            position_ids,
            deterministic=deterministic,
            output_hidden_states=output_hidden_states,
        )
        return {**out, "logits": self.head(backbone, out, deterministic)}

    @nn.nowrap
    def head(self, backbone: BertModel, out: dict[str, Any], deterministic: bool) -> Array:
        raise NotImplementedError


class RobertaClassificationHead(nn.Module):
    """RoBERTa's sentence head on the ``<s>`` token: dropout, dense, tanh, dropout, out_proj."""

    config: BertConfig

    @nn.compact
    def __call__(self, hidden: Array, deterministic: bool = True) -> Array:
        cfg = self.config
        x = Dropout(cfg.head_dropout)(hidden[:, 0], deterministic=deterministic)
        x = jnp.tanh(_dense(cfg, cfg.hidden_size, name="dense")(x))
        x = Dropout(cfg.head_dropout)(x, deterministic=deterministic)
        return _dense(cfg, cfg.num_labels, name="out_proj")(x)


def pool(out: dict[str, Any], pooling: str) -> Array:
    """One vector per sequence from a backbone's outputs: ``pooler`` output, ``cls`` (first
    token) or ``mean`` (masked mean of the token vectors)."""
    if pooling == "pooler":
        return out["pooler_output"]
    if pooling == "cls":
        return out["last_hidden_state"][:, 0]
    if pooling == "mean":
        return mean_pool(out["last_hidden_state"], out["attention_mask"]).astype(
            out["last_hidden_state"].dtype
        )
    raise ValueError(f"unknown pooling {pooling!r}; choose from {POOLINGS}")


class BertForSequenceClassification(_TaskModel):
    """The architecture's own head for its own pooling -- BERT: pooler -> dropout ->
    ``classifier``; RoBERTa: ``classifier.dense/out_proj`` on <s> -- and otherwise (``pooling``
    "cls" for BERT, "mean" for either) dropout -> a linear ``classifier`` on the pooled vector."""

    @nn.nowrap
    def has_pooler(self) -> bool:
        return self.config.effective_pooling == "pooler"

    @nn.nowrap
    def head(self, backbone: BertModel, out: dict[str, Any], deterministic: bool) -> Array:
        cfg = self.config
        if cfg.model_type == "roberta" and cfg.effective_pooling == "cls":
            return RobertaClassificationHead(cfg, name="classifier")(
                out["last_hidden_state"], deterministic
            )
        pooled = Dropout(cfg.head_dropout)(
            pool(out, cfg.effective_pooling), deterministic=deterministic
        )
        return _dense(cfg, cfg.num_labels, name="classifier")(pooled)


class BertForTokenClassification(_TaskModel):
    """Per-token labels: dropout -> ``classifier`` on every hidden state."""

    @nn.nowrap
    def head(self, backbone: BertModel, out: dict[str, Any], deterministic: bool) -> Array:
        cfg = self.config
        hidden = Dropout(cfg.head_dropout)(out["last_hidden_state"], deterministic=deterministic)
        return _dense(cfg, cfg.num_labels, name="classifier")(hidden)


class BertPredictionHeadTransform(nn.Module):
    config: BertConfig

    @nn.compact
    def __call__(self, hidden: Array) -> Array:
        hidden = _dense(self.config, self.config.hidden_size, name="dense")(hidden)
        hidden = activation(self.config.hidden_act)(hidden)
        return _layer_norm(self.config, name="LayerNorm")(hidden)


class BertLMPredictionHead(nn.Module):
    """HF ``cls.predictions``: transform, then the decoder tied to the word embeddings + ``bias``.

    The decoder is the embedding matrix itself (``attend``), not a Dense: HF ties the two, and a
    separate copy would drift apart during fine-tuning.
    """

    config: BertConfig

    @nn.compact
    def __call__(self, hidden: Array, backbone: BertModel) -> Array:
        cfg = self.config
        hidden = BertPredictionHeadTransform(cfg, name="transform")(hidden)
        bias = self.param("bias", nn.initializers.zeros, (cfg.vocab_size,), cfg.param_dtype)
        return backbone.attend(hidden) + bias.astype(cfg.dtype)


class BertOnlyMLMHead(nn.Module):
    config: BertConfig

    @nn.compact
    def __call__(self, hidden: Array, backbone: BertModel) -> Array:
        return BertLMPredictionHead(self.config, name="predictions")(hidden, backbone)


class RobertaLMHead(nn.Module):
    """HF ``lm_head``: dense, exact GELU (whatever ``hidden_act``), layer_norm, tied decoder."""

    config: BertConfig

    @nn.compact
    def __call__(self, hidden: Array, backbone: BertModel) -> Array:
        cfg = self.config
        hidden = _dense(cfg, cfg.hidden_size, name="dense")(hidden)
        hidden = _layer_norm(cfg, name="layer_norm")(activation("gelu")(hidden))
        bias = self.param("bias", nn.initializers.zeros, (cfg.vocab_size,), cfg.param_dtype)
        return backbone.attend(hidden) + bias.astype(cfg.dtype)


class BertForMaskedLM(_TaskModel):
    """Masked-LM logits over the vocabulary (HF ``cls.predictions`` or RoBERTa ``lm_head``)."""

    @nn.nowrap
    def head(self, backbone: BertModel, out: dict[str, Any], deterministic: bool) -> Array:
        cfg = self.config
        if cfg.model_type == "roberta":
            return RobertaLMHead(cfg, name="lm_head")(out["last_hidden_state"], backbone)
        return BertOnlyMLMHead(cfg, name="cls")(out["last_hidden_state"], backbone)


__all__ = [
    "BertConfig",
    "BertForMaskedLM",
    "BertForSequenceClassification",
    "BertForTokenClassification",
    "BertModel",
    "mean_pool",
    "pool",
    "position_ids_for",
]
