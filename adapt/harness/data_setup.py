"""From a config's ``data`` section (:class:`~adapt.config.DataSection`) to train and
eval data sets (see :mod:`adapt.data`).

``data.kind`` selects the loader (text | image | lm); every option of
:mod:`adapt.data.text`, :mod:`adapt.data.images` and :mod:`adapt.data.lm` is a field of the
section. Where the evaluation examples come from, in order:

1. ``eval_source``: another file or folder (its ``eval_split`` when it is a folder);
2. ``eval_fraction``: that fraction of ``source`` is held out, stratified by class for
   classification (each class permuted by ``split_seed``, fixed across run seeds, so every seed
   of a study is evaluated on the same examples); for LM data, whole packed rows;
3. a folder ``source``: its ``eval_split`` file.

A single-file ``source`` with neither 1 nor 2 is an error: reading "its eval split" would read
the training file again and report training accuracy as if it were held out. Selection
(``classes``, ``examples_per_class``, ``max_examples``, seeded by ``seed`` or the run's seed)
applies to the training examples after the hold-out; ``classes`` also filters the eval set.
"""

from __future__ import annotations

import dataclasses
import glob
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from adapt import weights
from adapt.config import ConfigError, DataSection
from adapt.data import (
    Augmentation,
    ClassificationData,
    DataError,
    ImagePreprocessing,
    load_image_classification,
    load_lm_text,
    load_prompt_response,
    read_text_classification,
    tokenize,
)
from adapt.data.dataset import select


@dataclass
class Data:
    train: Any
    eval: Any
    num_labels: int | None
    label_names: list[str] | None
    val: Any = None  # carved from the training examples (data.val_fraction), for selection


def _tokenizer_path(given: str | None, model_path: str | None) -> Path:
    path = weights.resolve(given or model_path)
    if path.is_dir():
        path = path / "tokenizer.json"
    if not path.exists():
        raise DataError(f"no tokenizer at {path}; set data.tokenizer to a tokenizer.json")
    return path


def _is_single_file(source: str) -> bool:
    return not source.startswith(("hub:", "tfds:")) and Path(source).is_file()


EVAL_SALT, VAL_SALT = 0xE7A1, 0x7A1D  # the eval and validation carves draw differently


def holdout(data: Any, fraction: float, seed: int, salt: int = EVAL_SALT) -> tuple[Any, Any]:
    """``(rest, held_out)``: ``fraction`` of ``data`` held out, per class when it has labels
    (each class permuted by ``(seed, salt, class)``, at least one example of a class with two
    or more); indices stay in file order."""
    n = data.num_examples
    if isinstance(data, ClassificationData) and not data.regression:
        held = []
        for c in range(data.num_classes):
            members = np.flatnonzero(data.labels == c)
            k = int(round(fraction * len(members)))
            k = min(max(k, 1 if len(members) > 1 else 0), len(members) - 1 if members.size else 0)
            order = np.random.default_rng([seed, salt, c]).permutation(len(members))
            held.append(members[order[:k]])
        held_idx = np.sort(np.concatenate(held)) if held else np.zeros(0, np.int64)
    else:
        k = int(round(fraction * n))
        held_idx = np.sort(np.random.default_rng([seed, salt]).permutation(n)[:k])
    if len(held_idx) == 0 or len(held_idx) == n:
        what = "eval_fraction" if salt == EVAL_SALT else "val_fraction"
        raise DataError(
            f"data.{what}={fraction} of {n} examples leaves one side empty; choose a fraction "
            "that keeps examples on both sides"
        )
    rest_idx = np.setdiff1d(np.arange(n), held_idx)
    return data.select(rest_idx), data.select(held_idx)


def _read(
    section: DataSection, source: str, split: str, regression: bool = False
) -> ClassificationData:
    """Every example of one split, unselected (text: not yet tokenised); ``regression``: the
    label column holds numeric targets."""
    if regression and section.kind != "text":
        raise ConfigError(f"regression reads text data (data.kind 'text'), not {section.kind!r}")
    if section.kind == "text":
        options = {
            k: getattr(section, k)
            for k in (
                "label_names",
                "label_names_file",
                "delimiter",
                "cache_dir",
                "dataset_config",
                "text_pair_column",
                "data_dir",
            )  # fmt: skip
            if getattr(section, k) is not None
        }
        return read_text_classification(
            source,
            split=split,
            text_column=section.text_column or "text",
            label_column=section.label_column or "label",
            regression=regression,
            **options,
        )
    prep = ImagePreprocessing(**_tuples(section.preprocessing))
    return load_image_classification(
        source,
        split=split,
        label_names=section.label_names,
        image_shape=section.image_shape,
        preprocessing=prep,
        data_dir=section.data_dir,
    )


def _finish(section: DataSection, data: ClassificationData, model_path: str | None) -> Any:
    """Tokenise text (one tokenizer for both splits)."""
    if section.kind != "text":
        return data
    return tokenize(
        data,
        _tokenizer_path(section.tokenizer, model_path),
        max_length=section.max_length,
        bucket_boundaries=section.bucket_boundaries,
        token_type_ids=section.token_type_ids,
        pad_id=section.pad_id,
    )


def load_splits(
    section: DataSection | Any,
    *,
    seed: int,
    model_path: str | None,
    roles=("train", "eval"),
    regression: bool = False,
) -> dict[str, Any]:
    """The labelled splits of ``section`` named in ``roles`` (module docstring); ``regression``:
    numeric targets instead of classes."""
    section = DataSection.parse_one(section, "data")
    if section.source is None:
        raise ConfigError("data.source is required (a file or folder of the data set)")
    if section.kind not in ("text", "image"):
        raise ConfigError(
            f"data.kind must be text or image for labelled data, got {section.kind!r}"
        )
    if section.streaming:
        return _load_streamed(section, seed=seed, model_path=model_path, roles=roles)
    source = str(section.source)
    data_seed = seed if section.seed is None else section.seed
    single = _is_single_file(source)
    if single and section.eval_source is None and not section.eval_fraction and "eval" in roles:
        raise DataError(
            f"data.source {source} is a single file, so it has no separate evaluation split "
            f"(eval_split {section.eval_split!r} would read the training examples again); set "
            "data.eval_source to a file of held-out examples, or data.eval_fraction (e.g. 0.2) "
            "to hold out part of this one"
        )
    out: dict[str, Any] = {}
    train_full = None
    if "train" in roles or section.eval_fraction:
        train_full = _read(section, source, section.train_split, regression)
    evaluation = None
    if "eval" in roles:
        if section.eval_source is not None:
            evaluation = _read(section, str(section.eval_source), section.eval_split, regression)
        elif section.eval_fraction:
            train_full, evaluation = holdout(train_full, section.eval_fraction, section.split_seed)
        else:
            evaluation = _read(section, source, section.eval_split, regression)
    elif section.eval_fraction:  # the train role alone still excludes the held-out examples
        train_full, _ = holdout(train_full, section.eval_fraction, section.split_seed)
    if "train" in roles:
        train = select(
            train_full,
            classes=section.classes,
            examples_per_class=section.examples_per_class,
            max_examples=section.max_examples,
            seed=data_seed,
            source=source,
        )
        if section.val_fraction:
            train, val = holdout(train, section.val_fraction, data_seed, VAL_SALT)
            out["val"] = _finish(section, val, model_path)
        if section.kind == "image" and section.augmentation:
            train = dataclasses.replace(train, augmentation=Augmentation(**section.augmentation))
        out["train"] = _finish(section, train, model_path)
    if evaluation is not None:
        evaluation = select(evaluation, classes=section.classes, source=source)
        if section.eval_max_examples and evaluation.num_examples > section.eval_max_examples:
            evaluation = select(evaluation, max_examples=section.eval_max_examples, seed=data_seed)
        out["eval"] = _finish(section, evaluation, model_path)
    return out


def _open_streamed_text(
    section: DataSection, source: str, label_names: list | None, model_path: str | None
) -> Any:
    from adapt.data.streaming import open_text_classification

    return open_text_classification(
        source,
        _tokenizer_path(section.tokenizer, model_path),
        split=section.train_split,
        text_column=section.text_column or "text",
        text_pair_column=section.text_pair_column,
        label_column=section.label_column or "label",
        label_names=label_names,
        max_length=section.max_length,
        bucket_boundaries=section.bucket_boundaries,
        token_type_ids=section.token_type_ids,
        pad_id=section.pad_id,
        data_dir=section.data_dir,
    )


def _load_streamed(
    section: DataSection, *, seed: int, model_path: str | None, roles=("train", "eval")
) -> dict[str, Any]:
    """:func:`load_splits` with the training examples streamed (:mod:`adapt.data.streaming`):
    the eval set is ``eval_source`` or the source's ``eval_split`` read into memory, or an
    ``eval_fraction`` of the records; ``val_fraction`` is carved from the training records; both
    held-out sets are read into memory, the training set is read batch by batch."""
    from adapt.data.streaming import open_image_classification
    from adapt.data.text import read_label_names

    source = str(section.source)
    label_names = section.label_names
    if section.label_names_file is not None:
        label_names = read_label_names(section.label_names_file)
    data_seed = seed if section.seed is None else section.seed
    if section.kind == "image":
        augment = Augmentation(**section.augmentation) if section.augmentation else None
        train = open_image_classification(
            source, split=section.train_split, label_names=label_names,
            preprocessing=ImagePreprocessing(**_tuples(section.preprocessing)),
            augmentation=augment, data_dir=section.data_dir,
        )  # fmt: skip
    else:
        train = _open_streamed_text(section, source, label_names, model_path)
    single = glob.has_magic(source) or _is_single_file(source)
    if single and section.eval_source is None and not section.eval_fraction and "eval" in roles:
        raise DataError(
            f"data.source {source} is one set of ArrayRecord files, so it has no separate "
            "evaluation split; set data.eval_source to held-out examples, or data.eval_fraction "
            "to hold out part of these"
        )
    out: dict[str, Any] = {}
    evaluation = None
    if section.eval_fraction:
        train, held = holdout(train, section.eval_fraction, section.split_seed)
        evaluation = held.materialize()
    elif "eval" in roles:
        eval_source = str(section.eval_source) if section.eval_source is not None else source
        in_memory = dataclasses.replace(
            section, streaming=False, label_names=list(train.label_names), label_names_file=None
        )
        evaluation = _finish(
            in_memory, _read(in_memory, eval_source, section.eval_split), model_path
        )
    if section.max_examples is not None and train.num_examples > section.max_examples:
        keep = np.random.default_rng([data_seed, 0x5E1EC7]).permutation(train.num_examples)
        train = train.select(np.sort(keep[: section.max_examples]))  # as dataset.select draws
    if section.val_fraction:
        train, val = holdout(train, section.val_fraction, data_seed, VAL_SALT)
        out["val"] = val.materialize()
    if "train" in roles:
        out["train"] = train
    if evaluation is not None and "eval" in roles:
        if section.eval_max_examples and evaluation.num_examples > section.eval_max_examples:
            evaluation = select(evaluation, max_examples=section.eval_max_examples, seed=data_seed)
        out["eval"] = evaluation
    return out


def load_data(
    section: DataSection | Any, *, seed: int, model_path: str | None, regression: bool = False
) -> Data:
    """Train and eval sets for a config's ``data`` section (``regression``: numeric targets, no
    classes: ``num_labels`` and ``label_names`` are None)."""
    section = DataSection.parse_one(section, "data")
    if section.kind == "lm":
        return _load_lm(section, model_path)
    splits = load_splits(section, seed=seed, model_path=model_path, regression=regression)
    train, evaluation = splits["train"], splits["eval"]
    if regression:
        return Data(train, evaluation, None, None, splits.get("val"))
    if train.label_names != evaluation.label_names:
        raise DataError(
            f"train and eval label maps differ: {train.label_names[:10]} vs "
            f"{evaluation.label_names[:10]}; give data.label_names explicitly"
        )
    return Data(
        train, evaluation, len(train.label_names), list(train.label_names), splits.get("val")
    )


def load_split(section: DataSection | Any, role: str, *, seed: int, model_path: str | None) -> Any:
    """One classification split (``role`` "train" or "eval"), for data the run only evaluates
    or samples (a source task's eval set, the examples of EWC's Fisher)."""
    if role not in ("train", "eval"):
        raise ValueError(f"role must be 'train' or 'eval', got {role!r}")
    return load_splits(section, seed=seed, model_path=model_path, roles=(role,))[role]


_LM_TEXT = ("document_separator", "bos", "eos", "max_documents", "text_column", "cache_dir",
            "data_dir")  # fmt: skip
_LM_PROMPT = ("prompt_column", "response_column", "template", "pack_examples", "max_examples",
              "cache_dir", "data_dir")  # fmt: skip
_LM_CHAT = ("messages_column", "pack_examples", "max_examples", "cache_dir", "data_dir")


def _load_lm(section: DataSection, model_path: str | None = None) -> Data:
    from adapt.data.tokenizers import load_lm_tokenizer

    given = section.tokenizer or model_path  # a checkpoint folder ships its tokenizer.json
    if given is None:
        raise ConfigError(
            "data.tokenizer is required for kind 'lm' (a SentencePiece .model, a tokenizer.json "
            "or a checkpoint folder)"
        )
    tokenizer = load_lm_tokenizer(weights.resolve(given))
    if section.format == "text":
        loader, keys = load_lm_text, _LM_TEXT
    elif section.format == "prompt_response":
        loader, keys = load_prompt_response, _LM_PROMPT
    elif section.format == "chat":
        from adapt.data.chat import load_chat

        loader, keys = load_chat, _LM_CHAT
    else:
        raise ConfigError(
            f"data.format {section.format!r} is not 'text', 'prompt_response' or 'chat'"
        )
    options = {k: getattr(section, k) for k in keys if getattr(section, k) is not None}
    if section.pad_id is not None:
        options["pad_id"] = section.pad_id
    source = str(section.source)
    if section.streaming:
        return _stream_lm(section, tokenizer, loader, options)
    train = loader(source, tokenizer, section.seq_len, **options)
    val = None
    if section.eval_source is not None:
        evaluation = loader(str(section.eval_source), tokenizer, section.seq_len, **options)
    elif section.eval_fraction:
        train, evaluation = holdout(train, section.eval_fraction, section.split_seed)
    else:
        raise DataError(
            f"data.source {source} gives the training text and nothing is held out for "
            "evaluation (it would report the NLL of the training rows); set data.eval_source to "
            "another file, or data.eval_fraction (e.g. 0.2) to hold out that share of the rows"
        )
    if section.val_fraction:
        train, val = holdout(train, section.val_fraction, section.split_seed, VAL_SALT)
    return Data(train, evaluation, None, None, val)


def _stream_lm(section: DataSection, tokenizer: Any, loader: Any, options: dict) -> Data:
    """:func:`_load_lm` with the training rows streamed (:class:`adapt.data.streaming.StreamedLM`,
    one unpacked row per record); the held-out rows are read into memory."""
    from adapt.data.streaming import open_lm

    keys = ("text_column", "prompt_column", "response_column", "template", "messages_column",
            "bos", "eos", "data_dir")  # fmt: skip
    train = open_lm(
        str(section.source), tokenizer, section.seq_len, format=section.format,
        pad_id=0 if section.pad_id is None else section.pad_id,
        **{k: getattr(section, k) for k in keys if getattr(section, k) is not None},
    )  # fmt: skip
    first = section.max_examples or section.max_documents
    if first is not None and train.num_examples > first:
        train = train.select(np.arange(first))  # the first rows, as the in-memory loaders take
    if section.eval_source is not None:
        evaluation = loader(str(section.eval_source), tokenizer, section.seq_len, **options)
    elif section.eval_fraction:
        train, held = holdout(train, section.eval_fraction, section.split_seed)
        evaluation = held.materialize()
    else:
        raise DataError(
            f"data.source {section.source} gives the training rows and nothing is held out for "
            "evaluation; set data.eval_source to another file, or data.eval_fraction"
        )
    val = None
    if section.val_fraction:
        train, held = holdout(train, section.val_fraction, section.split_seed, VAL_SALT)
        val = held.materialize()
    return Data(train, evaluation, None, None, val)


def _tuples(d: dict) -> dict:
    return {k: tuple(v) if isinstance(v, list) else v for k, v in dict(d).items()}


__all__ = ["EVAL_SALT", "VAL_SALT", "Data", "holdout", "load_data", "load_split", "load_splits"]
