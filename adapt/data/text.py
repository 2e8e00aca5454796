"""Text classification: read a table with HF ``datasets``, tokenise, pad each batch to a bucket.

Two stages, so that counting and selecting never pay for tokenisation:

    data = read_text_classification("third_party/banking77", split="train",
                                    text_column="text", label_column="category",
                                    label_names_file="third_party/banking77/categories.json",
                                    examples_per_class=10, seed=0)
    data = tokenize(data, tokenizer_json_path, max_length=128)      # TextClassificationData
    batches = train_batches(data, batch_size=32, seed=0)             # adapt.data.batching

or :func:`load_text_classification` for both. ``source`` is read by
:func:`adapt.data.tables.read_table` (a csv/tsv/json/jsonl/parquet file, a folder with
``{split}.<ext>``, ``"hub:<name>"`` online, or a prepared ``"tfds:<name>"``). Texts (and text
pairs) are ``.strip()``-ped.

Labels go through :func:`adapt.data.dataset.map_labels`: explicit ``label_names`` (or a JSON
list in ``label_names_file``, whose order gives the ids), else the label column's own names (a
``ClassLabel`` of TFDS or the hub), else the sorted unique values.

Batches hold ``input_ids``, ``attention_mask`` (1 = token), ``token_type_ids`` (when the data was
tokenised with ``token_type_ids=True``; BERT wants them) and ``labels``, all int32. Padding is
dynamic with buckets: a batch is padded to the smallest of ``bucket_boundaries`` that fits its
longest example, with ``max_length`` (the truncation length) as the last bucket, so jit sees at
most ``len(bucket_boundaries) + 1`` shapes; ``bucket_boundaries=None`` pads every batch to
``max_length``. Special tokens are whatever the tokenizer's post-processor adds ([CLS]/[SEP]).
To cut padding further, group similar lengths: ``train_batches(..., length_grouping=50)``.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from adapt.data.dataset import ClassificationData, DataError, map_labels, require_path, select
from adapt.data.tables import class_names, column, read_table


@dataclasses.dataclass(frozen=True, eq=False)
class TextClassificationData(ClassificationData):
    """Tokenised text: ``inputs`` has ragged ``input_ids`` / ``token_type_ids`` (lists of int32
    arrays), the stripped ``text`` and ``truncated`` (a bool per example: cut at
    ``max_length``); the padding options travel with the data."""

    pad_id: int = 0
    max_length: int = 128
    bucket_boundaries: tuple[int, ...] | None = (16, 32, 64, 128)
    token_type_ids: bool = True

    def lengths(self) -> np.ndarray:
        return np.fromiter((len(x) for x in self.inputs["input_ids"]), np.int64, self.num_examples)

    def padded_length(self, longest: int) -> int:
        """The bucket a batch whose longest example has ``longest`` tokens is padded to."""
        if self.bucket_boundaries is None:
            return self.max_length
        buckets = sorted(b for b in set(self.bucket_boundaries) if b < self.max_length)
        return next(b for b in [*buckets, self.max_length] if b >= longest)

    def collate(
        self, indices: np.ndarray, rows: slice, *, seed: int, step: int, train: bool
    ) -> dict[str, np.ndarray]:
        del seed, step, train
        ids = self.inputs["input_ids"]
        length = self.padded_length(max(len(ids[i]) for i in indices))
        local = indices[rows]
        input_ids = np.full((len(local), length), self.pad_id, np.int32)
        mask = np.zeros((len(local), length), np.int32)
        types = np.zeros((len(local), length), np.int32)
        for row, i in enumerate(local):
            n = len(ids[i])
            input_ids[row, :n] = ids[i]
            mask[row, :n] = 1
            if self.token_type_ids:
                types[row, :n] = self.inputs["token_type_ids"][i]
        batch = {"input_ids": input_ids, "attention_mask": mask}
        if self.token_type_ids:
            batch["token_type_ids"] = types
        batch["labels"] = self.labels[local]
        return batch


def read_label_names(path: str | os.PathLike) -> list[str]:
    """A JSON list of label names (its order gives the ids), e.g. banking77/categories.json."""
    path = require_path(path, "label names file")
    names = json.loads(path.read_text())
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise DataError(f"{path} must hold a JSON list of strings (the label names in id order)")
    return names


def read_text_classification(
    source: str | os.PathLike,
    *,
    split: str = "train",
    text_column: str = "text",
    text_pair_column: str | None = None,
    label_column: str = "label",
    label_names: Sequence[str] | None = None,
    label_names_file: str | os.PathLike | None = None,
    classes: Sequence[int | str] | None = None,
    examples_per_class: int | None = None,
    max_examples: int | None = None,
    seed: int = 0,
    delimiter: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    dataset_config: str | None = None,
    regression: bool = False,
    data_dir: str | os.PathLike | None = None,
) -> ClassificationData:
    """Raw (untokenised) text classification data: ``inputs`` has ``text`` (and ``text_pair``).

    Selection options are those of :func:`adapt.data.dataset.select`, applied in that order.
    ``regression=True``: the label column holds numbers (float targets), not classes.
    ``label_names`` default to the label column's own (a ``ClassLabel`` of TFDS or the hub).
    ``data_dir``: where ``tfds:`` sources are prepared.
    """
    if label_names is not None and label_names_file is not None:
        raise DataError("give label_names or label_names_file, not both")
    if label_names_file is not None:
        label_names = read_label_names(label_names_file)
    table, where = read_table(
        source,
        split,
        delimiter=delimiter,
        cache_dir=cache_dir,
        dataset_config=dataset_config,
        data_dir=data_dir,
    )
    texts = column(table, text_column, "text", where)
    inputs: dict[str, list] = {"text": [str(t).strip() for t in texts]}
    if text_pair_column is not None:
        pairs = column(table, text_pair_column, "text_pair", where)
        inputs["text_pair"] = [str(t).strip() for t in pairs]
    raw_labels = column(table, label_column, "label", where)
    if regression:
        if label_names is not None:
            raise DataError("label_names name classes; regression targets have none")
        data = ClassificationData(inputs, _targets(raw_labels, where, label_column), [], True)
        return select(data, max_examples=max_examples, seed=seed, source=where)
    if label_names is None:
        label_names = class_names(table, label_column)
    labels, names = map_labels(raw_labels, label_names, source=where)
    data = ClassificationData(inputs=inputs, labels=labels, label_names=names)
    return select(
        data,
        classes=classes,
        examples_per_class=examples_per_class,
        max_examples=max_examples,
        seed=seed,
        source=where,
    )


def _targets(values: Sequence[Any], where: str, label_column: str) -> np.ndarray:
    """The label column as float targets, or a DataError naming the first value that is not a
    number."""
    out = np.empty(len(values), np.float64)
    for i, v in enumerate(values):
        try:
            out[i] = float(v)
        except (TypeError, ValueError):
            raise DataError(
                f"{where}: row {i} of column {label_column!r} is {v!r}, not a number; regression "
                "reads numeric targets (for classes use task 'classification')"
            ) from None
    return out


def _as_tokenizer(tokenizer: Any):
    from tokenizers import Tokenizer

    if isinstance(tokenizer, str | os.PathLike):
        path = Path(tokenizer)
        if path.is_dir():
            path = path / "tokenizer.json"
        return Tokenizer.from_file(str(require_path(path, "tokenizer.json")))
    if not isinstance(tokenizer, Tokenizer):
        raise DataError(
            f"tokenizer must be a tokenizers.Tokenizer or a path to tokenizer.json; got {type(tokenizer)}"
        )
    return Tokenizer.from_str(tokenizer.to_str())  # a copy: we change its padding/truncation


def _pad_id(tokenizer: Any) -> int:
    if tokenizer.padding is not None:
        return int(tokenizer.padding["pad_id"])
    for token in ("[PAD]", "<pad>", "<PAD>"):
        if (found := tokenizer.token_to_id(token)) is not None:
            return found
    return 0


def prepare_tokenizer(tokenizer: Any, max_length: int, pad_id: int | None = None):
    """``(tokenizer, pad_id)``: a copy of ``tokenizer`` (or the one at a path) that truncates at
    ``max_length`` and does not pad, and the padding id (the tokenizer's, or ``[PAD]``/``<pad>``,
    unless given)."""
    if max_length < 2:
        raise DataError(f"max_length must be >= 2 (room for special tokens); got {max_length}")
    tok = _as_tokenizer(tokenizer)
    pad = _pad_id(tok) if pad_id is None else pad_id
    tok.no_padding()
    tok.enable_truncation(max_length)
    return tok, pad


def encode(
    data: ClassificationData,
    tokenizer: Any,
    *,
    pad_id: int,
    max_length: int,
    bucket_boundaries: Sequence[int] | None,
    token_type_ids: bool,
) -> TextClassificationData:
    """:func:`tokenize` with a tokenizer from :func:`prepare_tokenizer` (no copy: streamed data
    encodes every batch)."""
    if "text" not in data.inputs:
        raise DataError(f"tokenize needs inputs['text']; this data has {list(data.inputs)}")
    if bucket_boundaries is not None and any(int(b) < 1 for b in bucket_boundaries):
        raise DataError(f"bucket_boundaries must be positive; got {list(bucket_boundaries)}")
    texts = data.inputs["text"]
    if "text_pair" in data.inputs:
        encodings = tokenizer.encode_batch(list(zip(texts, data.inputs["text_pair"], strict=True)))
    else:
        encodings = tokenizer.encode_batch(texts)
    inputs: dict[str, list] = dict(data.inputs)
    inputs["input_ids"] = [np.asarray(e.ids, np.int32) for e in encodings]
    # cut at max_length (the run's data summary reports the share and warns when it is large)
    inputs["truncated"] = np.fromiter((bool(e.overflowing) for e in encodings), bool, len(texts))
    if token_type_ids:
        inputs["token_type_ids"] = [np.asarray(e.type_ids, np.int32) for e in encodings]
    return TextClassificationData(
        inputs=inputs,
        labels=data.labels,
        label_names=data.label_names,
        regression=data.regression,
        pad_id=pad_id,
        max_length=max_length,
        bucket_boundaries=None
        if bucket_boundaries is None
        else tuple(int(b) for b in bucket_boundaries),
        token_type_ids=token_type_ids,
    )


def tokenize(
    data: ClassificationData,
    tokenizer: Any,
    *,
    max_length: int = 128,
    bucket_boundaries: Sequence[int] | None = (16, 32, 64, 128),
    token_type_ids: bool = True,
    pad_id: int | None = None,
) -> TextClassificationData:
    """Tokenise ``data.inputs['text']`` (and ``'text_pair'``), truncating to ``max_length``.

    ``tokenizer`` is a ``tokenizers.Tokenizer`` (copied, not changed) or a path to
    ``tokenizer.json`` or its folder. ``pad_id`` defaults to the tokenizer's padding id or
    ``[PAD]``/``<pad>``.
    """
    if "text" not in data.inputs:
        raise DataError(f"tokenize needs inputs['text']; this data has {list(data.inputs)}")
    tok, pad = prepare_tokenizer(tokenizer, max_length, pad_id)
    return encode(
        data,
        tok,
        pad_id=pad,
        max_length=max_length,
        bucket_boundaries=bucket_boundaries,
        token_type_ids=token_type_ids,
    )


def load_text_classification(
    source: str | os.PathLike,
    tokenizer: Any,
    *,
    max_length: int = 128,
    bucket_boundaries: Sequence[int] | None = (16, 32, 64, 128),
    token_type_ids: bool = True,
    pad_id: int | None = None,
    **read_options: Any,
) -> TextClassificationData:
    """:func:`read_text_classification` then :func:`tokenize` (options as there)."""
    data = read_text_classification(source, **read_options)
    return tokenize(
        data,
        tokenizer,
        max_length=max_length,
        bucket_boundaries=bucket_boundaries,
        token_type_ids=token_type_ids,
        pad_id=pad_id,
    )


__all__ = [
    "TextClassificationData",
    "encode",
    "load_text_classification",
    "prepare_tokenizer",
    "read_label_names",
    "read_text_classification",
    "tokenize",
]
