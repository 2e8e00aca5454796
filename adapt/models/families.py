"""The model-family registry: everything the rest of adapt needs to know about a family, in one
record per family.

The harness, the methods, sharding, the optimizer and the PEFT format never name a family; they
ask its record (``families.get(name)``) how to feed it a batch, where its task head is, what LoRA,
IA3 and the adapters attach to by default, which kernels return to the residual stream (tensor
parallelism's row-parallel layers), which layer a parameter belongs to (LLRD, gradual
unfreezing), how PEFT lays out its prompts, which module converts its Hugging Face checkpoints and
which other checkpoint formats (``model.kind``) load into it.

To add a family: its model file in ``adapt/models/``, its converter in ``adapt/convert/`` (a
module with a ``FAMILY`` :class:`adapt.convert.hf.Family`), and one :class:`ModelFamily` in
:data:`FAMILIES` below. Nothing else changes.

The records hold data and small functions of a batch or a config only; converters and loaders are
named by module path and imported when used, so this module imports no model and no converter.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import cache
from typing import Any

import jax.numpy as jnp

from adapt.errors import AdaptError


class UnknownFamilyError(AdaptError, ValueError):
    """A family, a model kind or a family default that no record describes."""


class ModelOptionError(AdaptError, ValueError):
    """A ``model.*`` option that the chosen checkpoint format cannot take."""


@dataclass(frozen=True)
class ModelFamily:
    """One family. Regexes match parameter / module paths (``bert/encoder/layer_0/...``) in full.

    - ``inputs``: the batch key the model reads first (``input_ids`` or ``pixel_values``).
    - ``feed(batch, train, update_stats) -> (args, kwargs)``: how a batch calls ``module.apply``
      (``update_stats``: a model with batch statistics updates them; kwargs then name ``mutable``).
    - ``example_inputs(config) -> tuple``: positional arguments for ``module.init`` /
      ``jax.eval_shape`` (parameter shapes never depend on them).
    - ``head``: the task head's leaves (replaced, probed, always trained); None: a causal LM keeps
      its pretrained output layer.
    - ``lora_targets`` / ``all_linear``: LoRA's default modules (attention query and value, Hu et
      al.'s and PEFT's default) and every linear layer of the blocks (QLoRA's recipe).
    - ``ia3``: (targets, feed-forward targets) as PEFT's defaults; ``adapters``: (attention output,
      FFN output) projections, Houlsby's two sites (Pfeiffer's is the second).
    - ``row_parallel``: kernels whose output returns to the residual stream (Megatron's
      row-parallel layers: sharded on their input dimension under tensor parallelism).
    - ``layer``: group 1 is the block index of a parameter; ``embeddings``: depth 0 for LLRD.
    - ``num_layers_field``: the config field that counts the blocks (gradual unfreezing, LLRD).
    - ``peft_prompt``: how PEFT's prompt tuning enters the model: ``"virtual_tokens"`` (virtual
      word embeddings before position embeddings and LayerNorm), ``"inputs"`` (prepended to the
      input embeddings), None (PEFT has no prompt tuning for it here).
    - ``converter``: the module whose ``FAMILY`` reads and writes Hugging Face checkpoints.
    - ``loaders``: other ``model.kind`` values and the ``"module:function"`` that loads them (see
      :class:`Loaded`); ``pathless``: those of them built from ``model.config`` alone.
    """

    name: str
    inputs: str
    feed: Callable[[Mapping[str, Any], bool, bool], tuple[tuple, dict]]
    example_inputs: Callable[[Any], tuple]
    head: str | None
    lora_targets: str | None = None
    all_linear: str | None = None
    ia3: tuple[str, str] | None = None
    adapters: tuple[str, str] | None = None
    row_parallel: tuple[str, ...] = ()
    layer: str | None = None
    embeddings: str | None = None
    num_layers_field: str | None = None
    peft_prompt: str | None = None
    converter: str | None = None
    loaders: Mapping[str, str] = field(default_factory=dict)
    pathless: tuple[str, ...] = ()

    def default(self, what: str) -> Any:
        """A default of this family (``"lora_targets"``, ``"ia3"``...) or an error saying so."""
        value = getattr(self, what)
        if value is None:
            raise UnknownFamilyError(
                f"the {self.name} family has no default {what.replace('_', ' ')}; pass targets "
                "explicitly (a regex of module paths)"
            )
        return value


@dataclass
class Loaded:
    """What a ``loaders`` function returns.

    A loader is called as ``load(path, *, num_labels, pooling, overrides, rng)``: ``path`` the
    resolved ``model.path`` (None when unset), ``overrides`` the config fields to set (``dtype``
    included). ``scratch`` says the kind has no weights to load (the caller initialises the
    module)."""

    module: Any
    params: dict
    model_state: dict
    config: Any
    architecture: str | None
    scratch: bool = False


def _tokens(batch: Mapping[str, Any], train: bool, update_stats: bool) -> tuple[tuple, dict]:
    return (batch["input_ids"],), {
        "attention_mask": batch["attention_mask"],
        "token_type_ids": batch.get("token_type_ids"),
        "deterministic": not train,
    }


def _decoder_tokens(
    batch: Mapping[str, Any], train: bool, update_stats: bool
) -> tuple[tuple, dict]:
    return (batch["input_ids"],), {
        "attention_mask": batch["attention_mask"],
        "deterministic": not train,
    }


def _pixels(batch: Mapping[str, Any], train: bool, update_stats: bool) -> tuple[tuple, dict]:
    return (batch["pixel_values"],), {"deterministic": not train}


def _pixels_batch_norm(
    batch: Mapping[str, Any], train: bool, update_stats: bool
) -> tuple[tuple, dict]:
    use_batch = train and update_stats  # batch statistics in training, running ones otherwise
    kwargs: dict[str, Any] = {"train": use_batch}
    if use_batch:
        kwargs["mutable"] = ["batch_stats"]
    return (batch["pixel_values"],), kwargs


def _token_example(config: Any) -> tuple:
    return (jnp.ones((1, 8), jnp.int32),)


def _image_example(config: Any) -> tuple:
    size = getattr(config, "image_size", 32)
    size = size if isinstance(size, tuple | list) else (size, size)
    return (jnp.zeros((1, *size, getattr(config, "num_channels", 3)), jnp.float32),)


# Encoder blocks named as Hugging Face's BERT and ViT name them.
_ENCODER_ROWS = (r".*attention/output/dense(/[^/]+)?", r".*layer_\d+/output/dense(/[^/]+)?")

FAMILIES: dict[str, ModelFamily] = {
    f.name: f
    for f in (
        ModelFamily(
            name="bert",  # BERT, RoBERTa, MiniLM and the sentence-transformers built on them
            inputs="input_ids",
            feed=_tokens,
            example_inputs=_token_example,
            head=r"(classifier|cls|lm_head)/.*",
            lora_targets=r".*attention/self/(query|value)",
            all_linear=r".*layer_\d+/.*(query|key|value|dense)",
            # PEFT matches "output.dense" as a suffix, so IA3 also scales the input of the
            # attention output projection; kept for parity with PEFT's adapters.
            ia3=(r".*attention/self/(key|value)|.*output/dense", r".*output/dense"),
            adapters=(r".*layer_\d+/attention/output/dense", r".*layer_\d+/output/dense"),
            row_parallel=(*_ENCODER_ROWS, r".*out_proj(/[^/]+)?"),  # out_proj: RoBERTa's head
            layer=r"(?:^|/)layer_(\d+)(?:/|$)",
            embeddings=r"(?:^|/)embeddings(?:/|$)",
            num_layers_field="num_hidden_layers",
            peft_prompt="virtual_tokens",
            converter="adapt.convert.hf_bert",
        ),
        ModelFamily(
            name="vit",
            inputs="pixel_values",
            feed=_pixels,
            example_inputs=_image_example,
            head=r"classifier/.*",
            lora_targets=r".*attention/attention/(query|value)",
            all_linear=r".*layer_\d+/.*(query|key|value|dense)",
            ia3=(r".*attention/attention/(key|value)|.*output/dense", r".*output/dense"),
            adapters=(r".*layer_\d+/attention/output/dense", r".*layer_\d+/output/dense"),
            row_parallel=_ENCODER_ROWS,
            layer=r"(?:^|/)layer_(\d+)(?:/|$)",
            embeddings=r"(?:^|/)embeddings(?:/|$)",
            num_layers_field="num_hidden_layers",
            converter="adapt.convert.hf_vit",
            loaders={"vit": "adapt.models.vit:scratch_for_run"},  # from scratch, no weights
            pathless=("vit",),
        ),
        ModelFamily(
            name="llama",
            inputs="input_ids",
            feed=_decoder_tokens,
            example_inputs=_token_example,
            head=None,  # a causal LM keeps its pretrained output layer
            lora_targets=r".*self_attn/(q_proj|v_proj)",
            all_linear=r".*layers_\d+/.*_proj",
            ia3=(r".*self_attn/(k_proj|v_proj)|.*mlp/down_proj", r".*mlp/down_proj"),
            adapters=(r".*self_attn/o_proj", r".*mlp/down_proj"),
            row_parallel=(r".*o_proj(/[^/]+)?", r".*down_proj(/[^/]+)?"),
            layer=r"(?:^|/)layers_(\d+)(?:/|$)",
            embeddings=r"(?:^|/)embed_tokens(?:/|$)",
            num_layers_field="num_hidden_layers",
            peft_prompt="inputs",
            converter="adapt.convert.hf_llama",
            loaders={"llama2c": "adapt.convert.llama2c:load_for_run"},
        ),
        ModelFamily(
            name="resnet",
            inputs="pixel_values",
            feed=_pixels_batch_norm,
            example_inputs=_image_example,
            head=r"(linear|fc)/.*",
            # every convolution of the residual blocks (PEFT's Conv2d LoRA: k x k down, 1 x 1 up)
            lora_targets=r".*layer\d+_\d+/conv\d+",
            loaders={"resnet_cifar": "adapt.convert.resnet_cifar:load_for_run"},
        ),
    )
}

# Qwen2 / Qwen2.5: LLaMA's module names and layout (q/k/v biases aside), so LLaMA's defaults hold.
FAMILIES["qwen2"] = dataclasses.replace(
    FAMILIES["llama"], name="qwen2", converter="adapt.convert.hf_qwen2", loaders={}
)

# Block and embedding names of other codebases (GPT-2's h_3 and wte, timm's blocks_3), so LLRD
# and gradual unfreezing also layer a user's own model the usual way.
_OTHER_LAYERS = r"(?:^|/)(?:h|blocks?)_(\d+)(?:/|$)"
_OTHER_EMBEDDINGS = r"(?:^|/)(?:patch_embed|wte|wpe)(?:/|$)"


def get(name: str | ModelFamily) -> ModelFamily:
    """The record of family ``name`` (a record is returned as it is)."""
    if isinstance(name, ModelFamily):
        return name
    if name not in FAMILIES:
        raise UnknownFamilyError(f"unknown model family {name!r}; registered: {sorted(FAMILIES)}")
    return FAMILIES[name]


def model_kinds() -> tuple[str, ...]:
    """Every ``model.kind``: ``hf`` (a Hugging Face or adapt native folder) and the families'
    other formats."""
    return ("hf", *(kind for f in FAMILIES.values() for kind in f.loaders))


def loader(kind: str) -> tuple[ModelFamily, Callable[..., Loaded]]:
    """The family and the function that load ``model.kind=kind`` (any kind but ``hf``)."""
    import importlib

    for fam in FAMILIES.values():
        if kind in fam.loaders:
            module, function = fam.loaders[kind].split(":")
            return fam, getattr(importlib.import_module(module), function)
    raise UnknownFamilyError(f"model.kind {kind!r} is not one of {', '.join(model_kinds())}")


def needs_path(kind: str) -> bool:
    """Whether ``model.kind=kind`` reads weights from ``model.path``."""
    return not any(kind in f.pathless for f in FAMILIES.values())


def converters() -> list[str]:
    """Modules holding each family's Hugging Face converter (``FAMILY``), in registry order."""
    return [f.converter for f in FAMILIES.values() if f.converter]


@cache
def _union(what: str, *extra: str) -> re.Pattern:
    patterns = {getattr(f, what) for f in FAMILIES.values() if getattr(f, what)} | set(extra)
    return re.compile("|".join(f"(?:{p})" for p in sorted(patterns)))


def layer_index(path: str) -> int | None:
    """The block index of a parameter path in any registered family (or the usual names of other
    codebases), None outside the blocks."""
    m = _union("layer", _OTHER_LAYERS).search(path)
    return None if m is None else int(next(g for g in m.groups() if g is not None))


def is_embedding(path: str) -> bool:
    return _union("embeddings", _OTHER_EMBEDDINGS).search(path) is not None


@cache
def row_parallel() -> re.Pattern:
    """Every registered family's row-parallel kernels (paths are family-specific enough that one
    pattern serves all; a user's own model names its own in the sharding rules)."""
    rows = sorted({p for f in FAMILIES.values() for p in f.row_parallel})
    return re.compile("|".join(f"(?:{p})" for p in rows))


__all__ = [
    "FAMILIES",
    "Loaded",
    "ModelFamily",
    "ModelOptionError",
    "UnknownFamilyError",
    "converters",
    "get",
    "is_embedding",
    "layer_index",
    "loader",
    "model_kinds",
    "needs_path",
    "row_parallel",
]
