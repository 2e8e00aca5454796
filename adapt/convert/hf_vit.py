"""Hugging Face ``vit`` checkpoints <-> :mod:`adapt.models.vit`.

Key layouts. ``transformers`` (v4, and v5 on save) and the hub write the *legacy* layout
(``vit.encoder.layer.{i}.attention.attention.query.weight``); our module paths mirror it and export
writes it. v5's in-memory ``state_dict()`` uses a renamed layout (``vit.layers.{i}.attention.
q_proj.weight``, ``mlp.fc1``...), which anyone saving ``model.state_dict()`` by hand gets; import
reads it too, through extra rules placed after the legacy ones (export takes the first match).

Prefixes. A task model's backbone lives under ``vit.``; a bare ``ViTModel`` checkpoint has no
prefix. The table looks at the checkpoint's keys, so either feeds either architecture: a base
checkpoint gets a freshly initialised ``classifier``, and a classification checkpoint loaded as
``ViTModel`` drops its classifier and gets a fresh pooler (both exactly what transformers does).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax.numpy as jnp
import numpy as np

from adapt.convert.hf import Family
from adapt.convert.hf_config import UnsupportedConfigError, as_dict, check_fields
from adapt.convert.mapping import CONV_OIHW_TO_HWIO, IDENTITY, TRANSPOSE, Rule
from adapt.models.layers import ACTIVATIONS
from adapt.models.vit import POOLINGS, ViTConfig, ViTForImageClassification, ViTModel

ARCHITECTURES = ("ViTForImageClassification", "ViTModel")

_FIELDS = (
    "image_size",
    "patch_size",
    "num_channels",
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "intermediate_size",
    "hidden_dropout_prob",
    "attention_probs_dropout_prob",
    "layer_norm_eps",
    "qkv_bias",
    "pooler_output_size",
    "initializer_range",
)
# encoder_stride only sizes the pixel-shuffle decoder of ViTForMaskedImageModeling, which we do not
# build; it never touches the encoder or classifier, so it is accepted and dropped on purpose.
_IGNORED = ("encoder_stride",)


def _size(value: Any) -> int | tuple[int, int]:
    if isinstance(value, int):
        return value
    if (
        isinstance(value, list | tuple)
        and len(value) == 2
        and all(isinstance(v, int) for v in value)
    ):
        return (value[0], value[1])
    raise UnsupportedConfigError(f"image_size/patch_size {value!r}: expected an int or [h, w]")


def config_from_hf(hf: Any, **overrides: Any) -> ViTConfig:
    """Strict: any field that would change the numbers and that we do not implement raises."""
    hf = as_dict(hf)
    check_fields(
        hf,
        "vit",
        implemented=(*_FIELDS, *_IGNORED),
        allowed={"hidden_act": ACTIVATIONS, "pooler_act": ACTIVATIONS},
    )
    kwargs: dict[str, Any] = {k: hf[k] for k in _FIELDS if k in hf}
    for k in ("image_size", "patch_size"):
        if k in kwargs:
            kwargs[k] = _size(kwargs[k])
    for k in ("hidden_act", "pooler_act"):
        if k in hf:
            kwargs[k] = hf[k]
    id2label = hf.get("id2label") or {}
    labels = tuple(str(v) for _, v in sorted((int(k), v) for k, v in id2label.items()))
    kwargs["num_labels"] = hf.get("num_labels", len(labels) or 2)
    kwargs["id2label"] = labels
    kwargs.update(overrides)
    if len(kwargs["id2label"]) != kwargs["num_labels"]:
        kwargs["id2label"] = ()  # a new head: the old class names no longer apply
    return ViTConfig(**kwargs)


def config_to_hf(config: ViTConfig, architecture: str) -> dict:
    """A ``config.json`` that ``transformers.ViTConfig`` reads back to the same model."""
    if architecture == "ViTForImageClassification" and config.pooling not in (None, "cls"):
        raise UnsupportedConfigError(
            f"pooling {config.pooling!r} cannot be written as a Hugging Face "
            "ViTForImageClassification, whose classifier reads the [CLS] token; write adapt's "
            "native format instead (export.native=True, or adapt.convert.native.save_native)"
        )
    hf: dict[str, Any] = {
        k: list(v) if isinstance(v, tuple) else v
        for k, v in ((k, getattr(config, k)) for k in _FIELDS)
    }
    hf.update(
        model_type="vit",
        architectures=[architecture],
        hidden_act=config.hidden_act,
        pooler_act=config.pooler_act,
        dtype=np.dtype(config.param_dtype).name,
    )
    if hf["pooler_output_size"] is None:
        del hf["pooler_output_size"]
    if architecture == "ViTForImageClassification":
        names = config.id2label or tuple(f"LABEL_{i}" for i in range(config.num_labels))
        hf["id2label"] = {str(i): n for i, n in enumerate(names)}
        hf["label2id"] = {n: i for i, n in enumerate(names)}
    return hf


def build(config: ViTConfig, architecture: str):
    if architecture == "ViTForImageClassification":
        return ViTForImageClassification(config)
    if architecture == "ViTModel":
        return ViTModel(config)
    raise UnsupportedConfigError(f"architecture {architecture!r} (supported: {ARCHITECTURES})")


def dummy_inputs(config: ViTConfig, architecture: str) -> tuple:
    """One NHWC zero image at the configured size."""
    h, w = (config.image_size,) * 2 if isinstance(config.image_size, int) else config.image_size
    return (jnp.zeros((1, h, w, config.num_channels), config.dtype),)


# Per-layer rules: (our path below layer_{i}, legacy HF name, v5 state_dict name, transform).
_LAYER = (
    ("attention/attention/query", "attention.attention.query", "attention.q_proj"),
    ("attention/attention/key", "attention.attention.key", "attention.k_proj"),
    ("attention/attention/value", "attention.attention.value", "attention.v_proj"),
    ("attention/output/dense", "attention.output.dense", "attention.o_proj"),
    ("intermediate/dense", "intermediate.dense", "mlp.fc1"),
    ("output/dense", "output.dense", "mlp.fc2"),
)
_NORMS = ("layernorm_before", "layernorm_after")


def _backbone_rules(ours: str, hf: str) -> list[Rule]:
    """Rules for one prefix pair (``ours``/``hf`` end in their separator or are empty)."""
    legacy, renamed = [], []
    for path, old, new in _LAYER:
        for leaf, hf_leaf, t in (("kernel", "weight", TRANSPOSE), ("bias", "bias", IDENTITY)):
            our = f"{ours}encoder/layer_{{i}}/{path}/{leaf}"
            legacy.append(Rule(our, f"{hf}encoder.layer.{{i}}.{old}.{hf_leaf}", t))
            renamed.append(Rule(our, f"{hf}layers.{{i}}.{new}.{hf_leaf}", t))
    for norm in _NORMS:
        for leaf, hf_leaf in (("scale", "weight"), ("bias", "bias")):
            our = f"{ours}encoder/layer_{{i}}/{norm}/{leaf}"
            legacy.append(Rule(our, f"{hf}encoder.layer.{{i}}.{norm}.{hf_leaf}"))
            renamed.append(Rule(our, f"{hf}layers.{{i}}.{norm}.{hf_leaf}"))
    emb = [
        Rule(f"{ours}embeddings/cls_token", f"{hf}embeddings.cls_token"),
        Rule(f"{ours}embeddings/position_embeddings", f"{hf}embeddings.position_embeddings"),
        Rule(
            f"{ours}embeddings/patch_embeddings/projection/kernel",
            f"{hf}embeddings.patch_embeddings.projection.weight",
            CONV_OIHW_TO_HWIO,
        ),
        Rule(
            f"{ours}embeddings/patch_embeddings/projection/bias",
            f"{hf}embeddings.patch_embeddings.projection.bias",
        ),
        Rule(f"{ours}layernorm/scale", f"{hf}layernorm.weight"),
        Rule(f"{ours}layernorm/bias", f"{hf}layernorm.bias"),
        Rule(f"{ours}pooler/dense/kernel", f"{hf}pooler.dense.weight", TRANSPOSE),
        Rule(f"{ours}pooler/dense/bias", f"{hf}pooler.dense.bias"),
    ]
    return emb + legacy + renamed


def table(config: ViTConfig, architecture: str, hf_keys: Sequence[str] | None) -> list[Rule]:
    prefixed = architecture == "ViTForImageClassification"
    if hf_keys is not None:  # import: follow the checkpoint's own prefix
        prefixed = any(k.startswith("vit.") for k in hf_keys)
    ours = "vit/" if architecture == "ViTForImageClassification" else ""
    rules = _backbone_rules(ours, "vit." if prefixed else "")
    if architecture == "ViTForImageClassification":
        rules += [
            Rule("classifier/kernel", "classifier.weight", TRANSPOSE),
            Rule("classifier/bias", "classifier.bias"),
        ]
    return rules


def new_head(architecture: str) -> list[str]:
    if architecture == "ViTForImageClassification":
        return [r"classifier/(kernel|bias)"]
    return [r"pooler/dense/(kernel|bias)"]


FAMILY = Family(
    name="vit",
    model_types=("vit",),
    architectures=ARCHITECTURES,
    config_from_hf=config_from_hf,
    config_to_hf=config_to_hf,
    build=build,
    dummy_inputs=dummy_inputs,
    table=table,
    # Heads the requested architecture does not have: a classification checkpoint's classifier when
    # loading its backbone as ViTModel, a base checkpoint's pooler under a classifier. Only
    # consulted for keys no rule of the requested architecture claims.
    ignore=(r"classifier\.(weight|bias)", r"(vit\.)?pooler\.dense\.(weight|bias)"),
    new_head=new_head,
    poolings=POOLINGS,
)

__all__ = ["FAMILY", "config_from_hf", "config_to_hf"]
