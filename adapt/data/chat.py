"""Chat-formatted SFT data: ``messages`` lists rendered with the checkpoint's chat template, the
loss on the assistant turns only.

Each row holds a list of ``{"role", "content"}`` messages (JSONL, JSON or parquet, any column
name). The conversation is rendered with the ``chat_template`` of the tokenizer's
``tokenizer_config.json`` (Jinja, in a sandbox, with ``bos_token``, ``eos_token`` and
``raise_exception`` as transformers provides them), the way ``apply_chat_template`` renders it.
Which characters belong to an assistant turn is found by rendering the conversation up to each
assistant message twice: before it with ``add_generation_prompt=True`` (the context the model
sees) and through it (the context plus the reply and whatever the template closes the turn
with, e.g. ``<|eot_id|>``): the difference is the target. A template that does not render a
conversation as a prefix of its continuation is refused by name.

The pieces are tokenised one by one and concatenated, so every token is a target or not; rows
are then padded one per conversation or packed like documents (``pack_examples``), as for
prompt/response data (:mod:`adapt.data.lm`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

from adapt.data.dataset import DataError
from adapt.data.lm import LMData, target_rows
from adapt.data.tables import column, read_table


def _environment():
    from jinja2.exceptions import TemplateError
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message):
        raise TemplateError(message)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = raise_exception
    return env


def render(template: Any, messages: Sequence[Mapping], generation_prompt: bool, **tokens) -> str:
    """``messages`` through a compiled chat template (``tokens``: ``bos_token``, ``eos_token``)."""
    return template.render(messages=list(messages), add_generation_prompt=generation_prompt,
                           **tokens)  # fmt: skip


def segments(
    template: Any, messages: Sequence[Mapping], where: str, **tokens
) -> list[tuple[str, bool]]:
    """The rendered conversation as ``(text, is_target)`` pieces (module docstring)."""
    pieces: list[tuple[str, bool]] = []
    done = 0  # characters of the rendering already assigned to a piece
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        context = render(template, messages[:i], True, **tokens)
        through = render(template, messages[: i + 1], False, **tokens)
        if not through.startswith(context) or len(context) < done:
            raise DataError(
                f"{where}: the chat template does not render the conversation before assistant "
                f"message {i} as a prefix of the conversation through it, so its reply cannot be "
                "told apart; use a template that renders turns in order"
            )
        pieces += [(context[done:], False), (through[len(context) :], True)]
        done = len(through)
    whole = render(template, messages, False, **tokens)
    if not whole.startswith("".join(text for text, _ in pieces)):
        raise DataError(f"{where}: the chat template renders the whole conversation differently")
    pieces.append((whole[done:], False))
    return [(text, target) for text, target in pieces if text]


def _check(messages: Any, where: str) -> list[dict]:
    if not isinstance(messages, list | tuple) or not messages:
        raise DataError(f"{where}: messages must be a non-empty list of {{role, content}} dicts")
    out = []
    for j, m in enumerate(messages):
        if not isinstance(m, Mapping) or not isinstance(m.get("role"), str):
            raise DataError(f"{where}: message {j} is {m!r}, not a dict with a 'role'")
        if not isinstance(m.get("content"), str):
            raise DataError(f"{where}: message {j} ({m['role']}) has no text 'content'")
        out.append({"role": m["role"], "content": m["content"]})
    if not any(m["role"] == "assistant" for m in out):
        raise DataError(f"{where}: no assistant message, so nothing to learn")
    return out


def chat_template(tokenizer: Any) -> tuple[Any, dict[str, str]]:
    """``(compiled template, its special tokens)`` of ``tokenizer``'s chat template, or a
    DataError when it has none or it does not parse."""
    from jinja2.exceptions import TemplateError

    template_text = getattr(tokenizer, "chat_template", None)
    if not template_text:
        raise DataError(
            "chat data needs a tokenizer with a chat template (tokenizer_config.json's "
            "chat_template); this tokenizer has none"
        )
    try:
        template = _environment().from_string(template_text)
    except TemplateError as e:
        raise DataError(f"the tokenizer's chat template does not parse: {e}") from None
    tokens = {"bos_token": tokenizer.bos_token or "", "eos_token": tokenizer.eos_token or ""}
    return template, tokens


def conversation_sequence(
    tokenizer: Any, template: Any, tokens: Mapping[str, str], raw: Any, where: str
) -> tuple[list[int], list[float]]:
    """``(token ids, loss weights)`` of one conversation: weight 1 on the assistant turns'
    tokens (as the template renders them), 0 elsewhere; ``where`` names it in errors."""
    from jinja2.exceptions import TemplateError

    messages = _check(raw, where)
    try:
        pieces = segments(template, messages, where, **tokens)
    except TemplateError as e:
        raise DataError(f"{where}: the chat template refused it: {e}") from None
    ids: list[int] = []
    w: list[float] = []
    for text, target in pieces:
        piece = list(tokenizer.encode(text, bos=False, eos=False))
        ids += piece
        w += [float(target)] * len(piece)
    return ids, w


def load_chat(
    path: str | os.PathLike,
    tokenizer: Any,
    seq_len: int,
    *,
    messages_column: str = "messages",
    pack_examples: bool = False,
    pad_id: int = 0,
    max_examples: int | None = None,
    cache_dir: str | os.PathLike | None = None,
    data_dir: str | os.PathLike | None = None,
) -> LMData:
    """Conversations of ``path`` as causal-LM rows whose loss covers the assistant turns.

    ``tokenizer`` needs ``chat_template`` (:class:`adapt.data.tokenizers.HuggingFaceTokenizer`
    reads it from ``tokenizer_config.json``) and ``encode``."""
    template, tokens = chat_template(tokenizer)
    table, where = read_table(path, "train", delimiter=None, cache_dir=cache_dir,
                              dataset_config=None, data_dir=data_dir)  # fmt: skip
    conversations = column(table, messages_column, "messages", where)
    if max_examples is not None:
        conversations = conversations[:max_examples]
    sequences, weights = [], []
    for row, raw in enumerate(conversations):
        ids, w = conversation_sequence(tokenizer, template, tokens, raw, f"row {row} of {where}")
        sequences.append(ids)
        weights.append(w)
    if not sequences:
        raise DataError(f"{where} holds no conversations")
    return target_rows(sequences, weights, seq_len, pad_id, pack_examples,
                       f"every conversation of {where} loses all its assistant tokens")  # fmt: skip


__all__ = ["chat_template", "conversation_sequence", "load_chat", "render", "segments"]
