"""Tokenizers for causal-LM data that the data code reads directly (:mod:`adapt.data.lm`).

:class:`SentencePieceTokenizer` wraps a SentencePiece ``.model`` file (llama2.c's
``tok512.model``, LLaMA 1/2's ``tokenizer.model``) with LLaMA's BOS/EOS handling; any object with
the same ``encode``/``decode``/``bos_id``/``eos_id``/``vocab_size`` serves (:class:`adapt.data.lm.
LMTokenizer`).
"""

from __future__ import annotations

import os


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


__all__ = ["SentencePieceTokenizer"]
