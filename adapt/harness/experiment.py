"""What a config builds before training: data, model with its methods, partition stages, mesh,
forward and loss (:class:`Experiment`), everything checked and nothing written; and the
sharded trainer of one stage (:func:`stage_trainer`). :mod:`adapt.harness.loop` runs it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp

from adapt import optim, partition, paths, sharding, tasks
from adapt.config import ConfigError, RunConfig, suggest
from adapt.data import steps_per_epoch
from adapt.harness import exports, validation
from adapt.harness.data_setup import Data, load_data
from adapt.harness.model_setup import FIT_ONLY, Model, attach_methods, forward_fn, load_model
from adapt.models import families
from adapt.train import Trainer, place_frozen


def _mesh_rules(config: RunConfig) -> list[tuple[str, str]]:
    rules = config.mesh.rules
    if isinstance(rules, str):
        if rules not in sharding.RULE_PRESETS:
            raise ConfigError(f"mesh.rules {rules!r} is not one of {sorted(sharding.RULE_PRESETS)}")
        return sharding.RULE_PRESETS[rules]
    return [tuple(r) for r in rules]


def loss_function(task: str | tasks.Task, forward, num_labels: int | None = None):
    """The training loss of ``task`` on ``forward``'s outputs: ``(params, model_state, batch,
    rng) -> (loss, (metrics, new_model_state))``, what :class:`~adapt.train.Trainer` differentiates
    (also used by benchmarks/aot_memory.py to compile the harness's exact step ahead of time)."""
    task = tasks.get(task)

    def loss_fn(params, model_state, batch, rng):
        out, new_state = forward(params, model_state, batch, True, rng)
        loss, metrics = task.loss(out, batch)
        return loss, (metrics, new_state)

    return loss_fn


def _group_specs(config: RunConfig, labels: set[str], total: int) -> dict[str, dict]:
    """Each label's optimizer settings, with ``warmup_fraction`` turned into steps."""
    specs = {}
    for lab in labels:
        spec = config.optim.group(lab)
        fraction = spec.pop("warmup_fraction", 0.0)
        if fraction:
            spec["warmup_steps"] = int(round(fraction * total))
        specs[lab] = spec
    return specs


def total_steps(config: RunConfig, data: Data) -> int:
    """Optimizer steps of the run: ``train.steps``, or ``train.epochs`` passes over the training
    examples in full batches (0 for the recipes that only fit a head)."""
    if config.method.name in FIT_ONLY or not (config.train.epochs or config.train.steps):
        return 0
    if config.train.epochs:
        per_epoch = steps_per_epoch(data.train.num_examples, config.train.batch_size)
        return max(1, math.ceil(config.train.epochs * per_epoch))
    return config.train.steps


def eval_interval(config: RunConfig, data: Data) -> int:
    """Steps between evaluations: ``train.eval_every``, or ``train.eval_every_epochs`` in steps
    of the training set (0: at the end only)."""
    if config.train.eval_every_epochs:
        per_epoch = steps_per_epoch(data.train.num_examples, config.train.batch_size)
        return max(1, round(config.train.eval_every_epochs * per_epoch))
    return config.train.eval_every


def _stage_steps(config: RunConfig, num_stages: int, total: int) -> list[int]:
    given = config.method.stages
    if given:
        steps = [int(s) for s in given]
        if len(steps) != num_stages or sum(steps) != total:
            raise ConfigError(
                f"method.stages {steps} must give one step count per stage ({num_stages}) "
                f"summing to the run's steps ({total})"
            )
        return steps
    if num_stages == 1:
        return [total]
    base, extra = divmod(total, num_stages)
    return [base + (i < extra) for i in range(num_stages)]


def _check_groups(config: RunConfig, model: Model, stages: list) -> None:
    """Every ``optim.groups`` label must be a label of the partition: a misspelt label would
    otherwise leave its group with the default settings, silently."""
    used: set[str] = set()
    for rules in stages:
        used |= {lab for _, lab in rules if lab is not None}
    for label in config.optim.groups:
        if label not in used:
            raise ConfigError(
                f"optim.groups.{label}: no parameter of method {config.method.name!r} has the "
                f"label {label!r}{suggest(label, sorted(used))}; its labels are {sorted(used)}"
            )


def _check_batches(config: RunConfig, data: Data, mesh: Any) -> None:
    """A batch must fit the examples and split over the data-parallel devices."""
    batch = config.train.batch_size
    shards = sharding.data_parallel_size(mesh)
    for size, what in ((batch, "train.batch_size"), (config.train.eval_batch, "eval batch size")):
        if size % shards:
            raise ConfigError(
                f"{what} ({size}) must be a multiple of the {shards} data-parallel devices of "
                f"mesh.axes {config.mesh.axes}"
            )
    if (config.train.batch_size // config.train.grad_accum) % shards:
        raise ConfigError(
            f"each of the {config.train.grad_accum} micro-batches of train.batch_size {batch} "
            f"must split over the {shards} data-parallel devices"
        )
    n = data.train.num_examples
    if batch > n and config.method.name not in FIT_ONLY:
        raise ConfigError(
            f"train.batch_size ({batch}) exceeds the {n} training examples; lower it to at most {n}"
        )
    if config.train.select_best is not None and data.val is None:
        raise ConfigError("train.select_best needs a validation split (data.val_fraction)")


@dataclass
class Experiment:
    """Everything a config builds before training: what :func:`run` and
    :func:`evaluate_workdir` share."""

    config: RunConfig
    task: tasks.Task
    seed: int
    data: Data
    model: Model
    stages: list
    steps_per_stage: list[int]
    mesh: Any
    shard_rules: list
    forward: Any
    loss_fn: Any
    rng_train: jax.Array


def build(config: Any) -> Experiment:
    """Check the config, then load data and model and attach the methods (writes nothing)."""
    config = RunConfig.parse(config)
    validation.check_run(config)  # values that need no data or model, all problems at once
    seed, task = config.seed, tasks.get(config.task)
    rng_model, rng_method, rng_train = jax.random.split(jax.random.key(seed), 3)
    try:
        mesh = sharding.make_mesh([tuple(a) for a in config.mesh.axes])
    except ValueError as e:
        raise ConfigError(f"mesh.axes {config.mesh.axes}: {e}") from None
    data: Data = load_data(
        config.data, seed=seed, model_path=config.model.path, regression=task.numeric_labels
    )
    _check_batches(config, data, mesh)
    model: Model = load_model(config.model, task.head_size(data.num_labels), rng_model)
    stages = attach_methods(model, config.method, rng_method)
    _check_groups(config, model, stages)
    exports.check(config, model)
    forward = forward_fn(model, config.model.train_batch_stats)
    steps = _stage_steps(config, len(stages), total_steps(config, data))
    return Experiment(
        config, task, seed, data, model, stages, steps, mesh, _mesh_rules(config), forward,
        loss_function(task, forward), rng_train,
    )  # fmt: skip


def stage_trainer(exp: Experiment, rules: Any) -> tuple[Trainer, dict, dict, dict]:
    """``(trainer, trainable, frozen_on_mesh, frozen_host)`` for one stage's partition."""
    config = exp.config
    labels = partition.label(exp.model.params, rules)
    trainable, frozen_full = partition.split(exp.model.params, labels)
    tl = partition.trainable_labels(labels)
    total = sum(exp.steps_per_stage)
    decay = config.optim.layerwise_decay
    multipliers = None
    if decay:
        field = families.get(exp.model.family).num_layers_field  # what counts its blocks
        layers = getattr(exp.model.config, field, None) if field else None
        if layers is None:
            raise ConfigError(
                "optim.layerwise_decay needs a layered model (a layer count in its config, e.g. "
                f"num_hidden_layers); {exp.model.family} models have none"
            )
        multipliers = optim.layerwise_multipliers(trainable, int(layers), float(decay))
    groups = _group_specs(config, set(paths.flatten(tl).values()), total)
    tx = optim.build(tl, groups, max(total, 1), multipliers=multipliers)
    trainer = Trainer(
        exp.loss_fn, tx, exp.mesh, exp.shard_rules,
        grad_accum=config.train.grad_accum, remat=config.train.remat,
        per_device=config.mesh.mode == "per_device",
    )  # fmt: skip
    frozen_dtype = config.model.frozen_dtype
    frozen = place_frozen(
        frozen_full,
        exp.mesh,
        exp.shard_rules,
        dtype=jnp.dtype(frozen_dtype) if frozen_dtype else None,
    )
    return trainer, trainable, frozen, frozen_full


def trainable_count(exp: Experiment) -> int:
    """Trainable parameters of the run's last stage (what the method trains at the end)."""
    labels = partition.label(exp.model.params, exp.stages[-1])
    return partition.count(partition.split(exp.model.params, labels)[0])


__all__ = ["Experiment", "build", "eval_interval", "loss_function", "stage_trainer", "total_steps",
           "trainable_count"]  # fmt: skip
