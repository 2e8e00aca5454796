"""Hugging Face PEFT adapter directories <-> adapt methods and leaves.

An adapter trained here can be served by ``peft.PeftModel.from_pretrained`` on the original
``transformers`` model, and an adapter made with PEFT can be loaded into adapt, for LoRA (with
rsLoRA and DoRA), IA3 and prompt tuning. A PEFT adapter directory holds ``adapter_config.json``
and ``adapter_model.safetensors`` with keys ``base_model.model.<HF module>.lora_A.weight``
(``(r, in)``; ours ``<module>/lora_a`` is ``(in, r)``), ``.lora_B.weight`` (``(out, r)``),
``.lora_magnitude_vector`` (DoRA, ``(out,)``), ``.ia3_l`` (``(out, 1)``, or ``(1, in)`` for
feed-forward modules), ``prompt_embeddings`` (``(num_virtual_tokens, hidden)``), plus the full
weights of ``modules_to_save`` (a new classification head) under their HF names.

Module names come from the family's conversion table (:mod:`adapt.convert.hf_bert`, ...), so
``bert/encoder/layer_0/attention/self/query`` is written as
``bert.encoder.layer.0.attention.self.query``. ``target_modules`` is always written as the
explicit list of adapted modules: a regex or PEFT's suffix matching could select other modules
than the ones adapt trained.

PEFT only warns about keys that do not fit the model and silently computes something else;
:func:`import_adapter` raises instead, naming the keys, options or shapes that are wrong.

Prompt tuning on BERT-style encoders: PEFT prepends the prompt as virtual *word* embeddings, which
then receive position and token-type embeddings and the embedding LayerNorm, and it shifts the real
tokens' positions. adapt's :class:`~adapt.methods.PromptTuning` prepends after the LayerNorm
(through ``extend_inputs``), a different function; :class:`VirtualTokenPromptTuning` computes
PEFT's, and only it is exchanged with PEFT for BERT. On LLaMA both layouts coincide.
"""

from __future__ import annotations

import functools
import json
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from adapt import paths
from adapt.convert import hf, mapping
from adapt.convert.safetensors_io import SafetensorsReader, write_file
from adapt.methods.base import Method, init, module_path
from adapt.methods.ia3 import IA3
from adapt.methods.lora import LoRA
from adapt.methods.prompts import PromptTuning, _vocab_rows
from adapt.models.bert import BertEmbeddings

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
SUPPORTED_PEFT_TYPES = ("LORA", "IA3", "PROMPT_TUNING")
# Our leaves saved in full by default: the modules PEFT itself wraps in modules_to_save for
# classification tasks (a head that the base checkpoint lacks or that was re-trained).
DEFAULT_MODULES_TO_SAVE = r"(classifier|score)/.*"


class AdapterFormatError(ValueError):
    """A PEFT adapter that does not fit the model, or a method PEFT cannot represent."""


# ------------------------------------------------------------------------ PEFT-layout prompts
class VirtualTokenPromptTuning(PromptTuning):
    """Prompt tuning as PEFT does it on BERT-style encoders: ``num_tokens`` learned vectors take
    the place of word embeddings in front of the input, so they get position (the first
    ``num_tokens`` ones, real tokens shifting right) and token-type-0 embeddings and go through the
    embedding LayerNorm and dropout like real tokens. The leaf is ``.../embeddings/
    prompt_embeddings``; outputs hold ``num_tokens`` extra leading positions."""

    def describe_targets(self) -> str:
        return "(BERT-style embeddings: word embeddings of virtual tokens)"

    def intercept(self, next_fun, args, kwargs, context):
        mod = context.module
        if context.method_name == "extend_inputs":
            embeddings, mask = next_fun(*args, **kwargs)
            if embeddings.shape[1] == mask.shape[1] + self.num_tokens:  # our virtual tokens
                ones = jnp.ones((mask.shape[0], self.num_tokens), mask.dtype)
                mask = jnp.concatenate([ones, mask], 1)
            return embeddings, mask
        if context.method_name != "__call__" or not isinstance(mod, BertEmbeddings):
            return next_fun(*args, **kwargs)
        scope = module_path(context)
        self.matched.add(scope)
        names = ("input_ids", "token_type_ids", "position_ids", "deterministic")
        call = dict(zip(names, args, strict=False))
        call.update(kwargs)
        batch, n = call["input_ids"].shape[0], self.num_tokens
        positions = call["position_ids"]
        virtual = jnp.arange(n, dtype=positions.dtype) + mod.config.position_offset
        call["position_ids"] = jnp.concatenate(
            [jnp.broadcast_to(virtual, (batch, n)), positions + n], 1
        )
        types = call["token_type_ids"]
        call["token_type_ids"] = jnp.concatenate([jnp.zeros((batch, n), types.dtype), types], 1)

        def init_prompt(key, shape, dtype):
            rows = _vocab_rows(mod, shape[0], key, shape[1]) if self.init_from == "vocab" else None
            return (
                0.02 * jax.random.normal(key, shape, dtype) if rows is None else rows.astype(dtype)
            )

        hidden = mod.config.hidden_size
        prompt = mod.scope.param("prompt_embeddings", init_prompt, (n, hidden), self.param_dtype)
        words = f"{scope}/word_embeddings"

        def prepend(inner_next, inner_args, inner_kwargs, inner_context):
            out = inner_next(*inner_args, **inner_kwargs)
            if inner_context.method_name == "__call__" and module_path(inner_context) == words:
                virtual_rows = jnp.broadcast_to(prompt.astype(out.dtype), (out.shape[0], n, hidden))
                return jnp.concatenate([virtual_rows, out], 1)
            return out

        with nn.intercept_methods(prepend):
            return next_fun(**call)


# ------------------------------------------------------------------------------ model names
@dataclass(frozen=True)
class _Model:
    """What the conversion needs to know about one architecture."""

    family: hf.Family
    module: Any
    inputs: tuple
    abstract: dict  # ShapeDtypeStruct tree of the base parameters
    leaves: dict[str, tuple[int, ...]]  # our base leaf -> shape
    table: list[mapping.Rule]
    dense: dict[str, str]  # our Dense module path -> HF module name


@functools.lru_cache(maxsize=8)
def _built(config: Any, architecture: str) -> tuple[hf.Family, Any, tuple, dict]:
    """Family, module, dummy inputs and abstract base parameters (one trace; cached because
    exporting or importing many adapters for one model is the common case)."""
    family = hf._family_of_architecture(architecture)
    module = family.build(config, architecture)
    inputs = family.dummy_inputs(config, architecture)
    return family, module, inputs, hf.abstract_params(module, inputs)


def _model(config: Any, architecture: str, hf_keys: Sequence[str] | None) -> _Model:
    try:
        family, module, inputs, abstract = _built(config, architecture)
    except TypeError:  # a config with unhashable fields (e.g. a list of eos ids): no cache
        family, module, inputs, abstract = _built.__wrapped__(config, architecture)
    leaves = {p: tuple(s.shape) for p, s in paths.flatten(abstract).items()}
    table = family.table(config, architecture, hf_keys)
    dense = {}
    for path, shape in leaves.items():
        key = _to_hf(table, path)
        if path.endswith("/kernel") and len(shape) == 2 and key and key.endswith(".weight"):
            dense[path.removesuffix("/kernel")] = key.removesuffix(".weight")
    return _Model(family, module, inputs, abstract, leaves, table, dense)


def _to_hf(table: Sequence[mapping.Rule], path: str) -> str | None:
    return next((k for r in table if (k := r.ours_to_hf(path)) is not None), None)


def _to_ours(table: Sequence[mapping.Rule], key: str) -> tuple[mapping.Rule, str] | None:
    return next(((r, p) for r in table if (p := r.hf_to_ours(key)) is not None), None)


def _task_type(architecture: str) -> str | None:
    for suffix, task in (
        ("ForSequenceClassification", "SEQ_CLS"),
        ("ForTokenClassification", "TOKEN_CLS"),
        ("ForCausalLM", "CAUSAL_LM"),
        ("Model", "FEATURE_EXTRACTION"),
    ):
        if architecture.endswith(suffix):
            return task
    return None  # masked LM, image classification: PEFT's generic PeftModel


def _available(model: _Model) -> str:
    return "\nModules of the model that adapters can attach to:" + paths.shorten_list(
        sorted(model.dense.values()), 60
    )


def _listing(title: str, items: list[str]) -> str:
    return f"\n{title} ({len(items)}):{paths.shorten_list(items)}" if items else ""


# ----------------------------------------------------------------------------------- export
def export_adapter(
    params: Mapping,
    methods: Sequence[Method],
    model_config: Any,
    architecture: str,
    directory: str | os.PathLike,
    *,
    base_model_name_or_path: str | None = None,
    modules_to_save_regex: str | None = None,
) -> Path:
    """Write ``adapter_config.json`` + ``adapter_model.safetensors`` that
    ``peft.PeftModel.from_pretrained(<transformers architecture>, directory)`` loads.

    ``params``: the full tree (base + method leaves, as after training). ``methods``: exactly one
    LoRA (rsLoRA/DoRA), IA3, or prompt tuning (``VirtualTokenPromptTuning`` for BERT-style
    encoders). Base leaves matching ``modules_to_save_regex`` (default: a ``classifier``/``score``
    head) are saved in full as PEFT's ``modules_to_save``; every other base leaf must be the
    base checkpoint's, since PEFT will take it from there.
    """
    if len(methods) != 1:
        raise AdapterFormatError(
            f"a PEFT adapter holds one method; got {len(methods)} "
            f"({[type(m).__name__ for m in methods]}). Export each to its own directory."
        )
    (method,) = methods
    model = _model(model_config, architecture, None)
    flat = paths.flatten(params)  # arrays are fetched to the host only where exported
    if isinstance(method, LoRA):
        cfg, tensors = _export_lora(method, flat, model)
    elif isinstance(method, IA3):
        cfg, tensors = _export_ia3(method, flat, model)
    elif isinstance(method, PromptTuning):
        cfg, tensors = _export_prompt(method, flat, model, model_config)
    else:
        raise AdapterFormatError(
            f"{type(method).__name__} has no PEFT format adapt can write; supported: LoRA "
            "(incl. rsLoRA and DoRA), IA3, PromptTuning (VirtualTokenPromptTuning for BERT)"
        )
    task = _task_type(architecture)
    saved, head_tensors = _modules_to_save(flat, model, modules_to_save_regex)
    if task in ("SEQ_CLS", "TOKEN_CLS") and not any(m in saved for m in ("classifier", "score")):
        raise AdapterFormatError(
            f"params hold no classifier head for {architecture}: PEFT would use the base "
            "checkpoint's (usually untrained) head. Pass the full parameter tree."
        )
    adapted = cfg.get("target_modules", [])
    protected = saved + (["classifier", "score"] if task in ("SEQ_CLS", "TOKEN_CLS") else [])
    clash = [m for m in adapted if any(re.match(rf"(^|.*\.){p}($|\..*)", m) for p in protected)]
    if clash:
        raise AdapterFormatError(
            f"modules {clash} are adapted but lie inside modules_to_save {protected}; PEFT never "
            "adapts those, so it would compute something else. Merge the adapter there first."
        )
    prefix = "base_model." if cfg["peft_type"] == "PROMPT_TUNING" else "base_model.model."
    tensors = {k if k == "prompt_embeddings" else prefix + k: v for k, v in tensors.items()}
    tensors.update({prefix + k: v for k, v in head_tensors.items()})
    cfg.update(
        task_type=task,
        base_model_name_or_path=base_model_name_or_path,
        revision=None,
        inference_mode=True,
        auto_mapping=None,
        modules_to_save=saved or None,
    )
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    write_file(directory / WEIGHTS_NAME, tensors, {"format": "pt"})
    (directory / CONFIG_NAME).write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    return directory


def _adapted_modules(flat: Mapping, suffix: str, model: _Model, what: str) -> dict[str, str]:
    """Our module paths holding ``<module>/<suffix>`` leaves -> their HF names."""
    mods = sorted(p.removesuffix(f"/{suffix}") for p in flat if p.endswith(f"/{suffix}"))
    if not mods:
        raise AdapterFormatError(
            f"params hold no '{suffix}' leaves for {what}; pass the full parameter tree "
            "(base + adapter leaves) of the trained model"
        )
    unknown = [m for m in mods if m not in model.dense]
    if unknown:
        raise AdapterFormatError(
            f"{what} leaves sit on modules the conversion table cannot name:"
            f"{paths.shorten_list(unknown)}" + _available(model)
        )
    return {m: model.dense[m] for m in mods}


def _number(x: float) -> int | float:
    return int(x) if float(x).is_integer() else float(x)


def _export_lora(method: LoRA, flat: dict, model: _Model) -> tuple[dict, dict]:
    name, rank = method.name, method.rank
    mods = _adapted_modules(flat, f"{name}_a", model, f"LoRA {name!r}")
    tensors = {}
    for mod, hf_mod in mods.items():
        a, b = np.asarray(flat[f"{mod}/{name}_a"]), flat.get(f"{mod}/{name}_b")
        d_in, d_out = model.leaves[f"{mod}/kernel"]
        if b is None or a.shape != (d_in, rank) or b.shape != (rank, d_out):
            raise AdapterFormatError(
                f"{mod}: {name}_a {a.shape} / {name}_b {None if b is None else b.shape} do not "
                f"fit rank {rank} on a ({d_in}, {d_out}) kernel"
            )
        tensors[f"{hf_mod}.lora_A.weight"] = np.ascontiguousarray(a.T)
        tensors[f"{hf_mod}.lora_B.weight"] = np.ascontiguousarray(np.asarray(b).T)
        if method.dora:
            magnitude = flat.get(f"{mod}/{name}_magnitude")
            if magnitude is None:
                raise AdapterFormatError(f"{mod}: DoRA leaf {name}_magnitude is missing")
            tensors[f"{hf_mod}.lora_magnitude_vector"] = np.asarray(magnitude)
    cfg = {
        "peft_type": "LORA",
        "r": rank,
        "lora_alpha": _number(method.alpha),
        "lora_dropout": method.dropout,
        "use_rslora": method.rslora,
        "use_dora": method.dora,
        "target_modules": sorted(mods.values()),
        "fan_in_fan_out": False,
        "bias": "none",
        "lora_bias": False,
        "init_lora_weights": True,
        "layers_to_transform": None,
        "layers_pattern": None,
        "rank_pattern": {},
        "alpha_pattern": {},
        "exclude_modules": None,
        "layer_replication": None,
        "megatron_config": None,
        "loftq_config": {},
    }
    return cfg, tensors


def _export_ia3(method: IA3, flat: dict, model: _Model) -> tuple[dict, dict]:
    mods = _adapted_modules(flat, "ia3_l", model, "IA3")
    tensors, feedforward = {}, []
    for mod, hf_mod in mods.items():
        scale = np.asarray(flat[f"{mod}/ia3_l"])
        ff = method.ff_pattern is not None and bool(method.ff_pattern.fullmatch(mod))
        feedforward += [hf_mod] if ff else []
        tensors[f"{hf_mod}.ia3_l"] = scale.reshape((1, -1) if ff else (-1, 1))
    cfg = {
        "peft_type": "IA3",
        "target_modules": sorted(mods.values()),
        "feedforward_modules": sorted(feedforward),
        "fan_in_fan_out": False,
        "init_ia3_weights": True,
        "exclude_modules": None,
    }
    return cfg, tensors


def _export_prompt(
    method: PromptTuning, flat: dict, model: _Model, config: Any
) -> tuple[dict, dict]:
    family = model.family.name
    if family not in ("bert", "llama"):
        raise AdapterFormatError(f"prompt tuning export is not supported for {family} models")
    if family == "bert" and not isinstance(method, VirtualTokenPromptTuning):
        raise AdapterFormatError(
            "PromptTuning on BERT prepends after the embedding LayerNorm and keeps the real "
            "tokens' positions; PEFT's prompt tuning prepends virtual word embeddings before "
            "position embeddings and LayerNorm, so PEFT would compute a different function. "
            "Train with adapt.peft_format.VirtualTokenPromptTuning to export to PEFT."
        )
    if family == "llama" and isinstance(method, VirtualTokenPromptTuning):
        raise AdapterFormatError("VirtualTokenPromptTuning is for BERT; use PromptTuning on LLaMA")
    found = [p for p in flat if p.rsplit("/", 1)[-1] == "prompt_embeddings"]
    if len(found) != 1:
        raise AdapterFormatError(f"expected one prompt_embeddings leaf in params, found {found}")
    prompt = np.asarray(flat[found[0]])
    if prompt.shape[0] != method.num_tokens:
        raise AdapterFormatError(
            f"{found[0]} has {prompt.shape[0]} rows but the method has {method.num_tokens} tokens"
        )
    cfg = {
        "peft_type": "PROMPT_TUNING",
        "num_virtual_tokens": method.num_tokens,
        "token_dim": int(prompt.shape[1]),
        "num_transformer_submodules": 1,
        "num_attention_heads": config.num_attention_heads,
        "num_layers": config.num_hidden_layers,
        "prompt_tuning_init": "RANDOM",
        "prompt_tuning_init_text": None,
        "tokenizer_name_or_path": None,
        "tokenizer_kwargs": None,
    }
    return cfg, {"prompt_embeddings": prompt}


def _modules_to_save(flat: dict, model: _Model, regex: str | None) -> tuple[list[str], dict]:
    """The HF modules to save in full and their tensors. Each is the largest HF module whose
    parameters all lie in the selection, as PEFT wraps and saves whole modules."""
    pattern = re.compile(regex or DEFAULT_MODULES_TO_SAVE)
    selected = [p for p in flat if p in model.leaves and pattern.fullmatch(p)]
    if regex is not None and not selected:
        raise AdapterFormatError(
            f"modules_to_save_regex {regex!r} matches no base parameter in params"
        )
    hf_keys = {p: _to_hf(model.table, p) for p in model.leaves}
    all_keys = {k for k in hf_keys.values() if k}

    def keys_under(module: str) -> set[str]:
        return {k for k in all_keys if k.startswith(module + ".")}

    covered: set[str] = set()
    for path in selected:
        covered |= keys_under(hf_keys[path].rsplit(".", 1)[0])
    if covered == all_keys:
        raise AdapterFormatError(f"modules_to_save_regex {regex!r} selects the whole model")
    modules = set()
    for key in covered:
        module = key.rsplit(".", 1)[0]
        while "." in module and keys_under(parent := module.rsplit(".", 1)[0]) <= covered:
            module = parent
        modules.add(module)
    wanted = {p: k for p, k in hf_keys.items() if k in covered}
    absent = [p for p in wanted if p not in flat]
    if absent:
        raise AdapterFormatError(
            f"modules_to_save {sorted(modules)} need leaves absent from params:"
            f"{paths.shorten_list(absent)}"
        )
    tensors = mapping.export_tensors({p: flat[p] for p in wanted}, model.table)
    return sorted(modules), tensors


# ----------------------------------------------------------------------------------- import
# Options that do not change what a loaded adapter computes (initialisation, bookkeeping).
_IGNORED = {
    "peft_type", "task_type", "peft_version", "base_model_name_or_path", "revision",
    "inference_mode", "auto_mapping", "modules_to_save", "target_modules", "exclude_modules",
    "init_lora_weights", "init_ia3_weights", "eva_config", "megatron_core", "qalora_group_size",
    "layers_pattern", "prompt_tuning_init", "prompt_tuning_init_text", "tokenizer_name_or_path",
    "tokenizer_kwargs", "num_attention_heads", "num_layers", "token_dim",
}  # fmt: skip
_USED = {
    "LORA": {"r", "lora_alpha", "lora_dropout", "use_rslora", "use_dora"},
    "IA3": {"feedforward_modules"},
    "PROMPT_TUNING": {"num_virtual_tokens", "num_transformer_submodules"},
}
_REQUIRED = {"bias": ("none",), "num_transformer_submodules": (1, None)}
_KINDS = {
    "LORA": {"lora_A.weight": "a", "lora_B.weight": "b", "lora_magnitude_vector": "magnitude"},
    "IA3": {"ia3_l": "l"},
    "PROMPT_TUNING": {},
}


def _read_config(directory: Path) -> dict:
    path = directory / CONFIG_NAME
    if not path.exists():
        raise FileNotFoundError(f"{path}: no {CONFIG_NAME}; is {directory} a PEFT adapter dir?")
    try:
        cfg = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise AdapterFormatError(f"{path}: not valid JSON ({e})") from e
    peft_type = cfg.get("peft_type")
    if peft_type not in SUPPORTED_PEFT_TYPES:
        raise AdapterFormatError(
            f"{path}: peft_type {peft_type!r} is not supported (supported: "
            f"{list(SUPPORTED_PEFT_TYPES)})"
        )
    # Any option we do not implement must be at its default, which PEFT spells None/False/{}/[].
    unsupported = []
    for field, value in sorted(cfg.items()):
        if field in _REQUIRED:
            if value not in _REQUIRED[field]:
                unsupported.append(f"{field}={value!r} (supported: {list(_REQUIRED[field])})")
        elif field not in _IGNORED and field not in _USED[peft_type] and value not in (
            None, False, {}, [], "",
        ):  # fmt: skip
            unsupported.append(f"{field}={value!r}")
    init_weights = str(cfg.get("init_lora_weights"))
    if init_weights.startswith(("pissa", "olora", "corda", "loftq")):
        unsupported.append(
            f"init_lora_weights={init_weights!r} (the adapter expects base weights that this "
            "initialisation modified; save it converted to plain LoRA with PEFT's "
            "path_initial_model_for_weight_conversion)"
        )
    if unsupported:
        raise AdapterFormatError(
            f"{path}: {peft_type} options adapt does not implement:"
            f"{paths.shorten_list(unsupported)}"
        )
    return cfg


def _peft_targets(cfg: dict, key: str) -> bool | None:
    """PEFT's ``check_target_module_exists`` (None where it cannot be decided from the config)."""
    exclude = cfg.get("exclude_modules")
    if exclude:
        if isinstance(exclude, str):
            if re.fullmatch(exclude, key):
                return False
        elif key in exclude or any(key.endswith(f".{e}") for e in exclude):
            return False
    if any(re.match(rf"(^|.*\.){m}($|\..*)", key) for m in cfg.get("modules_to_save") or []):
        return False
    targets = cfg.get("target_modules")
    if targets is None or targets == "all-linear":
        return None
    if isinstance(targets, str):
        return re.fullmatch(targets, key) is not None
    return key in targets or any(key.endswith(f".{t}") for t in targets)


def _peft_feedforward(cfg: dict, key: str) -> bool:
    ff = cfg.get("feedforward_modules") or []
    if isinstance(ff, str):
        return re.fullmatch(ff, key) is not None
    return any(key.endswith(t) for t in ff)  # PEFT's IA3 matches a bare suffix here


def _saved(cfg: dict, key: str) -> bool:
    """Whether PEFT's ``modules_to_save`` (matched as a bare suffix of a module name) holds
    the parameter ``key``."""
    parts = key.split(".")
    prefixes = [".".join(parts[:i]) for i in range(1, len(parts))]
    return any(p.endswith(m) for p in prefixes for m in cfg.get("modules_to_save") or [])


def import_adapter(
    directory: str | os.PathLike, params: Mapping, model_config: Any, architecture: str
) -> tuple[list[Method], dict]:
    """Read a PEFT adapter directory for ``architecture`` into ``(methods, adapter_params)``.

    ``adapter_params`` holds the method leaves in our names plus the full weights of any
    ``modules_to_save`` (a classification head), which *replace* those of ``params``: combine with
    :func:`overlay` (or ``partition.merge`` with base params that lack the head). Raises
    :class:`AdapterFormatError` naming unsupported types or options, keys that fit no module of
    the model, missing weights and mis-shaped tensors.
    """
    directory = Path(directory)
    cfg = _read_config(directory)
    weights = directory / WEIGHTS_NAME
    if not weights.exists():
        found = sorted(p.name for p in directory.iterdir())
        raise AdapterFormatError(
            f"{weights}: missing (only safetensors adapters are read: {found})"
        )
    reader = SafetensorsReader(weights)
    keys = _sort_keys(cfg, reader.shapes(), model_config, architecture, f"{directory}")
    method, leaves = _convert(cfg, reader, keys, f"{directory}")
    if keys.heads:
        flat_params = paths.flatten(params)
        abstract = paths.flatten(keys.model.abstract)
        expected = {
            p: (
                keys.model.leaves[p],
                np.dtype((flat_params[p] if p in flat_params else abstract[p]).dtype),
            )
            for p in keys.heads
        }
        try:
            converted, _ = mapping.import_tensors(
                {hf_key: reader[key] for key, hf_key in keys.heads.values()},
                keys.model.table,
                expected,
            )
        except mapping.CheckpointMismatchError as e:
            raise AdapterFormatError(f"{directory}: modules_to_save weights: {e}") from e
        leaves.update(converted)
    return [method], paths.unflatten({p: jnp.asarray(v) for p, v in leaves.items()})


@dataclass
class _Keys:
    """An adapter file's keys, sorted: per adapted HF module ``{kind: key}``, and per head leaf of
    ours ``(key, HF key)``."""

    model: _Model
    adapter: dict[str, dict[str, str]]
    heads: dict[str, tuple[str, str]]


def _sort_keys(cfg: dict, shapes: Mapping, config: Any, architecture: str, where: str) -> _Keys:
    """Assign every key to a module of the model; raise listing the keys that fit none and the
    weights PEFT's config asks for but the file lacks."""
    peft_type = cfg["peft_type"]
    kinds = dict(_KINDS[peft_type])
    if not cfg.get("use_dora"):
        kinds.pop("lora_magnitude_vector", None)  # in a plain LoRA adapter: unexpected
    unexpected, missing, stripped = [], [], {}
    for key in shapes:
        prefix = next((p for p in ("base_model.model.", "base_model.") if key.startswith(p)), None)
        if prefix is not None:
            stripped[key.removeprefix(prefix)] = key
        elif key != "prompt_embeddings" or peft_type != "PROMPT_TUNING":
            unexpected.append(key)
    if peft_type == "PROMPT_TUNING" and "prompt_embeddings" not in shapes:
        missing.append("prompt_embeddings")
    # The backbone prefix may differ from the architecture's (an adapter made on BertModel used
    # on BertForSequenceClassification): name the modules the way that fits more of the keys.
    model = max(
        (_model(config, architecture, hf_keys) for hf_keys in (None, list(stripped))),
        key=lambda m: sum(
            any(k.startswith(f"{d}.") for d in m.dense.values()) or _to_ours(m.table, k) is not None
            for k in stripped
        ),
    )
    hf_dense = {hf_mod: ours for ours, hf_mod in model.dense.items()}
    adapter: dict[str, dict[str, str]] = {}
    heads: dict[str, tuple[str, str]] = {}
    for key, original in stripped.items():
        suffix = next((s for s in kinds if key.endswith(f".{s}")), None)
        module = key.removesuffix(f".{suffix}")
        if suffix is not None and module in hf_dense:
            adapter.setdefault(module, {})[kinds[suffix]] = original
        elif suffix is None and (hit := _to_ours(model.table, key)) and hit[1] in model.leaves:
            if not _saved(cfg, key):
                unexpected.append(f"{original} (not in modules_to_save)")
            heads[hit[1]] = (original, key)
        else:
            unexpected.append(original)
    if peft_type != "PROMPT_TUNING":
        decided = {m: _peft_targets(cfg, m) for m in hf_dense}
        # "all-linear" or no target list: the weights say which modules were adapted.
        targeted = (
            set(adapter) if None in decided.values() else {m for m, t in decided.items() if t}
        )
        unexpected += [
            f"{k} (module not selected by target_modules)"
            for m in sorted(set(adapter) - targeted)
            for k in adapter[m].values()
        ]
        for m in sorted(targeted):
            have = adapter.get(m, {})
            missing += [f"base_model.model.{m}.{s}" for s, k in kinds.items() if k not in have]
        if not adapter and not unexpected and not missing:
            raise AdapterFormatError(f"{where}: holds no {peft_type} weights")
    if unexpected or missing:
        raise AdapterFormatError(
            f"{where}: the adapter does not fit {architecture}:"
            + _listing("keys that fit no module of the model", sorted(unexpected))
            + _listing("weights missing from the adapter", missing)
            + _available(model)
            + f"\nmodules_to_save: {cfg.get('modules_to_save')}"
        )
    return _Keys(model, adapter, heads)


def _convert(cfg: dict, reader: SafetensorsReader, keys: _Keys, where: str) -> tuple[Method, dict]:
    """The method the config describes and its leaves in our layout; raise listing every
    tensor whose shape does not fit (shapes in PEFT's layout)."""
    peft_type, model, shapes = cfg["peft_type"], keys.model, reader.shapes()
    hf_dense = {hf_mod: ours for ours, hf_mod in model.dense.items()}
    want: dict[str, tuple[tuple[int, ...], str, Any]] = {}  # key -> (HF shape, our path, to_ours)
    ff_modules = [m for m in keys.adapter if peft_type == "IA3" and _peft_feedforward(cfg, m)]
    for module, kinds in keys.adapter.items():
        ours = hf_dense[module]
        d_in, d_out = model.leaves[f"{ours}/kernel"]
        r = cfg.get("r", 8)
        layouts = {
            "a": ((r, d_in), f"{ours}/lora_a", np.transpose),
            "b": ((d_out, r), f"{ours}/lora_b", np.transpose),
            "magnitude": ((d_out,), f"{ours}/lora_magnitude", np.asarray),
            "l": ((1, d_in) if module in ff_modules else (d_out, 1), f"{ours}/ia3_l", np.ravel),
        }
        want.update({key: layouts[kind] for kind, key in kinds.items()})
    targets = _exact(hf_dense[m] for m in keys.adapter)
    if peft_type == "LORA":
        method: Method = LoRA(
            targets,
            rank=cfg.get("r", 8),
            alpha=cfg.get("lora_alpha", 8),
            dropout=cfg.get("lora_dropout", 0.0),
            rslora=bool(cfg.get("use_rslora")),
            dora=bool(cfg.get("use_dora")),
        )
    elif peft_type == "IA3":
        method = IA3(targets, _exact(hf_dense[m] for m in ff_modules) if ff_modules else None)
    elif model.family.name in ("bert", "llama"):
        num = cfg.get("num_virtual_tokens")
        if not isinstance(num, int) or num <= 0:
            raise AdapterFormatError(f"{where}: num_virtual_tokens={num!r} is not a positive int")
        method = (VirtualTokenPromptTuning if model.family.name == "bert" else PromptTuning)(num)
    else:
        raise AdapterFormatError(f"{where}: prompt tuning is not supported for {model.family.name}")
    # The leaves the method creates on this model, by the model itself (abstractly).
    expected = jax.eval_shape(
        lambda p: init(model.module, p, [method], jax.random.key(0), *model.inputs),
        model.abstract,
    )
    expected = {p: tuple(s.shape) for p, s in paths.flatten(expected).items()}
    if peft_type == "PROMPT_TUNING":
        ((path, shape),) = expected.items()
        want["prompt_embeddings"] = (shape, path, np.asarray)
    misshaped = [
        f"{key}: {list(shapes[key])}, expected {list(shape)}"
        for key, (shape, _, _) in sorted(want.items())
        if tuple(shapes[key]) != shape
    ]
    if misshaped:
        raise AdapterFormatError(
            f"{where}: the adapter does not fit {model.family.name} with this config:"
            + _listing("tensors of the wrong shape (PEFT layout)", misshaped)
        )
    leaves = {path: to_ours(reader[key]) for key, (_, path, to_ours) in want.items()}
    if {p: v.shape for p, v in leaves.items()} != expected:  # a bug rather than bad input
        raise AdapterFormatError(
            f"internal: leaves {sorted(leaves)} != method's {sorted(expected)}"
        )
    return method, leaves


def _exact(modules) -> str:
    """A regex full-matching exactly these module paths."""
    return "|".join(re.escape(m) for m in sorted(modules))


def overlay(params: Mapping, adapter_params: Mapping) -> dict:
    """``params`` with ``adapter_params`` added; leaves present in both (a ``modules_to_save``
    head) take the adapter's value, as PEFT's ``modules_to_save`` replaces the base module."""
    flat = dict(paths.flatten(params))
    flat.update(paths.flatten(adapter_params))
    return paths.unflatten(flat)


__all__ = [
    "AdapterFormatError",
    "SUPPORTED_PEFT_TYPES",
    "VirtualTokenPromptTuning",
    "export_adapter",
    "import_adapter",
    "overlay",
]
