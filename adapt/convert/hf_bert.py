"""Hugging Face <-> adapt for BERT, RoBERTa and MiniLM (``model_type`` "bert" / "roberta").

Our module paths equal HF's state-dict prefixes, so the table only renames leaves (``weight`` ->
``kernel`` transposed / ``scale`` / ``embedding``) and swaps ``.`` for ``/``. Three things need care:

- **Prefixes.** Task models keep the backbone under ``bert.``/``roberta.``; a bare ``BertModel``
  checkpoint (as all-MiniLM-L6-v2 ships: ``embeddings.word_embeddings.weight``) has none. The
  table reads the prefix off the checkpoint's keys, so either kind feeds either kind of model.
- **Heads.** Keys of heads the requested architecture does not have (a pretraining ``cls.*``, a
  fine-tuned ``classifier.*``, an unused pooler) are dropped, as ``transformers`` does; every key
  the model does have is checked by name and shape. A head the checkpoint lacks is freshly
  initialised only for classification heads and the pooler (:func:`new_head`).
- **Tied MLM decoder.** Our MLM logits use the word-embedding matrix itself, so HF's
  ``cls.predictions.decoder.{weight,bias}`` / ``lm_head.decoder.*`` (absent from new checkpoints,
  present in old ones, always equal to the tied tensors) are ignored on import and not written on
  export, which is what ``transformers`` writes and reads. Untied checkpoints are refused by the
  config check (``tie_word_embeddings`` must be true).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import jax.numpy as jnp

from adapt.convert.hf import Family
from adapt.convert.hf_config import UnsupportedConfigError, check_fields
from adapt.convert.mapping import IDENTITY, TRANSPOSE, Rule
from adapt.models import bert
from adapt.models.layers import ACTIVATIONS

# architecture -> (model_type it belongs to, module class, has a pooler)
_ARCHITECTURES: dict[str, tuple[str, type, bool]] = {
    "BertModel": ("bert", bert.BertModel, True),
    "BertForSequenceClassification": ("bert", bert.BertForSequenceClassification, True),
    "BertForTokenClassification": ("bert", bert.BertForTokenClassification, False),
    "BertForMaskedLM": ("bert", bert.BertForMaskedLM, False),
    "RobertaModel": ("roberta", bert.BertModel, True),
    "RobertaForSequenceClassification": ("roberta", bert.BertForSequenceClassification, False),
    "RobertaForTokenClassification": ("roberta", bert.BertForTokenClassification, False),
    "RobertaForMaskedLM": ("roberta", bert.BertForMaskedLM, False),
}
_BASE = ("BertModel", "RobertaModel")

# HF config fields that map one-to-one onto BertConfig fields.
_COPIED = (
    "vocab_size",
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "intermediate_size",
    "hidden_act",
    "hidden_dropout_prob",
    "attention_probs_dropout_prob",
    "max_position_embeddings",
    "type_vocab_size",
    "layer_norm_eps",
)
_FIELD_NAMES = {f.name for f in dataclasses.fields(bert.BertConfig)}


# ----------------------------------------------------------------------------------- config
def config_from_hf(hf: dict, **overrides: Any) -> bert.BertConfig:
    """Strictly read a BERT/RoBERTa ``config.json`` dict; ``overrides`` set BertConfig fields."""
    model_type = hf.get("model_type", "bert")
    check_fields(
        hf,
        model_type,
        implemented=_COPIED,
        allowed={
            "model_type": ("bert", "roberta"),
            "hidden_act": tuple(ACTIVATIONS),
            "position_embedding_type": ("absolute",),
            "tie_word_embeddings": (True,),
        },
    )
    hidden, heads = hf.get("hidden_size", 768), hf.get("num_attention_heads", 12)
    if hidden % heads:
        raise UnsupportedConfigError(
            f"hidden_size={hidden} is not a multiple of num_attention_heads={heads}"
        )
    pad = hf.get("pad_token_id", 1 if model_type == "roberta" else 0)
    if model_type == "roberta" and pad is None:
        raise UnsupportedConfigError(
            "roberta needs pad_token_id: its positions are counted from it"
        )
    labels = None
    if hf.get("id2label"):
        labels = tuple(str(v) for _, v in sorted(hf["id2label"].items(), key=lambda kv: int(kv[0])))
    fields: dict[str, Any] = {k: hf[k] for k in _COPIED if k in hf}
    fields.update(
        model_type=model_type,
        pad_token_id=0 if pad is None else int(pad),
        position_offset=int(pad) + 1 if model_type == "roberta" else 0,
        num_labels=len(labels) if labels else int(hf.get("num_labels", 2)),
        id2label=labels,
        classifier_dropout=hf.get("classifier_dropout"),
        initializer_range=hf.get("initializer_range", 0.02),
    )
    unknown = sorted(set(overrides) - _FIELD_NAMES)
    if unknown:
        raise TypeError(f"unknown BertConfig override(s) {unknown}; fields: {sorted(_FIELD_NAMES)}")
    fields.update(overrides)
    labels = fields["id2label"]
    if "num_labels" in overrides and labels is not None and len(labels) != fields["num_labels"]:
        fields["id2label"] = None  # a new head: the old label names no longer apply
    return bert.BertConfig(**fields)


def _expected_position_offset(config: bert.BertConfig) -> int:
    return config.pad_token_id + 1 if config.model_type == "roberta" else 0


def config_to_hf(config: bert.BertConfig, architecture: str) -> dict:
    """A ``config.json`` that ``transformers.AutoModel*.from_pretrained`` builds the same model
    from. Refuses a config transformers would compute differently (other position ids, or a
    sequence classifier that pools otherwise than the architecture's own head)."""
    _check_architecture(config, architecture)
    if _head_kind(architecture) == "seq" and config.effective_pooling != config.native_pooling:
        raise UnsupportedConfigError(
            f"pooling {config.effective_pooling!r} cannot be written as a Hugging Face "
            f"{architecture}, whose head always pools with "
            f"{'its pooler (tanh dense on [CLS])' if config.native_pooling == 'pooler' else 'the <s> token'}; "
            "write adapt's native format instead (export.native=True, or "
            "adapt.convert.native.save_native), which keeps the pooling, or export the encoder "
            "as BertModel (architecture='BertModel') and apply the 'classifier' weights to its "
            f"{config.effective_pooling}-pooled output"
        )
    if config.position_offset != _expected_position_offset(config):
        raise ValueError(
            f"position_offset={config.position_offset} cannot be expressed in a {config.model_type} "
            f"config.json (transformers uses {_expected_position_offset(config)})"
        )
    labels = config.id2label or tuple(f"LABEL_{i}" for i in range(config.num_labels))
    hf = {k: getattr(config, k) for k in _COPIED}
    hf.update(
        architectures=[architecture],
        model_type=config.model_type,
        pad_token_id=config.pad_token_id,
        position_embedding_type="absolute",
        tie_word_embeddings=True,
        classifier_dropout=config.classifier_dropout,
        initializer_range=config.initializer_range,
        is_decoder=False,
        add_cross_attention=False,
        id2label={str(i): name for i, name in enumerate(labels)},
        label2id={name: i for i, name in enumerate(labels)},
    )
    if config.model_type == "roberta":
        hf.update(bos_token_id=0, eos_token_id=2)  # RobertaConfig's defaults; tokenizer concerns
    return hf


# ------------------------------------------------------------------------------------ build
def _check_architecture(config: bert.BertConfig, architecture: str) -> None:
    if architecture not in _ARCHITECTURES:
        raise UnsupportedConfigError(
            f"architecture {architecture!r} is not supported (have: {sorted(_ARCHITECTURES)})"
        )
    want = _ARCHITECTURES[architecture][0]
    if config.model_type != want:
        raise UnsupportedConfigError(
            f"{architecture} is a {want} architecture but the config's model_type is "
            f"{config.model_type!r}"
        )


def build(config: bert.BertConfig, architecture: str):
    _check_architecture(config, architecture)
    return _ARCHITECTURES[architecture][1](config)


def dummy_inputs(config: bert.BertConfig, architecture: str) -> tuple:
    return (jnp.zeros((1, 4), jnp.int32),)


# ------------------------------------------------------------------------------------ table
def _leaves(ours: str, hf: str, kind: str) -> list[Rule]:
    """Rules for one module. ``kind``: dense | norm | embed | param."""
    if kind == "dense":
        return [
            Rule(f"{ours}/kernel", f"{hf}.weight", TRANSPOSE),
            Rule(f"{ours}/bias", f"{hf}.bias"),
        ]
    if kind == "norm":
        return [
            Rule(f"{ours}/scale", f"{hf}.weight"),
            Rule(f"{ours}/bias", f"{hf}.bias"),
            # Checkpoints converted from the original TF BERT (bert-base-uncased's safetensors)
            # still say gamma/beta; transformers renames them on load, so do we (import only:
            # export takes the first matching rule above).
            Rule(f"{ours}/scale", f"{hf}.gamma"),
            Rule(f"{ours}/bias", f"{hf}.beta"),
        ]
    if kind == "embed":
        return [Rule(f"{ours}/embedding", f"{hf}.weight")]
    return [Rule(ours, hf, IDENTITY)]


_BACKBONE = [
    ("embeddings/word_embeddings", "embeddings.word_embeddings", "embed"),
    ("embeddings/position_embeddings", "embeddings.position_embeddings", "embed"),
    ("embeddings/token_type_embeddings", "embeddings.token_type_embeddings", "embed"),
    ("embeddings/LayerNorm", "embeddings.LayerNorm", "norm"),
    ("encoder/layer_{i}/attention/self/query", "encoder.layer.{i}.attention.self.query", "dense"),
    ("encoder/layer_{i}/attention/self/key", "encoder.layer.{i}.attention.self.key", "dense"),
    ("encoder/layer_{i}/attention/self/value", "encoder.layer.{i}.attention.self.value", "dense"),
    (
        "encoder/layer_{i}/attention/output/dense",
        "encoder.layer.{i}.attention.output.dense",
        "dense",
    ),
    (
        "encoder/layer_{i}/attention/output/LayerNorm",
        "encoder.layer.{i}.attention.output.LayerNorm",
        "norm",
    ),
    ("encoder/layer_{i}/intermediate/dense", "encoder.layer.{i}.intermediate.dense", "dense"),
    ("encoder/layer_{i}/output/dense", "encoder.layer.{i}.output.dense", "dense"),
    ("encoder/layer_{i}/output/LayerNorm", "encoder.layer.{i}.output.LayerNorm", "norm"),
    ("pooler/dense", "pooler.dense", "dense"),
]

_HEADS = {
    ("bert", "seq"): [("classifier", "classifier", "dense")],
    ("roberta", "seq"): [
        ("classifier/dense", "classifier.dense", "dense"),
        ("classifier/out_proj", "classifier.out_proj", "dense"),
    ],
    ("bert", "tok"): [("classifier", "classifier", "dense")],
    ("roberta", "tok"): [("classifier", "classifier", "dense")],
    ("bert", "mlm"): [
        ("cls/predictions/transform/dense", "cls.predictions.transform.dense", "dense"),
        ("cls/predictions/transform/LayerNorm", "cls.predictions.transform.LayerNorm", "norm"),
        ("cls/predictions/bias", "cls.predictions.bias", "param"),
    ],
    ("roberta", "mlm"): [
        ("lm_head/dense", "lm_head.dense", "dense"),
        ("lm_head/layer_norm", "lm_head.layer_norm", "norm"),
        ("lm_head/bias", "lm_head.bias", "param"),
    ],
}


def _head_kind(architecture: str) -> str | None:
    for suffix, kind in (
        ("ForSequenceClassification", "seq"),
        ("ForTokenClassification", "tok"),
        ("ForMaskedLM", "mlm"),
    ):
        if architecture.endswith(suffix):
            return kind
    return None


def table(config: bert.BertConfig, architecture: str, hf_keys: Sequence[str] | None) -> list[Rule]:
    """Conversion rules for ``architecture``. On import (``hf_keys`` given) the backbone's HF
    prefix is whatever the checkpoint uses; on export it is what transformers expects."""
    _check_architecture(config, architecture)
    base = architecture in _BASE
    name = config.model_type
    ours_prefix = "" if base else f"{name}/"
    if hf_keys is None:
        hf_prefix = "" if base else f"{name}."
    else:
        hf_prefix = f"{name}." if any(k.startswith(f"{name}.") for k in hf_keys) else ""
    rules = []
    for ours, hf, kind in _BACKBONE:
        rules += _leaves(ours_prefix + ours, hf_prefix + hf, kind)
    kind = _head_kind(architecture)
    heads = _HEADS.get((name, kind), [])
    if kind == "seq" and config.effective_pooling != config.native_pooling:
        heads = [("classifier", "classifier", "dense")]  # one linear layer on the pooled vector
    for ours, hf, leaf_kind in heads:
        rules += _leaves(ours, hf, leaf_kind)
    return rules


def new_head(architecture: str) -> list[str]:
    """Our leaves a checkpoint may lack: a classification head (the usual fine-tuning start from
    a base encoder) and the pooler (absent from checkpoints saved without one). The MLM head is
    pretrained, so it is never silently re-initialised."""
    prefix = "" if architecture in _BASE else f"{_ARCHITECTURES[architecture][0]}/"
    allowed = [f"{prefix}pooler/.*"] if _ARCHITECTURES[architecture][2] else []
    if _head_kind(architecture) in ("seq", "tok"):
        allowed.append("classifier/.*")
    return allowed


FAMILY = Family(
    name="bert",
    model_types=("bert", "roberta"),
    architectures=tuple(_ARCHITECTURES),
    config_from_hf=config_from_hf,
    config_to_hf=config_to_hf,
    build=build,
    dummy_inputs=dummy_inputs,
    table=table,
    poolings=bert.POOLINGS,
    ignore=(
        r"(.+\.)?embeddings\.(position_ids|token_type_ids)",  # buffers, not weights
        r"((bert|roberta)\.)?pooler\..*",  # a pooler the requested architecture lacks
        r"cls\..*",  # BERT pretraining heads, incl. the tied cls.predictions.decoder.*
        r"lm_head\..*",  # RoBERTa's MLM head, incl. the tied lm_head.decoder.*
        r"classifier\..*",  # a fine-tuned head loaded into another architecture
    ),
    new_head=new_head,
)

__all__ = ["FAMILY", "build", "config_from_hf", "config_to_hf", "table"]
