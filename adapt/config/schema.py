"""The run config, parsed once into typed sections that hold every default.

A config file's ``get_config(arg)`` returns an ``ml_collections.ConfigDict`` (or a dict) that
gives only what differs from the defaults below. :meth:`RunConfig.parse` checks it (unknown
keys are errors that name the key and suggest the nearest known one; values must have the
field's type) and fills in every default, so

- the harness reads ``config.train.batch_size``, never ``get(section, key, default)``, and each
  default lives in exactly one place (the dataclass fields here);
- every key can be set from the command line (``--config.train.grad_accum=2``) whether or not the
  config file mentions it (:func:`adapt.config.overrides.apply_overrides`, used by
  :mod:`adapt.harness.command_line`);
- ``config.json`` in a workdir records every value the run used (:meth:`RunConfig.to_dict`).

:func:`adapt.harness.validation.check_run` then checks values (finite, in range, consistent)
before anything is loaded or written. Free-form places are ``model.config`` (model config fields), ``method.options``
(the method's keyword arguments, checked by the method), ``optim.groups`` (one
:class:`GroupSpec`-shaped dict per partition label, checked against the labels once the model is
built) and the image ``preprocessing``/``augmentation`` dicts.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from collections.abc import Mapping, Sequence
from typing import Any, Self

import ml_collections

from adapt.errors import AdaptError

__all__ = [
    "CheckpointSection",
    "ConfigError",
    "DataSection",
    "ExportSection",
    "GroupSpec",
    "MeshSection",
    "MethodSection",
    "ModelSection",
    "OptimSection",
    "RegularizerSection",
    "RunConfig",
    "SourceTaskSection",
    "TrainSection",
    "WiseSection",
    "suggest",
    "is_finite_number",
    "to_dict",
]


class ConfigError(AdaptError, ValueError):
    """A config key adapt does not know, or a value it cannot use."""


def suggest(key: str, known: Sequence[str]) -> str:
    """`` (did you mean 'x'?)`` for the nearest known key, else a list of the known keys."""
    close = difflib.get_close_matches(key, list(known), n=1, cutoff=0.6)
    if close:
        return f" (did you mean {close[0]!r}?)"
    return f" (known: {', '.join(sorted(known))})"


# --------------------------------------------------------------------------------- sections
class Section:
    """A typed config section: a frozen dataclass parsed from a mapping."""

    FREE_FORM: typing.ClassVar[frozenset[str]] = frozenset()  # dict fields with any keys

    @classmethod
    def keys(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def hints(cls) -> dict[str, Any]:
        return typing.get_type_hints(cls)

    @classmethod
    def parse(cls, raw: Any, where: str, problems: list[str]) -> Self:
        """The section from ``raw`` (a mapping or None); problems are appended, not raised."""
        if raw is None:
            return cls()
        if isinstance(raw, cls):
            return raw
        if not isinstance(raw, Mapping | ml_collections.ConfigDict):
            problems.append(f"{where} must be a dict of settings, got {type(raw).__name__}")
            return cls()
        known, hints, values = cls.keys(), cls.hints(), {}
        for key, value in to_dict(raw).items():
            if key not in known:
                problems.append(f"unknown config key {where}.{key}{suggest(key, known)}")
                continue
            hint = hints[key]
            if isinstance(hint, type) and issubclass(hint, Section):
                values[key] = hint.parse(value, f"{where}.{key}", problems)
                continue
            problem = _type_problem(value, hint)
            if problem:
                problems.append(f"{where}.{key} {problem}")
                continue
            values[key] = _normalise(value)
        return cls(**values)

    @classmethod
    def parse_one(cls, raw: Any, where: str) -> Self:
        """:meth:`parse` raising the problems (for library callers that pass one section)."""
        problems: list[str] = []
        section = cls.parse(raw, where, problems)
        if problems:
            raise ConfigError(f"{where} problems:\n  " + "\n  ".join(problems))
        return section

    def to_dict(self) -> dict[str, Any]:
        return {f.name: _plain(getattr(self, f.name)) for f in dataclasses.fields(self)}


def _plain(value: Any) -> Any:
    if isinstance(value, Section):
        return value.to_dict()
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def _normalise(value: Any) -> Any:
    """ConfigDicts to dicts, tuples to lists: sections hold JSON-like values."""
    if isinstance(value, ml_collections.ConfigDict):
        value = value.to_dict()
    if isinstance(value, Mapping):
        return {k: _normalise(v) for k, v in value.items()}
    if isinstance(value, tuple):
        return [_normalise(v) for v in value]
    if isinstance(value, list):
        return [_normalise(v) for v in value]
    return value


def _options(hint: Any) -> tuple[Any, ...]:
    """The alternatives of a union type (``int | None`` -> ``(int, NoneType)``)."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return typing.get_args(hint)
    return (hint,)


def _type_problem(value: Any, hint: Any) -> str | None:
    """Why ``value`` does not fit the annotation ``hint`` (None if it does)."""
    for option in _options(hint):
        origin = typing.get_origin(option) or option
        if option is type(None) and value is None:
            return None
        if origin is Any:
            return None
        if origin is bool and isinstance(value, bool):
            return None
        if origin is int and isinstance(value, int) and not isinstance(value, bool):
            return None
        if origin is float and isinstance(value, int | float) and not isinstance(value, bool):
            return None
        if origin is str and isinstance(value, str):
            return None
        if origin in (list, tuple) and isinstance(value, list | tuple):
            return None
        if origin is dict and isinstance(value, Mapping | ml_collections.ConfigDict):
            return None
    names = " or ".join(getattr(o, "__name__", str(o)) for o in _options(hint))
    return f"must be {names.replace('NoneType', 'None')}, got {value!r}"


@dataclasses.dataclass(frozen=True)
class ModelSection(Section):
    kind: str = "hf"  # hf, or a format a family's record loads (families.model_kinds())
    path: str | None = None  # local dir/file, PyPI-packaged or hub model name
    # e.g. a *ForSequenceClassification class (default: the dir's); "classifier": the family's
    # sequence or image classifier (configs/text/classify.py takes any checkpoint)
    architecture: str | None = None
    init: str = "pretrained"  # pretrained | scratch (the same architecture, random init)
    dtype: str = "float32"  # compute dtype
    frozen_dtype: str | None = None  # storage dtype of frozen leaves (None: as loaded)
    config: dict = dataclasses.field(default_factory=dict)  # model config fields to override
    head: str | None = None  # regex of the task head's leaves (default: the family's)
    new_head: bool = False  # a fresh head even when the checkpoint's fits by shape
    # classifier pooling: cls | pooler | mean (text encoders), cls | gap (images); None: what the
    # checkpoint was trained for (a sentence-transformers folder's pooling, else the
    # architecture's own head)
    pooling: str | None = None
    train_batch_stats: bool = True  # BatchNorm models: batch statistics while training

    FREE_FORM = frozenset({"config"})


@dataclasses.dataclass(frozen=True)
class MethodSection(Section):
    name: str = "full"  # a method of adapt.methods.METHODS or a recipe (full, linear_probe ...)
    options: dict = dataclasses.field(default_factory=dict)  # the method's keyword arguments
    # "fresh": a new head as initialised; "probe": first fit the head to convergence on the
    # frozen model's features (logistic regression, L-BFGS), then train (LP-FT's start)
    head_init: str = "fresh"
    probe_c: float = 10.0  # inverse L2 strength of that fit (scikit-learn's C)
    trainable: str | None = None  # method 'partial': regex of the leaves to train
    stages: list | None = None  # steps per stage (gradual unfreezing, LP-FT); None: equal
    head: str | None = None  # regex of the head's leaves (default: model.head or the family's)

    FREE_FORM = frozenset({"options"})


@dataclasses.dataclass(frozen=True)
class GroupSpec(Section):
    """One optimizer group (``optim.default``, or a label's ``optim.groups.<label>``)."""

    optimizer: str = "adamw"  # adamw | adam | sgd
    lr: float = 1e-3
    schedule: str = "constant"  # constant | warmup_cosine | warmup_linear | slanted_triangular
    warmup_steps: int = 0
    warmup_fraction: float = 0.0  # or warmup over this fraction of the steps (epoch budgets)
    end_fraction: float = 0.0  # final LR as a fraction of the peak (cosine/linear decay)
    cut_fraction: float = 0.1  # slanted triangular: fraction of steps spent rising
    weight_decay: float = 0.0  # decoupled; not on biases, norms and embeddings (decay_mask)
    decay_mask: str | None = None  # regex of leaves *not* to decay (default: bias/norm/embed)
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8
    momentum: float = 0.0  # sgd
    clip_norm: float = 0.0  # global-norm clipping of the group's gradients (0: none)


@dataclasses.dataclass(frozen=True)
class OptimSection(Section):
    default: GroupSpec = GroupSpec()  # settings of every group, unless the group overrides
    groups: dict = dataclasses.field(default_factory=dict)  # label -> GroupSpec keys to override
    layerwise_decay: float | None = None  # ELECTRA-style layer-wise LR decay factor

    @classmethod
    def parse(cls, raw: Any, where: str, problems: list[str]) -> OptimSection:
        section = super().parse(raw, where, problems)
        groups = {}
        for label, spec in section.groups.items():  # partial: only the keys given
            GroupSpec.parse(spec, f"{where}.groups.{label}", problems)
            given = to_dict(spec) if isinstance(spec, Mapping) else {}
            groups[label] = {k: v for k, v in given.items() if k in GroupSpec.keys()}  # noqa: SIM118
        return dataclasses.replace(section, groups=groups)

    def group(self, label: str) -> dict[str, Any]:
        """The settings of one label's group: ``default`` with the group's overrides."""
        return {**self.default.to_dict(), **self.groups.get(label, {})}


@dataclasses.dataclass(frozen=True)
class TrainSection(Section):
    batch_size: int = 32
    steps: int = 0  # optimizer steps in all; or:
    epochs: float = 0.0  # passes over the training examples (steps = ceil(epochs * N / batch))
    grad_accum: int = 1  # micro-batches per step (the batch is split; same tokens weighting)
    remat: str = "none"  # per-layer rematerialisation policy (adapt.remat.POLICIES)
    log_every: int = 10
    eval_every: int = 0  # 0: evaluate at the end only
    eval_every_epochs: float = 0.0  # or every this many epochs (steps known once data is read)
    eval_batch_size: int = 0  # 0: batch_size
    length_grouping: int = 0  # sort lengths within chunks of this many batches (0: off)
    progress: bool | None = None  # progress bar (None: when stderr is a terminal)
    # model selection on the validation split (data.val_fraction), evaluated every eval_every
    # steps and at step 0: the final model is the best one by this metric ("accuracy", "loss"
    # ...), and the run stops after early_stopping evaluations without improvement (0: never)
    select_best: str | None = None
    early_stopping: int = 0
    # after selection, train again on the training and validation examples together for the
    # chosen number of epochs (<workdir>/refit), and report that model: few-label budgets
    # cannot spare a fifth of their labels for validation alone
    refit: bool = False

    @property
    def eval_batch(self) -> int:
        return self.eval_batch_size or self.batch_size


@dataclasses.dataclass(frozen=True)
class DataSection(Section):
    """Every option of the data loaders; which apply depends on ``kind`` (``KIND_KEYS``).

    None means "the loader's own default" (e.g. ``text_column``: ``text`` for classification
    tables, none for a plain-text LM file).
    """

    kind: str | None = None  # text | image | lm
    source: str | None = None  # a file, a folder with {split}.<ext>, or hub:<name>
    eval_source: str | None = None  # evaluation data from another file/folder
    eval_fraction: float = 0.0  # a single-file source: hold this fraction out for evaluation
    split_seed: int = 0  # which examples eval_fraction holds out (fixed across run seeds)
    # a validation split carved from the selected training examples (stratified, by the data
    # seed) for model selection; never the eval (test) examples
    val_fraction: float = 0.0
    train_split: str = "train"
    eval_split: str = "dev"
    seed: int | None = None  # selection seed (None: the run's seed)
    max_examples: int | None = None
    examples_per_class: int | None = None
    classes: list | None = None
    eval_max_examples: int | None = None
    label_names: list | None = None
    label_names_file: str | None = None
    label_column: str | None = None
    text_column: str | None = None
    cache_dir: str | None = None
    # text, image, lm: read the training examples batch by batch from ArrayRecord files or a prepared
    # tfds: data set instead of into memory (adapt.data.streaming: for data larger than RAM)
    streaming: bool = False
    # text
    # tokenizer.json or its folder (text; lm: also a SentencePiece .model); default: model.path's
    tokenizer: str | None = None
    max_length: int = 128
    bucket_boundaries: list | None = dataclasses.field(default_factory=lambda: [16, 32, 64, 128])
    token_type_ids: bool = True
    text_pair_column: str | None = None
    delimiter: str | None = None
    dataset_config: str | None = None
    pad_id: int | None = None
    # image
    preprocessing: dict = dataclasses.field(default_factory=dict)
    augmentation: dict | None = None
    image_shape: list | None = None
    data_dir: str | None = None  # where tfds:<name> sources are prepared (text, image, lm)
    # lm
    seq_len: int = 128
    format: str = "text"  # text | prompt_response | chat (messages lists: adapt.data.chat)
    document_separator: str | None = None
    bos: bool | None = None
    eos: bool | None = None
    max_documents: int | None = None
    prompt_column: str | None = None
    messages_column: str | None = None  # chat: the column of message lists (default messages)
    response_column: str | None = None
    template: str | None = None
    pack_examples: bool | None = None

    FREE_FORM = frozenset({"preprocessing", "augmentation"})


_COMMON = {"kind", "source", "eval_source", "seed", "cache_dir", "max_examples"}
_CLASSIFY = {"eval_fraction", "split_seed", "train_split", "eval_split", "examples_per_class",
             "classes", "eval_max_examples", "label_names", "val_fraction"}  # fmt: skip
KIND_KEYS = {
    "text": _COMMON | _CLASSIFY | {
        "label_names_file", "label_column", "text_column", "tokenizer", "max_length",
        "bucket_boundaries", "token_type_ids", "text_pair_column", "delimiter",
        "dataset_config", "pad_id", "data_dir", "streaming",
    },
    "image": _COMMON | _CLASSIFY | {"preprocessing", "augmentation", "image_shape", "data_dir",
                                    "streaming"},
    "lm": _COMMON | {
        "eval_fraction", "split_seed", "val_fraction", "tokenizer", "seq_len", "format", "document_separator", "bos", "eos", "max_documents",
        "text_column", "prompt_column", "response_column", "template", "pack_examples", "pad_id",
        "messages_column", "data_dir", "streaming",
    },
}  # fmt: skip


@dataclasses.dataclass(frozen=True)
class MeshSection(Section):
    axes: list = dataclasses.field(default_factory=lambda: [["data", -1]])  # (name, size); -1: rest
    rules: str | list = "dp"  # a preset of adapt.sharding.RULE_PRESETS or [(regex, axes)]
    # "jit": one jitted step over the mesh (pjit: DP, FSDP, TP); "per_device": the same step per
    # device under shard_map with explicit gradient all-reduce (pmap style; data parallel only)
    mode: str = "jit"


@dataclasses.dataclass(frozen=True)
class CheckpointSection(Section):
    every: int = 0  # save every this many steps (0: only at the end)
    keep: int = 2  # newest checkpoints kept


@dataclasses.dataclass(frozen=True)
class ExportSection(Section):
    hf: bool = False  # <workdir>/export_hf: a Hugging Face directory (methods merged)
    native: bool = False  # <workdir>/export_native: adapt's own format
    # <workdir>/export_peft: the adapter alone, as peft.PeftModel.from_pretrained loads it over
    # the base checkpoint (LoRA / DoRA / rsLoRA, IA3, prompt tuning; the trained head included)
    peft: bool = False


@dataclasses.dataclass(frozen=True)
class RegularizerSection(Section):
    """EWC / L2-SP towards the starting weights (adapt.harness.regularize)."""

    kind: str | None = None  # ewc | l2sp
    strength: float | None = None
    fisher_examples: int = 256  # EWC: source examples for the diagonal Fisher
    fisher_data: dict | None = None  # EWC: a data section whose train split gives them
    fisher_batch_size: int = 8


@dataclasses.dataclass(frozen=True)
class SourceTaskSection(Section):
    """The source task's eval under its frozen head, during training (adapt.harness.source_task)."""

    path: str | None = None  # the source run's Hugging Face export
    data: dict | None = None  # its data section (merged over the target's)
    eval_every: int = 0
    label_names: list | None = None


@dataclasses.dataclass(frozen=True)
class WiseSection(Section):
    """The WiSE-FT curve over alphas at the end (adapt.harness.wise)."""

    alphas: list | None = None


# adapt.tasks.TASKS's names, spelled out so that reading a config imports no JAX (a test checks)
TASKS = ("classification", "regression", "causal_lm")
_SECTIONS: dict[str, type[Section]] = {
    "model": ModelSection,
    "method": MethodSection,
    "optim": OptimSection,
    "train": TrainSection,
    "data": DataSection,
    "mesh": MeshSection,
    "checkpoint": CheckpointSection,
    "export": ExportSection,
    "regularizer": RegularizerSection,
    "source_task": SourceTaskSection,
    "wise_ft": WiseSection,
}
OPTIONAL_SECTIONS = ("regularizer", "source_task", "wise_ft")  # None when absent


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """A whole run: what :func:`adapt.harness.loop.run` reads."""

    seed: int = 0
    task: str = "classification"  # classification | regression | causal_lm (adapt.tasks)
    model: ModelSection = ModelSection()
    method: MethodSection = MethodSection()
    optim: OptimSection = OptimSection()
    train: TrainSection = TrainSection()
    data: DataSection = DataSection()
    mesh: MeshSection = MeshSection()
    checkpoint: CheckpointSection = CheckpointSection()
    export: ExportSection = ExportSection()
    regularizer: RegularizerSection | None = None
    source_task: SourceTaskSection | None = None
    wise_ft: WiseSection | None = None

    @classmethod
    def parse(cls, raw: Any) -> RunConfig:
        """Check ``raw`` (ConfigDict, dict or RunConfig) and fill in every default; raises
        :class:`ConfigError` naming every unknown key and mistyped value."""
        if isinstance(raw, RunConfig):
            return raw
        if not isinstance(raw, Mapping | ml_collections.ConfigDict):
            raise ConfigError(f"a run config must be a dict or ConfigDict, got {type(raw)}")
        problems: list[str] = []
        values: dict[str, Any] = {}
        known = [f.name for f in dataclasses.fields(cls)]
        for key, value in to_dict(raw).items():
            if key not in known:
                problems.append(f"unknown config key {key!r}{suggest(key, known)}")
            elif key in _SECTIONS:
                if value is None and key in OPTIONAL_SECTIONS:
                    continue
                values[key] = _SECTIONS[key].parse(value, key, problems)
            elif key == "seed":
                if isinstance(value, bool) or not isinstance(value, int):
                    problems.append(f"seed must be an int, got {value!r}")
                values[key] = value
            else:
                if not isinstance(value, str):
                    problems.append(f"{key} must be a string, got {value!r}")
                values[key] = value
        if problems:
            raise ConfigError("config problems:\n  " + "\n  ".join(problems))
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        """Every key and value (defaults included): config.json and the config fingerprint."""
        return {f.name: _plain(getattr(self, f.name)) for f in dataclasses.fields(self)}


# ----------------------------------------------------------------------------- small helpers
def to_dict(config: Any) -> dict:
    if config is None:
        return {}
    if isinstance(config, Section):
        return config.to_dict()
    return config.to_dict() if hasattr(config, "to_dict") else dict(config)


def is_finite_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
