"""Strict reading of Hugging Face ``config.json``: every field is either implemented, known to be
irrelevant to the forward pass, or an error.

Silently ignoring a field we do not implement (an ``rope_scaling``, a relative position embedding)
gives a model that loads and then computes the wrong numbers. So each family lists the fields it
implements and the values it supports; anything else raises :class:`UnsupportedConfigError` naming
the field.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

from adapt.errors import AdaptError


class UnsupportedConfigError(AdaptError, ValueError):
    """A Hugging Face config asks for something adapt does not implement."""


# Fields of transformers' PretrainedConfig that do not change a model's forward computation (or that
# we handle generically: labels, token ids, dtype). Families add their own implemented fields.
GENERIC_FIELDS = frozenset(
    {
        "_name_or_path",
        "_attn_implementation",
        "_attn_implementation_autoset",
        "_commit_hash",
        "architectures",
        "model_type",
        "transformers_version",
        "torch_dtype",
        "dtype",
        "id2label",
        "label2id",
        "num_labels",
        "problem_type",
        "finetuning_task",
        "pad_token_id",
        "bos_token_id",
        "eos_token_id",
        "sep_token_id",
        "cls_token_id",
        "decoder_start_token_id",
        "tokenizer_class",
        "prefix",
        "task_specific_params",
        "use_cache",
        "output_hidden_states",
        "output_attentions",
        "return_dict",
        "gradient_checkpointing",
        "chunk_size_feed_forward",
        "classifier_dropout",
        "torchscript",
        "pruned_heads",
        "tf_legacy_loss",
        "use_bfloat16",
        "max_length",
        "min_length",
        "do_sample",
        "early_stopping",
        "num_beams",
        "num_beam_groups",
        "diversity_penalty",
        "temperature",
        "top_k",
        "top_p",
        "typical_p",
        "repetition_penalty",
        "length_penalty",
        "no_repeat_ngram_size",
        "encoder_no_repeat_ngram_size",
        "bad_words_ids",
        "num_return_sequences",
        "output_scores",
        "return_dict_in_generate",
        "forced_bos_token_id",
        "forced_eos_token_id",
        "remove_invalid_values",
        "exponential_decay_length_penalty",
        "suppress_tokens",
        "begin_suppress_tokens",
        "sentence_transformers",
        "initializer_range",
        "layer_norm_eps_for_init",
    }
)

# Fields that must hold exactly the given value (the default) for our model to be correct.
GENERIC_REQUIRED = {
    "is_decoder": False,
    "add_cross_attention": False,
    "is_encoder_decoder": False,
    "tie_encoder_decoder": False,
    "cross_attention_hidden_size": None,
}


def check_fields(
    hf: Mapping[str, Any],
    family: str,
    implemented: Iterable[str],
    required: Mapping[str, Any] | None = None,
    allowed: Mapping[str, Callable[[Any], bool] | Iterable[Any]] | None = None,
) -> None:
    """Raise naming every field of ``hf`` that we would otherwise silently mis-handle.

    ``implemented``: fields the family maps onto its config. ``required``: field -> the only value
    we support. ``allowed``: field -> the set of supported values, or a predicate.
    """
    implemented = set(implemented)
    required = {**GENERIC_REQUIRED, **(required or {})}
    allowed = allowed or {}
    problems = []
    for key, value in hf.items():
        if key in required:
            if value != required[key]:
                problems.append(f"{key}={value!r} (only {required[key]!r} is implemented)")
        elif key in allowed:
            ok = allowed[key]
            good = ok(value) if callable(ok) else value in set(ok)
            if not good:
                what = "" if callable(ok) else f" (supported: {sorted(map(str, ok))})"
                problems.append(f"{key}={value!r} is not supported{what}")
        elif key not in implemented and key not in GENERIC_FIELDS:
            problems.append(f"{key}={value!r} is not a field adapt knows for {family}")
    if problems:
        raise UnsupportedConfigError(
            f"unsupported {family} config: "
            + "; ".join(problems)
            + ". adapt refuses rather than silently computing something else; remove the field "
            "if it is irrelevant, or implement it in adapt/models."
        )


def as_dict(config: Any) -> dict[str, Any]:
    """Accept a dict or a ``transformers.PretrainedConfig`` (through its ``to_diff_dict``)."""
    if isinstance(config, Mapping):
        return dict(config)
    if hasattr(config, "to_diff_dict"):
        return config.to_diff_dict()
    raise TypeError(f"expected a config dict or transformers config, got {type(config).__name__}")
