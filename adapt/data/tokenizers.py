"""Tokenizers for causal-LM data that the data code reads directly (:mod:`adapt.data.lm`).

:class:`SentencePieceTokenizer` wraps a SentencePiece ``.model`` file (llama2.c's
``tok512.model``, LLaMA 1/2's ``tokenizer.model``) with LLaMA's BOS/EOS handling;
:class:`HuggingFaceTokenizer` a checkpoint's ``tokenizer.json`` with the BOS and EOS tokens its
``tokenizer_config.json`` names (LLaMA 3, TinyLlama, SmolLM, Qwen2 ship these). Any object with
the same ``encode``/``decode``/``bos_id``/``eos_id``/``vocab_size`` serves (:class:`adapt.data.lm.
LMTokenizer`); :func:`load_lm_tokenizer` picks the class from the path.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from adapt.data.dataset import DataError, require_path


class SentencePieceTokenizer:
    """A SentencePiece model (e.g. llama2.c's ``tok512.model``) with LLaMA's BOS/EOS handling."""

    def __init__(self, model_file: str | os.PathLike):
        import sentencepiece  # a runtime dependency; imported here so models load without it

        self.sp = sentencepiece.SentencePieceProcessor(model_file=str(model_file))
        self.vocab_size: int = self.sp.get_piece_size()
        self.bos_id: int = self.sp.bos_id()
        self.eos_id: int = self.sp.eos_id()

    def encode(self, text: str, *, bos: bool = True, eos: bool = False) -> list[int]:
        ids = self.sp.encode(text)
        return [self.bos_id] * bos + ids + [self.eos_id] * eos

    def decode(self, ids) -> str:
        """Control tokens (BOS/EOS) decode to nothing."""
        return self.sp.decode([int(i) for i in ids])


def _token(value: Any) -> str | None:
    """A special token as tokenizer_config.json writes it: a string or ``{"content": ...}``."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) and value else None


def _chat_template(value: Any, folder: Path) -> str | None:
    """tokenizer_config.json's ``chat_template`` (a string, or named templates of which the
    ``default`` one), else a ``chat_template.jinja`` file beside it (newer checkpoints)."""
    if isinstance(value, list):
        named = {t.get("name"): t.get("template") for t in value if isinstance(t, dict)}
        value = named.get("default")
    if isinstance(value, str) and value:
        return value
    file = folder / "chat_template.jinja"
    return file.read_text() if file.is_file() else None


class HuggingFaceTokenizer:
    """A Hugging Face fast tokenizer (``tokenizer.json``) for causal-LM data.

    ``encode`` tokenises the text alone (the file's post-processor, which may add a BOS of its
    own, is not applied) and adds ``bos_id`` / ``eos_id`` as asked, so packing and prompt masks
    work as with :class:`SentencePieceTokenizer`. BOS and EOS are the tokens
    ``tokenizer_config.json`` names; a tokenizer without a BOS (Qwen2) has ``bos_id`` None and
    documents start with their first token. A tokenizer without an EOS is refused: packing
    needs one between documents. ``chat_template`` is the checkpoint's, for chat data
    (:mod:`adapt.data.chat`).
    """

    def __init__(self, path: str | os.PathLike):
        from tokenizers import Tokenizer

        path = Path(path)
        folder = path if path.is_dir() else path.parent
        file = require_path(path / "tokenizer.json" if path.is_dir() else path, "tokenizer.json")
        self.tokenizer = Tokenizer.from_file(str(file))
        config_file = folder / "tokenizer_config.json"
        config = json.loads(config_file.read_text()) if config_file.is_file() else {}
        self.vocab_size: int = self.tokenizer.get_vocab_size()
        self.bos_token, self.eos_token = (
            _token(config.get("bos_token")),
            _token(config.get("eos_token")),
        )
        self.bos_id: int | None = self._id(self.bos_token, file)
        self.eos_id: int = self._id(self.eos_token, file)
        self.chat_template: str | None = _chat_template(config.get("chat_template"), folder)
        if self.eos_id is None:
            raise DataError(
                f"{config_file if config_file.is_file() else folder}: no eos_token; causal-LM "
                "data needs one to end documents (add it to tokenizer_config.json)"
            )

    def _id(self, token: str | None, file: Path) -> int | None:
        if token is None:
            return None
        found = self.tokenizer.token_to_id(token)
        if found is None:
            raise DataError(f"{file}: the special token {token!r} is not in its vocabulary")
        return found

    def encode(self, text: str, *, bos: bool = True, eos: bool = False) -> list[int]:
        ids = self.tokenizer.encode(text, add_special_tokens=False).ids
        start = [self.bos_id] if bos and self.bos_id is not None else []
        return start + ids + [self.eos_id] * eos

    def decode(self, ids) -> str:
        """Special tokens (BOS/EOS) decode to nothing."""
        return self.tokenizer.decode([int(i) for i in ids], skip_special_tokens=True)


def load_lm_tokenizer(path: str | os.PathLike) -> SentencePieceTokenizer | HuggingFaceTokenizer:
    """The tokenizer at ``path``: a SentencePiece ``.model`` file, or a ``tokenizer.json`` (or
    the checkpoint folder holding it, with its ``tokenizer_config.json``)."""
    path = require_path(path, "tokenizer")
    if path.is_dir() or path.suffix == ".json":
        try:
            return HuggingFaceTokenizer(path)
        except Exception as e:  # tokenizers raises a bare Exception on a malformed file
            if isinstance(e, DataError):
                raise
            raise DataError(f"{path} is not a Hugging Face tokenizer.json ({e})") from None
    try:
        return SentencePieceTokenizer(path)
    except (OSError, RuntimeError) as e:
        raise DataError(
            f"{path} is not a SentencePiece model ({e}); give a .model file, a tokenizer.json "
            "or a checkpoint folder holding one"
        ) from None


__all__ = ["HuggingFaceTokenizer", "SentencePieceTokenizer", "load_lm_tokenizer"]
