"""Causal language modelling data: documents packed into fixed rows, and prompt/response pairs.

Every sequence becomes tokens ``t`` with a per-token weight ``w`` (1 = this token is a training
target). Rows of ``seq_len + 1`` tokens are cut from them and shifted, giving int32 ``(N, seq_len)``
arrays:

- ``input_ids = t[:-1]``; ``labels = t[1:]`` (the target of input position ``j`` is the next token);
- ``loss_mask = w[1:]`` as float32, 0 on padding;
- ``attention_mask = 1`` on input positions that have a real next token, 0 on padding (padding
  only ever ends a row; a sequence's last token appears as a label, never as a padded input).

Plain text (:func:`load_lm_text`): documents are split from the file by ``document_separator``
(``"blank_line"``: paragraphs separated by empty lines; ``"line"``: one per non-empty line; any
other string is a literal separator, e.g. ``"<|endoftext|>"`` for TinyStories), stripped, empty
ones dropped, and tokenised as ``[BOS] text [EOS]``. They are **packed**: concatenated and cut into
consecutive rows with stride ``seq_len`` (row ``r`` covers stream tokens ``r*L .. r*L+L``, so every
stream token after the first is a target exactly once). Attention is not blocked at document
boundaries (GPT-style packing; the model's causal mask applies). Decision on boundaries: the
first token of each document (its BOS, or its first word with ``bos=False``) is never a target
(``w = 0``), since nothing in the previous document predicts it; ``EOS`` is a target, so the
model learns to end documents. The last row is right-padded (``pad_id``, masked).

Prompt/response (:func:`load_prompt_response`): a JSON-lines (or CSV/parquet) file with ``prompt``
and ``response`` fields; each example is ``[BOS] template.format(prompt=...) response [EOS]``, with
prompt and response tokenised separately (so the boundary is exact) and ``w = 1`` only on the
response tokens and EOS. Unpacked (default) each example is one row, truncated to ``seq_len + 1``
tokens and padded; examples left with no target after truncation are dropped (an error if none
remain). ``pack=True`` packs them like documents.

Tokenizers follow :class:`LMTokenizer` (:mod:`adapt.data.tokenizers`' do); a path to a
SentencePiece ``.model`` file, a ``tokenizer.json`` or a checkpoint folder is loaded as one.
Batching is :mod:`adapt.data.batching`'s, with no padding decisions (rows are already
fixed-length).
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Sequence
from typing import Any, Protocol, Self

import numpy as np

from adapt.data.dataset import DataError, require_path
from adapt.data.tables import column, read_table


class LMTokenizer(Protocol):
    bos_id: int | None  # None: the tokenizer has no BOS; documents start with their first token
    eos_id: int

    def encode(self, text: str, *, bos: bool = ..., eos: bool = ...) -> list[int]: ...


@dataclasses.dataclass(frozen=True, eq=False)
class LMData:
    """Fixed-length rows: ``arrays`` has ``input_ids``, ``labels``, ``attention_mask`` (int32) and
    ``loss_mask`` (float32), each ``(num_examples, seq_len)``."""

    arrays: dict[str, np.ndarray]

    @property
    def num_examples(self) -> int:
        return len(self.arrays["input_ids"])

    @property
    def seq_len(self) -> int:
        return self.arrays["input_ids"].shape[1]

    @property
    def num_target_tokens(self) -> int:
        return int(self.arrays["loss_mask"].sum())

    def select(self, indices: Sequence[int] | np.ndarray) -> Self:
        indices = np.asarray(indices, np.int64)
        return dataclasses.replace(self, arrays={k: v[indices] for k, v in self.arrays.items()})

    def lengths(self) -> None:
        return None

    def collate(
        self, indices: np.ndarray, rows: slice, *, seed: int, step: int, train: bool
    ) -> dict[str, np.ndarray]:
        del seed, step, train
        local = indices[rows]
        return {k: v[local] for k, v in self.arrays.items()}


def _rows(tokens: np.ndarray, weights: np.ndarray, starts: np.ndarray, seq_len: int, pad_id: int):
    """Windows of ``seq_len + 1`` tokens at ``starts`` (padded past the end), shifted into rows."""
    n = len(starts)
    window = np.full((n, seq_len + 1), pad_id, np.int32)
    w = np.zeros((n, seq_len + 1), np.float32)
    real = np.zeros((n, seq_len + 1), np.int32)
    for r, s in enumerate(starts):
        piece = tokens[s : s + seq_len + 1]
        window[r, : len(piece)] = piece
        w[r, : len(piece)] = weights[s : s + seq_len + 1]
        real[r, : len(piece)] = 1
    has_target = real[:, 1:]  # an input position is real only if it has a next token
    return {
        "input_ids": np.where(has_target == 1, window[:, :-1], pad_id).astype(np.int32),
        "labels": window[:, 1:],
        "attention_mask": has_target,
        "loss_mask": (w[:, 1:] * has_target).astype(np.float32),
    }


def pack(
    sequences: Sequence[Sequence[int]],
    weights: Sequence[Sequence[float]],
    seq_len: int,
    pad_id: int = 0,
) -> LMData:
    """Concatenate sequences and cut rows with stride ``seq_len`` (module docstring)."""
    if seq_len < 1:
        raise DataError(f"seq_len must be >= 1; got {seq_len}")
    tokens = np.concatenate([np.asarray(s, np.int32) for s in sequences]) if sequences else []
    if len(tokens) < 2:
        raise DataError("nothing to pack: the sequences hold fewer than 2 tokens in all")
    w = np.concatenate([np.asarray(x, np.float32) for x in weights])
    starts = np.arange(0, len(tokens) - 1, seq_len)
    return LMData(_rows(tokens, w, starts, seq_len, pad_id))


def pad_each(
    sequences: Sequence[Sequence[int]],
    weights: Sequence[Sequence[float]],
    seq_len: int,
    pad_id: int = 0,
) -> LMData:
    """One row per sequence, truncated to ``seq_len + 1`` tokens and right-padded."""
    parts = [
        _rows(
            np.asarray(s, np.int32),
            np.asarray(w, np.float32),
            np.zeros(1, np.int64),
            seq_len,
            pad_id,
        )
        for s, w in zip(sequences, weights, strict=True)
    ]
    if not parts:
        raise DataError("no sequences to pad")
    return LMData({k: np.concatenate([p[k] for p in parts]) for k in parts[0]})


def split_documents(text: str, document_separator: str = "blank_line") -> list[str]:
    """Documents of ``text``, stripped, empty ones dropped (see the module docstring)."""
    if document_separator == "blank_line":
        docs = re.split(r"\n[ \t\r]*\n", text)
    elif document_separator == "line":
        docs = text.splitlines()
    elif document_separator:
        docs = text.split(document_separator)
    else:
        raise DataError("document_separator must be 'blank_line', 'line' or a non-empty string")
    return [d.strip() for d in docs if d.strip()]


def as_lm_tokenizer(tokenizer: Any) -> LMTokenizer:
    if isinstance(tokenizer, str | os.PathLike):
        from adapt.data.tokenizers import load_lm_tokenizer

        return load_lm_tokenizer(tokenizer)
    for attr in ("bos_id", "eos_id", "encode"):
        if not hasattr(tokenizer, attr):
            raise DataError(
                f"the tokenizer lacks {attr!r}; pass an object like "
                "adapt.data.tokenizers.SentencePieceTokenizer, a .model file, a tokenizer.json or "
                "a checkpoint folder"
            )
    return tokenizer


def load_lm_text(
    path: str | os.PathLike,
    tokenizer: Any,
    seq_len: int,
    *,
    document_separator: str = "blank_line",
    bos: bool = True,
    eos: bool = True,
    pad_id: int = 0,
    max_documents: int | None = None,
    text_column: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    data_dir: str | os.PathLike | None = None,
) -> LMData:
    """Packed causal-LM rows from a UTF-8 text file (module docstring).

    With ``text_column``, ``path`` is a table (csv/tsv/json/parquet, read like the classification
    data) and each row's ``text_column`` is one document; ``document_separator`` is then unused.
    That lets a labelled corpus (e.g. SST-2's sentences) serve as language-modelling text.
    """
    tok = as_lm_tokenizer(tokenizer)
    if text_column is None:
        path = require_path(path, "text file")
        docs = split_documents(path.read_text(encoding="utf-8"), document_separator)
        where = f"{path} (document_separator={document_separator!r})"
    else:
        table, where = read_table(
            path, "train", delimiter=None, cache_dir=cache_dir, dataset_config=None,
            data_dir=data_dir,
        )  # fmt: skip
        docs = [str(d).strip() for d in column(table, text_column, "text", where)]
        docs = [d for d in docs if d]
    if max_documents is not None:
        docs = docs[:max_documents]
    if not docs:
        raise DataError(f"{where} holds no documents; is the file empty or the separator wrong?")
    sequences, weights = [], []
    for doc in docs:
        ids, w = document_sequence(tok, doc, bos=bos, eos=eos)
        sequences.append(ids)
        weights.append(w)
    return pack(sequences, weights, seq_len, pad_id)


def document_sequence(
    tok: LMTokenizer, doc: str, *, bos: bool = True, eos: bool = True
) -> tuple[list[int], list[float]]:
    """``(token ids, loss weights)`` of one document: every token but the first is a target."""
    start = [tok.bos_id] if bos and tok.bos_id is not None else []
    ids = start + list(tok.encode(doc, bos=False, eos=False)) + [tok.eos_id] * eos
    return ids, [0.0] + [1.0] * (len(ids) - 1)


def prompt_response_sequence(
    tok: LMTokenizer, prompt: Any, response: Any, template: str, where: str
) -> tuple[list[int], list[float]]:
    """``(token ids, loss weights)`` of one instruction example: the loss covers the response
    and EOS only; ``where`` names the row in errors."""
    if not isinstance(prompt, str) or not isinstance(response, str):
        raise DataError(
            f"{where}: prompt and response must be strings; got "
            f"{type(prompt).__name__} and {type(response).__name__}"
        )
    start = [tok.bos_id] if tok.bos_id is not None else []
    p = start + list(tok.encode(template.format(prompt=prompt), bos=False, eos=False))
    r = list(tok.encode(response, bos=False, eos=False)) + [tok.eos_id]
    return p + r, [0.0] * len(p) + [1.0] * len(r)


def load_prompt_response(
    path: str | os.PathLike,
    tokenizer: Any,
    seq_len: int,
    *,
    prompt_column: str = "prompt",
    response_column: str = "response",
    template: str = "{prompt}",
    pack_examples: bool = False,
    pad_id: int = 0,
    max_examples: int | None = None,
    cache_dir: str | os.PathLike | None = None,
    data_dir: str | os.PathLike | None = None,
) -> LMData:
    """Instruction rows whose loss covers only the response and EOS (module docstring)."""
    tok = as_lm_tokenizer(tokenizer)
    table, where = read_table(
        path, "train", delimiter=None, cache_dir=cache_dir, dataset_config=None, data_dir=data_dir
    )
    prompts = column(table, prompt_column, "prompt", where)
    responses = column(table, response_column, "response", where)
    if max_examples is not None:
        prompts, responses = prompts[:max_examples], responses[:max_examples]
    sequences, weights = [], []
    for row, (prompt, response) in enumerate(zip(prompts, responses, strict=True)):
        ids, w = prompt_response_sequence(tok, prompt, response, template, f"row {row} of {where}")
        sequences.append(ids)
        weights.append(w)
    if not sequences:
        raise DataError(f"{where} holds no examples")
    return target_rows(sequences, weights, seq_len, pad_id, pack_examples,
                       f"every example of {where} loses its whole response")  # fmt: skip


def target_rows(
    sequences: Sequence[Sequence[int]],
    weights: Sequence[Sequence[float]],
    seq_len: int,
    pad_id: int,
    pack_examples: bool,
    lost: str,
) -> LMData:
    """Packed rows, or one padded row per sequence without the rows truncation left with no
    target (an error starting ``lost`` when none is left): for masked-target data (prompt /
    response, chat)."""
    if pack_examples:
        return pack(sequences, weights, seq_len, pad_id)
    data = pad_each(sequences, weights, seq_len, pad_id)
    keep = np.flatnonzero(data.arrays["loss_mask"].sum(axis=1) > 0)
    if len(keep) == 0:
        raise DataError(
            f"{lost} to truncation at seq_len={seq_len}; raise seq_len (longest: "
            f"{max(map(len, sequences))} tokens)"
        )
    return data.select(keep)


__all__ = [
    "LMData",
    "LMTokenizer",
    "as_lm_tokenizer",
    "document_sequence",
    "load_lm_text",
    "load_prompt_response",
    "pack",
    "pad_each",
    "prompt_response_sequence",
    "split_documents",
]
