"""Training data read from disk batch by batch: ArrayRecord files through Grain, or a prepared
TFDS data set, never loaded whole.

The in-memory loaders (:mod:`adapt.data.text`) read every example at start, on every process. A
streamed set holds only an index (8 bytes an example: which record each example is) and reads
the records of a batch when :func:`adapt.data.batching.train_batches` asks for it, tokenising
them then. Because batches are a pure function of (seed, step), nothing else changes:

- **order**: the same global order as the in-memory path (the index plays the role of Grain's
  ``IndexSampler``), so a streamed run and an in-memory run over the same examples and padding
  see the same batches;
- **processes**: process ``p`` reads only its rows of each global batch (``local_rows``), so the
  processes read disjoint shares and together every example of the batch;
- **resume**: the data position is the step, which the orbax checkpoint holds; a resumed run
  re-derives the batch order and reads exactly the batches the uninterrupted run would have.

Sources (``data.streaming=True``; ``data.kind`` "text" for classification, "image" for
:class:`StreamedImageClassification`, "lm" for causal-LM rows: :class:`StreamedLM`):

- an ``.array_record`` file, a folder holding ``{split}.array_record`` or shards
  ``{split}-*.array_record``, or a glob; each record is one example as a UTF-8 JSON object
  (write them with :func:`write_array_record`, or :func:`convert_table` from a csv/json/parquet
  file, chunk by chunk); read through ``grain.sources.ArrayRecordDataSource``
  (random access);
- ``"tfds:<name>"``: a TFDS data set prepared as ``array_record`` under ``data_dir``
  (``tfds.data_source``, itself random access); its ``ClassLabel`` names are the label names.

What streaming changes, on purpose: every batch is padded to ``max_length`` (bucketing decides
a batch's length from its longest example, which only a process that read the whole global
batch could know); labels need their names up front (``data.label_names`` or
``label_names_file``, or TFDS class names) since finding them would read every record; held-out
fractions (``eval_fraction``, ``val_fraction``) are drawn at random rather than per class, for
the same reason, and are read into memory (they are the small side); per-class budgets
(``examples_per_class``, ``classes``) need every label and stay with the in-memory path.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, ClassVar, Self

import numpy as np

from adapt.data.dataset import ClassificationData, DataError, map_labels
from adapt.data.records import Records, open_records, write_array_record
from adapt.data.text import TextClassificationData, encode, prepare_tokenizer

TRUNCATION_SAMPLE = 2000  # records read at start to estimate the share cut at max_length


def convert_table(
    source: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    split: str = "train",
    rows_per_shard: int = 100_000,
    delimiter: str | None = None,
) -> list[Path]:
    """A csv/tsv/json/jsonl/parquet file (or ``datasets``' glob of them) as ArrayRecord shards
    ``<out_dir>/<split>-00000.array_record``, ... of ``rows_per_shard`` JSON records each, read
    in chunks by ``datasets``' streaming mode (never whole); returns the shards written."""
    import datasets

    from adapt.data.tables import FORMATS

    suffix = Path(str(source)).suffix.lower()
    if suffix not in FORMATS or FORMATS[suffix] == "array_record":
        raise DataError(
            f"convert_table reads {sorted(set(FORMATS) - {'.array_record'})}; got {source}"
        )
    if rows_per_shard < 1:
        raise DataError(f"rows_per_shard must be >= 1; got {rows_per_shard}")
    kwargs: dict[str, Any] = {}
    if FORMATS[suffix] == "csv":  # as adapt.data.tables reads them
        kwargs = {
            "keep_default_na": False,
            "delimiter": delimiter or ("\t" if suffix == ".tsv" else ","),
        }
        if suffix == ".tsv":
            kwargs["quoting"] = 3
    rows = datasets.load_dataset(
        FORMATS[suffix], data_files={"train": str(source)}, split="train", streaming=True, **kwargs
    )
    out = Path(out_dir)
    shards: list[Path] = []
    chunk: list[dict] = []

    def flush() -> None:
        shards.append(out / f"{split}-{len(shards):05d}.array_record")
        write_array_record(shards[-1], chunk)
        chunk.clear()

    for row in rows:
        chunk.append(row)
        if len(chunk) == rows_per_shard:
            flush()
    if chunk or not shards:
        flush()
    return shards


@dataclasses.dataclass(frozen=True, eq=False)
class StreamedData:
    """What every streamed set is: an index into :class:`Records` (``index[i]`` is the record of
    example ``i``); selection and hold-outs only cut the index, reading happens in ``collate``."""

    records: Records
    index: np.ndarray

    streamed: ClassVar[bool] = True  # read per batch (the run's data summary says so)

    @property
    def num_examples(self) -> int:
        return len(self.index)

    def lengths(self) -> None:
        return None  # unknown without reading every record: no length grouping

    def select(self, indices: Sequence[int] | np.ndarray) -> Self:
        return dataclasses.replace(self, index=self.index[np.asarray(indices, dtype=np.int64)])


@dataclasses.dataclass(frozen=True, eq=False)
class StreamedTextClassification(StreamedData):
    """Text classification read per batch from :class:`Records` and tokenised then.

    ``collate`` pads to ``max_length``; :meth:`materialize` reads a (small) selection into a
    :class:`~adapt.data.text.TextClassificationData` (bucketed, as in memory)."""

    label_names: list[str]
    tokenizer: Any  # a prepared tokenizers.Tokenizer (truncation on, padding off)
    text_column: str
    label_column: str
    text_pair_column: str | None = None
    max_length: int = 128
    token_type_ids: bool = True
    pad_id: int = 0
    bucket_boundaries: tuple[int, ...] | None = None  # for materialize(); batches: max_length
    regression: bool = False

    @property
    def num_classes(self) -> int:
        return len(self.label_names)

    def read(self, indices: Sequence[int] | np.ndarray) -> ClassificationData:
        """Examples ``indices`` as raw (untokenised) in-memory data."""
        rows = self.records.get(self.index[np.asarray(indices, dtype=np.int64)])
        where = self.records.where

        def values(name: str, role: str) -> list:
            try:
                return [row[name] for row in rows]
            except KeyError:
                present = sorted(rows[0]) if rows else []
                raise DataError(
                    f"{role} column {name!r} not found in the records of {where}; they have "
                    f"{present} (set data.{role}_column)"
                ) from None

        inputs: dict[str, list] = {
            "text": [str(t).strip() for t in values(self.text_column, "text")]
        }
        if self.text_pair_column is not None:
            pairs = values(self.text_pair_column, "text_pair")
            inputs["text_pair"] = [str(t).strip() for t in pairs]
        labels, _ = map_labels(values(self.label_column, "label"), self.label_names, source=where)
        return ClassificationData(inputs, labels, list(self.label_names))

    def _encode(self, raw: ClassificationData, buckets: tuple[int, ...] | None):
        return encode(raw, self.tokenizer, pad_id=self.pad_id, max_length=self.max_length,
                      bucket_boundaries=buckets, token_type_ids=self.token_type_ids)  # fmt: skip

    def materialize(self) -> TextClassificationData:
        """Every example of this (small) selection, read and tokenised into memory."""
        return self._encode(self.read(np.arange(self.num_examples)), self.bucket_boundaries)

    def collate(
        self, indices: np.ndarray, rows: slice, *, seed: int, step: int, train: bool
    ) -> dict[str, np.ndarray]:
        local = np.asarray(indices)[rows]  # this process reads its rows of the batch only
        data = self._encode(self.read(local), None)
        return data.collate(np.arange(len(local)), slice(None), seed=seed, step=step, train=train)

    def truncated_share(self, sample: int = TRUNCATION_SAMPLE) -> float:
        """The share of examples cut at ``max_length``, estimated on up to ``sample`` of them
        (evenly spaced through the index)."""
        if not self.num_examples:
            return 0.0
        picks = np.unique(np.linspace(0, self.num_examples - 1, min(sample, self.num_examples)))
        data = self._encode(self.read(picks.astype(np.int64)), None)
        return float(np.mean(data.inputs["truncated"]))


@dataclasses.dataclass(frozen=True, eq=False)
class StreamedLM(StreamedData):
    """Causal-LM rows read per batch: each record is one example (a document, a prompt /
    response pair or a conversation) made into one row of ``seq_len`` tokens, truncated and
    right-padded. Packing several examples into a row needs a pass over the data, so streamed
    rows are never packed (pack offline, into records of ``text``, for packed rows); a row that
    truncation leaves without a target token weighs nothing in the loss (in memory it is
    dropped, which needs every row at start)."""

    sequence: Callable[[dict, str], tuple[list[int], list[float]]]  # record -> ids, weights
    seq_len: int
    pad_id: int = 0

    def read(self, indices: Sequence[int] | np.ndarray) -> Any:
        """Examples ``indices`` as in-memory :class:`~adapt.data.lm.LMData` rows."""
        from adapt.data.lm import pad_each

        picks = self.index[np.asarray(indices, dtype=np.int64)]
        pairs = [
            self.sequence(row, f"record {int(i)} of {self.records.where}")
            for i, row in zip(picks, self.records.get(picks), strict=True)
        ]
        return pad_each([p[0] for p in pairs], [p[1] for p in pairs], self.seq_len, self.pad_id)

    def materialize(self) -> Any:
        """Every example of this (small) selection in memory, without the rows that have no
        target (as the in-memory loaders drop them)."""
        data = self.read(np.arange(self.num_examples))
        keep = np.flatnonzero(data.arrays["loss_mask"].sum(axis=1) > 0)
        if len(keep) == 0:
            raise DataError(
                f"no held-out example of {self.records.where} keeps a target token at "
                f"seq_len={self.seq_len}; raise seq_len"
            )
        return data.select(keep)

    def collate(
        self, indices: np.ndarray, rows: slice, *, seed: int, step: int, train: bool
    ) -> dict[str, np.ndarray]:
        local = np.asarray(indices)[rows]
        return self.read(local).collate(np.arange(len(local)), slice(None), seed=seed,
                                        step=step, train=train)  # fmt: skip


@dataclasses.dataclass(frozen=True, eq=False)
class StreamedImageClassification(StreamedData):
    """Images read per batch from records with an ``image`` (uint8 ``(H, W)`` or ``(H, W, C)``:
    TFDS's ``Image`` feature, or a nested list in a JSON record) and a ``label``, preprocessed
    and augmented as :class:`~adapt.data.images.ImageClassificationData` does it, with the same
    augmentation draws for the same step (so a streamed batch equals the in-memory one)."""

    label_names: list[str]
    preprocessing: Any  # adapt.data.images.ImagePreprocessing
    augmentation: Any = None  # adapt.data.images.Augmentation
    regression: bool = False

    @property
    def num_classes(self) -> int:
        return len(self.label_names)

    def read(self, indices: Sequence[int] | np.ndarray) -> Any:
        """Examples ``indices`` as in-memory :class:`~adapt.data.images.ImageClassificationData`."""
        from adapt.data.images import ImageClassificationData

        rows = self.records.get(self.index[np.asarray(indices, dtype=np.int64)])
        where = self.records.where
        missing = {"image", "label"} - set(rows[0]) if rows else set()
        if missing:
            raise DataError(
                f"the records of {where} have no {sorted(missing)}; they have {sorted(rows[0])} "
                "(image classification reads 'image' and 'label')"
            )
        images = np.stack([np.asarray(r["image"], np.uint8) for r in rows])
        if images.ndim == 3:
            images = images[..., None]
        labels, _ = map_labels([r["label"] for r in rows], self.label_names, source=where)
        return ImageClassificationData({"images": images}, labels, list(self.label_names),
                                       preprocessing=self.preprocessing,
                                       augmentation=self.augmentation)  # fmt: skip

    def materialize(self) -> Any:
        return self.read(np.arange(self.num_examples))

    def collate(
        self, indices: np.ndarray, rows: slice, *, seed: int, step: int, train: bool
    ) -> dict[str, np.ndarray]:
        indices = np.asarray(indices)
        part = self.read(indices[rows])  # this process's rows only
        # the global batch's shape with this process's rows filled, so that augmentation draws
        # for the whole batch and keeps its rows, as in memory
        images = np.zeros((len(indices), *part.inputs["images"].shape[1:]), np.uint8)
        labels = np.zeros(len(indices), part.labels.dtype)
        images[rows], labels[rows] = part.inputs["images"], part.labels
        whole = dataclasses.replace(part, inputs={"images": images}, labels=labels)
        return whole.collate(np.arange(len(indices)), rows, seed=seed, step=step, train=train)


def open_image_classification(
    source: str,
    *,
    split: str = "train",
    label_names: Sequence[str] | None = None,
    preprocessing: Any = None,
    augmentation: Any = None,
    data_dir: str | None = None,
) -> StreamedImageClassification:
    """A streamed image-classification split (``label_names`` default to TFDS's ``label``
    names); the first record is read to check it."""
    from adapt.data.images import ImagePreprocessing

    records = open_records(source, split, data_dir)
    if len(records) == 0:
        raise DataError(f"{records.where} holds no records")
    names = label_names if label_names is not None else records.class_names.get("label")
    if names is None:
        raise DataError(
            f"streamed data needs its label names up front (finding them would read every record "
            f"of {records.where}); set data.label_names, in id order"
        )
    data = StreamedImageClassification(
        records, np.arange(len(records), dtype=np.int64), list(names),
        preprocessing or ImagePreprocessing(), augmentation,
    )  # fmt: skip
    data.read([0])
    return data


def open_lm(
    source: str,
    tokenizer: Any,
    seq_len: int,
    *,
    format: str = "text",
    text_column: str | None = None,
    prompt_column: str | None = None,
    response_column: str | None = None,
    template: str | None = None,
    messages_column: str | None = None,
    bos: bool | None = None,
    eos: bool | None = None,
    pad_id: int = 0,
    split: str = "train",
    data_dir: str | None = None,
) -> StreamedLM:
    """A streamed causal-LM split: ``format`` "text" (each record's ``text_column``, default
    ``text``, is one document), "prompt_response" or "chat" (as :mod:`adapt.data.lm` and
    :mod:`adapt.data.chat` read them in memory). The first record is read to check it."""
    from adapt.data.chat import chat_template, conversation_sequence
    from adapt.data.lm import as_lm_tokenizer, document_sequence, prompt_response_sequence

    records = open_records(source, split, data_dir)
    if len(records) == 0:
        raise DataError(f"{records.where} holds no records")

    def field(row: dict, name: str, role: str, where: str) -> Any:
        if name not in row:
            raise DataError(
                f"{role} column {name!r} not found in {where}; it has {sorted(row)} (set "
                f"data.{role}_column)"
            )
        return row[name]

    if format == "text":
        tok, column = as_lm_tokenizer(tokenizer), text_column or "text"
        use_bos, use_eos = bos is not False, eos is not False

        def sequence(row: dict, where: str) -> tuple[list[int], list[float]]:
            doc = str(field(row, column, "text", where)).strip()
            return document_sequence(tok, doc, bos=use_bos, eos=use_eos)
    elif format == "prompt_response":
        tok, prompt, response = (
            as_lm_tokenizer(tokenizer),
            prompt_column or "prompt",
            response_column or "response",
        )
        form = template or "{prompt}"

        def sequence(row: dict, where: str) -> tuple[list[int], list[float]]:
            return prompt_response_sequence(
                tok, field(row, prompt, "prompt", where), field(row, response, "response", where),
                form, where,
            )  # fmt: skip
    elif format == "chat":
        compiled, tokens = chat_template(tokenizer)
        column = messages_column or "messages"

        def sequence(row: dict, where: str) -> tuple[list[int], list[float]]:
            raw = field(row, column, "messages", where)
            return conversation_sequence(tokenizer, compiled, tokens, raw, where)
    else:
        raise DataError(f"format must be text, prompt_response or chat; got {format!r}")
    data = StreamedLM(records, np.arange(len(records), dtype=np.int64), sequence, seq_len, pad_id)
    data.read([0])  # the columns of the first record, checked before anything runs
    return data


def open_text_classification(
    source: str,
    tokenizer: Any,
    *,
    split: str = "train",
    text_column: str = "text",
    text_pair_column: str | None = None,
    label_column: str = "label",
    label_names: Sequence[str] | None = None,
    max_length: int = 128,
    bucket_boundaries: Sequence[int] | None = None,
    token_type_ids: bool = True,
    pad_id: int | None = None,
    data_dir: str | None = None,
) -> StreamedTextClassification:
    """A streamed text-classification split (module docstring); ``label_names`` are required
    unless a TFDS ``ClassLabel`` names them. The first record is read to check the columns."""
    records = open_records(source, split, data_dir)
    if label_names is None:
        label_names = records.class_names.get(label_column)
    if label_names is None:
        raise DataError(
            f"streamed data needs its label names up front (finding them would read every record "
            f"of {records.where}); set data.label_names (or data.label_names_file), in id order"
        )
    if len(records) == 0:
        raise DataError(f"{records.where} holds no records")
    tok, pad = prepare_tokenizer(tokenizer, max_length, pad_id)
    data = StreamedTextClassification(
        records=records,
        index=np.arange(len(records), dtype=np.int64),
        label_names=list(label_names),
        tokenizer=tok,
        text_column=text_column,
        label_column=label_column,
        text_pair_column=text_pair_column,
        max_length=max_length,
        token_type_ids=token_type_ids,
        pad_id=pad,
        bucket_boundaries=None if bucket_boundaries is None else tuple(map(int, bucket_boundaries)),
    )
    data.read([0])  # the columns and the first label, checked before anything runs
    return data


__all__ = [
    "Records",
    "StreamedData",
    "StreamedImageClassification",
    "StreamedLM",
    "StreamedTextClassification",
    "convert_table",
    "open_image_classification",
    "open_lm",
    "open_records",
    "open_text_classification",
    "write_array_record",
]
