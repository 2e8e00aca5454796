"""From a config's ``data`` section to train and eval data sets (see :mod:`adapt.data`).

``data.kind`` selects the loader; the remaining keys are that loader's options, so every option
documented in :mod:`adapt.data.text`, :mod:`adapt.data.images` and :mod:`adapt.data.lm` is
reachable from a config. Keys of this section:

- all kinds: ``kind`` (text | image | lm), ``source`` (file or folder), ``train_split``,
  ``eval_split``, ``seed`` (selection; defaults to the run seed), ``eval_max_examples``;
- text: ``tokenizer`` (a ``tokenizer.json`` or folder; default: the model's folder),
  ``max_length``, ``bucket_boundaries`` and the selection/column options of
  :func:`adapt.data.read_text_classification`;
- image: ``preprocessing`` and ``augmentation`` dicts (:class:`adapt.data.ImagePreprocessing`,
  :class:`adapt.data.Augmentation`), ``eval_source`` and the selection options;
- lm: ``tokenizer`` (a SentencePiece ``.model``), ``seq_len``, ``document_separator``,
  ``format`` (text | prompt_response), ``eval_source``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from adapt import weights
from adapt.data import (
    Augmentation,
    DataError,
    ImagePreprocessing,
    load_image_classification,
    load_lm_text,
    load_prompt_response,
    load_text_classification,
)
from adapt.data.dataset import select
from adapt.harness.config import ConfigError, to_dict


@dataclass
class Data:
    train: Any
    eval: Any
    num_labels: int | None
    label_names: list[str] | None


def _tokenizer_path(options: dict, model_path: str | None) -> Path:
    given = options.pop("tokenizer", None)
    path = weights.resolve(given or model_path)
    if path.is_dir():
        path = path / "tokenizer.json"
    if not path.exists():
        raise DataError(f"no tokenizer at {path}; set data.tokenizer to a tokenizer.json")
    return path


def load_data(cfg: Any, *, seed: int, model_path: str | None) -> Data:
    """Train and eval sets for ``cfg`` (a config's ``data`` section)."""
    options = to_dict(cfg)
    if options.get("source") is None:
        raise ConfigError("data.source is required (a file or folder of the data set)")
    if options.get("kind") == "lm":
        return _load_lm(options)
    train = load_split(cfg, "train", seed=seed, model_path=model_path)
    evaluation = load_split(cfg, "eval", seed=seed, model_path=model_path)
    if train.label_names != evaluation.label_names:
        raise DataError(
            f"train and eval label maps differ: {train.label_names[:10]} vs "
            f"{evaluation.label_names[:10]}; give data.label_names explicitly"
        )
    return Data(train, evaluation, len(train.label_names), list(train.label_names))


def load_split(cfg: Any, role: str, *, seed: int, model_path: str | None) -> Any:
    """One classification split of a ``data`` section: ``role="train"`` is ``train_split`` with
    the selection options (``examples_per_class``, ``max_examples``), ``role="eval"`` is
    ``eval_split`` of ``eval_source`` (default ``source``) cut to ``eval_max_examples``.

    Separate from :func:`load_data` for data the run only evaluates or samples (a source task's
    eval set, the examples of EWC's Fisher), so the split it does not need is never read.
    """
    if role not in ("train", "eval"):
        raise ValueError(f"role must be 'train' or 'eval', got {role!r}")
    options = to_dict(cfg)
    kind = options.pop("kind", None)
    source = options.pop("source", None)
    if source is None:
        raise ConfigError("data.source is required (a file or folder of the data set)")
    train_split = options.pop("train_split", "train")
    eval_split = options.pop("eval_split", "dev")
    data_seed = options.pop("seed", seed)
    eval_max = options.pop("eval_max_examples", None)
    eval_source = options.pop("eval_source", None)
    selection = {k: options.pop(k) for k in ("examples_per_class", "max_examples") if k in options}
    train = role == "train"
    if not train:
        selection = {}
    src = source if train else (eval_source or source)
    split = train_split if train else eval_split
    if kind == "text":
        tok = _tokenizer_path(options, model_path)
        common = {
            k: options.pop(k)
            for k in ("max_length", "bucket_boundaries", "token_type_ids")
            if k in options
        }
        data = load_text_classification(
            src, tok, split=split, seed=data_seed, **common, **selection, **options
        )
    elif kind == "image":
        prep = ImagePreprocessing(**_tuples(options.pop("preprocessing", {})))
        aug_cfg = options.pop("augmentation", None)
        aug = Augmentation(**aug_cfg) if aug_cfg and train else None
        data = load_image_classification(
            src,
            split=split,
            seed=data_seed,
            preprocessing=prep,
            **({"augmentation": aug} if train else {}),
            **selection,
            **options,
        )
    elif kind == "lm":
        raise ConfigError("load_split reads classification data; kind 'lm' has no labels")
    else:
        raise ConfigError(f"data.kind must be text, image or lm; got {kind!r}")
    if not train and eval_max is not None and data.num_examples > eval_max:
        data = select(data, max_examples=eval_max, seed=data_seed)
    return data


def _load_lm(options: dict) -> Data:
    from adapt.convert.llama2c import SentencePieceTokenizer

    source = options.pop("source")
    for key in ("kind", "train_split", "eval_split", "seed", "eval_max_examples"):
        options.pop(key, None)
    eval_source = options.pop("eval_source", None)
    tok_path = options.pop("tokenizer", None)
    if tok_path is None:
        raise ConfigError("data.tokenizer is required for kind 'lm' (a SentencePiece .model)")
    tokenizer = SentencePieceTokenizer(weights.resolve(tok_path))
    fmt = options.pop("format", "text")
    loader = {"text": load_lm_text, "prompt_response": load_prompt_response}.get(fmt)
    if loader is None:
        raise ConfigError(f"data.format {fmt!r} is not 'text' or 'prompt_response'")
    seq_len = options.pop("seq_len", 128)
    train = loader(source, tokenizer, seq_len, **options)
    evaluation = loader(eval_source, tokenizer, seq_len, **options) if eval_source else train
    return Data(train, evaluation, None, None)


def _tuples(d: dict) -> dict:
    return {k: tuple(v) if isinstance(v, list) else v for k, v in dict(d).items()}


__all__ = ["Data", "load_data", "load_split"]
