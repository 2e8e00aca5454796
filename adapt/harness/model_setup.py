"""From the ``model`` and ``method`` sections of a config to a model, its parameters, the methods
attached to it and the partition stages that say what trains.

One function per concern: :func:`load_model` (weights: a Hugging Face or native directory,
another format that a family's registry record loads, or a from-scratch init of the same
architecture), :func:`forward_fn` (a batch fed as the family's record says),
:func:`attach_methods` (method parameters and rules) and :func:`stages_for` (the rules of each
training stage: one stage for most methods, several for gradual unfreezing and LP-FT).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import jax
import jax.numpy as jnp

from adapt import partition, paths, weights
from adapt.config import ConfigError, MethodSection, ModelSection
from adapt.methods import METHODS, base, build, recipes
from adapt.models import families

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16, None: None}
RECIPES = ("full", "linear_probe", "logistic_regression", "bitfit", "partial",
           "gradual_unfreezing", "lp_ft", "scratch")  # fmt: skip
# Recipes that take no training step: the head is fitted on cached features (adapt.harness.probing)
FIT_ONLY = ("linear_probe", "logistic_regression")


@dataclass
class Model:
    module: Any
    params: dict  # base parameters (+ method parameters once attached)
    model_state: dict  # non-parameter collections (BatchNorm statistics), {} if none
    family: str
    config: Any
    architecture: str | None
    base_params: dict = field(default_factory=dict)  # as loaded: anchor for L2-SP, fingerprint
    methods: list = field(default_factory=list)


def _dtype(name: str | None):
    if name not in DTYPES:
        raise ConfigError(f"dtype {name!r} is not one of {sorted(k for k in DTYPES if k)}")
    return DTYPES[name]


CLASSIFIER = "classifier"  # model.architecture: the family's own classification architecture


def _classifier_architecture(path: Any) -> str:
    """The sequence or image classification architecture of the checkpoint's family, for
    configs that take any checkpoint (configs/text/classify.py)."""
    from adapt.convert import hf

    family = hf.family_for(hf.read_config(path)["model_type"])
    found = [a for a in family.architectures
             if a.endswith(("ForSequenceClassification", "ForImageClassification"))]  # fmt: skip
    if not found:
        raise ConfigError(
            f"model.architecture={CLASSIFIER!r}: {path} is a {family.name} checkpoint, and adapt "
            f"has no classifier for that family (it builds {', '.join(family.architectures)})"
        )
    return found[0]


def load_model(cfg: ModelSection | Any, num_labels: int | None, rng: jax.Array) -> Model:
    """The model named by ``cfg`` (a config's ``model`` section) with a head of ``num_labels``."""
    cfg = ModelSection.parse_one(cfg, "model")
    kind, init = cfg.kind, cfg.init
    if init not in ("pretrained", "scratch"):
        raise ConfigError(f"model.init must be 'pretrained' or 'scratch', got {init!r}")
    overrides = dict(cfg.config)
    dtype = _dtype(cfg.dtype)
    if dtype is not None:
        overrides["dtype"] = dtype
    if cfg.pooling is not None:
        overrides["pooling"] = cfg.pooling
    if kind == "hf":
        from adapt.convert import hf

        path = weights.resolve(cfg.path)
        architecture = cfg.architecture
        if architecture == CLASSIFIER:
            architecture = _classifier_architecture(path)
        if num_labels is not None and (architecture or "").endswith("Classification"):
            overrides["num_labels"] = num_labels
        module, params, config, architecture = load_checkpoint(
            path, architecture, rng=rng, **overrides
        )
        family = hf.family_for(hf.read_config(path)["model_type"]).name
        model_state: dict = {}
    else:  # another checkpoint format: the family that reads it says how
        try:
            record, load = families.loader(kind)
        except families.UnknownFamilyError as e:
            raise ConfigError(str(e)) from None
        overrides.pop("pooling", None)
        try:
            loaded = load(
                weights.resolve(cfg.path) if cfg.path else None,
                num_labels=num_labels,
                pooling=cfg.pooling,
                overrides=overrides,
                rng=rng,
            )
        except families.ModelOptionError as e:
            raise ConfigError(str(e)) from None
        module, params, model_state = loaded.module, loaded.params, loaded.model_state
        family, config, architecture = record.name, loaded.config, loaded.architecture
        if loaded.scratch:
            init = "scratch"
    if getattr(config, "attention_impl", None) == "jax" and getattr(
        config, "attention_probs_dropout_prob", 0.0
    ):
        raise ConfigError(
            "model.config.attention_impl='jax' (jax.nn.dot_product_attention) has no dropout of "
            f"the attention weights, and this checkpoint trains with attention_probs_dropout_prob="
            f"{config.attention_probs_dropout_prob}: add --config.model.config."
            "attention_probs_dropout_prob=0.0, or keep attention_impl 'einsum'"
        )
    model = Model(module, params, model_state, family, config, architecture)
    if init == "scratch":
        variables = jax.jit(lambda r: module.init(r, *dummy_inputs(model)))(rng)
        model.params = variables["params"]
        model.model_state = {k: v for k, v in variables.items() if k != "params"}
    elif cfg.new_head:
        _reinitialise_head(model, cfg.head or families.get(family).head, rng)
    model.base_params = model.params
    return model


def load_checkpoint(
    path: Any, architecture: str | None, *, rng: jax.Array | None = None, **overrides: Any
) -> tuple[Any, dict, Any, str | None]:
    """``(module, params, config, architecture)`` from a Hugging Face directory or an adapt
    native one (which keeps what config.json cannot say, such as a classifier's pooling)."""
    from adapt.convert import hf, native

    if native.is_native(path):
        module, params, config = native.load_native(
            path, architecture=architecture, rng=rng, **overrides
        )
        return module, params, config, architecture or native.architecture_of(path)
    module, params, config = hf.load_pretrained(
        path, architecture=architecture, rng=rng, **overrides
    )
    return module, params, config, architecture


def _reinitialise_head(model: Model, pattern: str | None, rng: jax.Array) -> None:
    """Fresh head leaves (``model.new_head``). A checkpoint's head is kept whenever its shape fits
    (as ``from_pretrained`` does), which is right for the same task but wrong for a new label set
    of the same size: CIFAR-10's ten classes are not Fashion-MNIST's, and a confidently wrong
    head costs a linear probe most of a short run to unlearn."""
    if pattern is None:
        raise ConfigError(f"model.new_head: {model.family} models have no task head to replace")
    fresh = paths.flatten(
        jax.jit(lambda r: model.module.init(r, *dummy_inputs(model)))(rng)["params"]
    )
    flat = paths.flatten(model.params)
    regex = re.compile(pattern)
    hits = [p for p in flat if regex.fullmatch(p)]
    if not hits:
        raise ConfigError(
            f"model.new_head: no parameter matches the head pattern {pattern!r}; set model.head "
            f"to a regex of the head's leaves (e.g. one of {sorted(flat)[-3:]})"
        )
    model.params = paths.unflatten({**flat, **{p: fresh[p] for p in hits}})


def dummy_inputs(model: Model) -> tuple:
    """Positional arguments for ``module.init`` (parameter shapes never depend on them)."""
    return families.get(model.family).example_inputs(model.config)


def forward_fn(model: Model, train_batch_stats: bool = True) -> Callable:
    """``forward(params, model_state, batch, train, rng) -> (outputs, new_model_state)``."""
    module, methods = model.module, model.methods
    feed = families.get(model.family).feed  # how this family's module reads a batch

    def forward(params, model_state, batch, train, rng):
        rngs = {"dropout": rng} if train else {}
        variables = {"params": params, **model_state}
        args, kwargs = feed(batch, train, train_batch_stats)
        with base.attached(methods):
            out = module.apply(variables, *args, rngs=rngs, **kwargs)
        if isinstance(out, tuple):  # (outputs, mutated collections)
            return out[0], {**model_state, **out[1]}
        return out, model_state

    return forward


def attach_methods(
    model: Model, method_cfg: MethodSection | Any, rng: jax.Array
) -> list[partition.Rules]:
    """Create method parameters (added to ``model.params``) and return the partition stages."""
    method_cfg = MethodSection.parse_one(method_cfg, "method")
    name = method_cfg.name
    options = dict(method_cfg.options)
    if name in METHODS:
        method = build(name, model.family, **options)
        if hasattr(method, "prepare"):  # QLoRA: the frozen base is quantised before attaching
            model.params = method.prepare(model.params)
        model.methods = [method]
        extra = base.init(
            model.module,
            model.params,
            [method],
            rng,
            *dummy_inputs(model),
            variables={"params": model.params, **model.model_state},
        )
        model.params = partition.merge(model.params, extra)
    elif name not in RECIPES:
        raise ConfigError(f"unknown method {name!r}; choose from {sorted(METHODS + RECIPES)}")
    return stages_for(model, method_cfg)


def head_pattern(model: Model, method_cfg: MethodSection | Any) -> str | None:
    """Regex of the task head's leaves (``method.head`` or the family default); None: no head."""
    return MethodSection.parse_one(method_cfg, "method").head or families.get(model.family).head


def stages_for(model: Model, method_cfg: MethodSection | Any) -> list[partition.Rules]:
    method_cfg = MethodSection.parse_one(method_cfg, "method")
    name = method_cfg.name
    head = head_pattern(model, method_cfg)
    names = list(paths.flatten(model.params))
    if model.methods:
        stages = [[(head, "head"), *base.rules_for(model.methods), (".*", None)]]
    elif name in ("full", "scratch"):
        stages = [recipes.full_finetune(head)]
    elif name in FIT_ONLY:
        stages = [recipes.linear_probe(head)]
    elif name == "bitfit":
        stages = [recipes.bitfit(head)]
    elif name == "partial":
        trainable = method_cfg.trainable
        if not trainable:
            raise ConfigError("method 'partial' needs method.trainable, a regex of leaves to train")
        stages = [recipes.partial_finetune(head, trainable)]
    elif name == "lp_ft":
        stages = recipes.lp_ft(head)
    elif name == "gradual_unfreezing":
        stages = recipes.unfreezing_stages(names, head, _num_layers(model))
    else:
        raise ConfigError(f"unknown method {name!r}")
    if head is None:  # no head: drop the head rules the recipes put first
        stages = [[(p, lab) for p, lab in rules if p is not None] for rules in stages]
        if name in FIT_ONLY or method_cfg.head_init == "probe":
            raise ConfigError(f"{name} needs a head to fit; {model.family} models have none here")
    return stages


def _num_layers(model: Model) -> int:
    field_name = families.get(model.family).num_layers_field
    if field_name and hasattr(model.config, field_name):
        return int(getattr(model.config, field_name))
    raise ConfigError(
        f"gradual unfreezing needs a layered model; {model.family} has no layer count"
    )
