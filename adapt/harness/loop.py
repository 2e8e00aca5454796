"""``run(config, workdir)``: the whole experiment, from config to results.json.

config -> data -> model (+ methods) -> partition stages -> [sharded jitted steps, eval,
checkpoints, logs]* -> final eval -> results.json, learning-curve PNG, optional export.

Resuming is implicit: a workdir holding checkpoints of the *same* experiment (same config and
base-weight fingerprints) continues from the newest one, bit for bit; a workdir of another
experiment is refused before anything is written.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from adapt import optim, partition, paths, sharding
from adapt.checkpoint import Checkpointer, PreemptionFlag
from adapt.data import train_batches
from adapt.fingerprint import config_fingerprint, jsonable, params_fingerprint
from adapt.harness import config as cfg_lib
from adapt.harness.config import ConfigError, get
from adapt.harness.data_setup import Data, load_data
from adapt.harness.evaluation import evaluate
from adapt.harness.hooks import RunHooks
from adapt.harness.model_setup import Model, attach_methods, forward_fn, load_model
from adapt.metrics import MetricsWriter, ProgressBar, plot_learning_curves, write_results
from adapt.tasks.causal_lm import causal_lm_loss
from adapt.tasks.classification import cross_entropy
from adapt.train import Trainer, check_finite, place_frozen


def _mesh_rules(config: Any) -> list[tuple[str, str]]:
    rules = get(config.get("mesh"), "rules", "dp")
    if isinstance(rules, str):
        if rules not in sharding.RULE_PRESETS:
            raise ConfigError(f"mesh.rules {rules!r} is not one of {sorted(sharding.RULE_PRESETS)}")
        return sharding.RULE_PRESETS[rules]
    return [tuple(r) for r in rules]


def loss_function(task: str, forward, num_labels: int | None):
    """The training loss of ``task`` on ``forward``'s outputs: ``(params, model_state, batch,
    rng) -> (loss, (metrics, new_model_state))``, what :class:`~adapt.train.Trainer` differentiates
    (also used by benchmarks/aot_memory.py to compile the harness's exact step ahead of time)."""

    def loss_fn(params, model_state, batch, rng):
        out, new_state = forward(params, model_state, batch, True, rng)
        if task == "classification":
            loss = cross_entropy(out["logits"], batch["labels"])
            acc = jnp.mean((jnp.argmax(out["logits"], -1) == batch["labels"]).astype(jnp.float32))
            return loss, ({"accuracy": acc}, new_state)
        loss, sums = causal_lm_loss(out["logits"], batch["labels"], batch["loss_mask"])
        return loss, ({"tokens": sums["tokens"]}, new_state)

    return loss_fn


def _group_specs(config: Any, labels: set[str]) -> dict[str, dict]:
    optim_cfg = config.get("optim")
    default = dict(get(optim_cfg, "default", None) or {"lr": 1e-3})
    groups = cfg_lib.to_dict(get(optim_cfg, "groups", None) or {})
    return {lab: {**default, **groups.get(lab, {})} for lab in labels}


def _stage_steps(config: Any, num_stages: int) -> list[int]:
    total = int(config.train.steps)
    given = get(config.get("method"), "stages", None)
    if given:
        steps = [int(s) for s in given]
        if len(steps) != num_stages or sum(steps) != total:
            raise ConfigError(
                f"method.stages {steps} must give one step count per stage ({num_stages}) "
                f"summing to train.steps ({total})"
            )
        return steps
    if num_stages == 1:
        return [total]
    base, extra = divmod(total, num_stages)
    return [base + (i < extra) for i in range(num_stages)]


@dataclass
class Experiment:
    """Everything a config builds before training: what :func:`run` and
    :func:`evaluate_workdir` share."""

    config: Any
    task: str
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
    cfg_lib.check(config)
    RunHooks.check(config)  # the regularizer, source_task and wise_ft sections
    seed = int(get(config, "seed", 0))
    task = get(config, "task", "classification")
    if task not in ("classification", "causal_lm"):
        raise ConfigError(f"task must be 'classification' or 'causal_lm', got {task!r}")
    rng_model, rng_method, rng_train = jax.random.split(jax.random.key(seed), 3)
    mesh = sharding.make_mesh([tuple(a) for a in get(config.get("mesh"), "axes", [("data", -1)])])
    data: Data = load_data(config.data, seed=seed, model_path=get(config.model, "path"))
    model: Model = load_model(config.model, data.num_labels, rng_model)
    stages = attach_methods(model, config.get("method"), rng_method)
    forward = forward_fn(model, bool(get(config.model, "train_batch_stats", True)))
    return Experiment(
        config, task, seed, data, model, stages, _stage_steps(config, len(stages)), mesh,
        _mesh_rules(config), forward, loss_function(task, forward, data.num_labels), rng_train,
    )  # fmt: skip


def stage_trainer(exp: Experiment, rules: Any) -> tuple[Trainer, dict, dict, dict]:
    """``(trainer, trainable, frozen_on_mesh, frozen_host)`` for one stage's partition."""
    config = exp.config
    labels = partition.label(exp.model.params, rules)
    trainable, frozen_full = partition.split(exp.model.params, labels)
    tl = partition.trainable_labels(labels)
    total = sum(exp.steps_per_stage)
    decay = get(config.get("optim"), "layerwise_decay", None)
    multipliers = None
    if decay:
        layers = getattr(exp.model.config, "num_hidden_layers", None)
        if layers is None:
            raise ConfigError("optim.layerwise_decay needs a model with num_hidden_layers")
        multipliers = optim.layerwise_multipliers(trainable, int(layers), float(decay))
    groups = _group_specs(config, set(paths.flatten(tl).values()))
    tx = optim.build(tl, groups, total, multipliers=multipliers)
    trainer = Trainer(
        exp.loss_fn, tx, exp.mesh, exp.shard_rules,
        grad_accum=int(get(config.train, "grad_accum", 1)),
        remat=get(config.train, "remat", "none"),
    )  # fmt: skip
    frozen_dtype = get(config.model, "frozen_dtype", None)
    frozen = place_frozen(
        frozen_full,
        exp.mesh,
        exp.shard_rules,
        dtype=jnp.dtype(frozen_dtype) if frozen_dtype else None,
    )
    return trainer, trainable, frozen, frozen_full


def run(config: Any, workdir: str | Path) -> dict:
    """Train and evaluate as ``config`` says, in ``workdir``; returns the final results."""
    workdir = Path(workdir)
    config_dict = jsonable(cfg_lib.to_dict(config))
    exp = build(config)
    hooks = RunHooks.create(exp, workdir)  # source task, regularizer, WiSE-FT; writes nothing
    data, model, stages, steps_per_stage = exp.data, exp.model, exp.stages, exp.steps_per_stage
    task, seed, mesh, forward, rng_train = exp.task, exp.seed, exp.mesh, exp.forward, exp.rng_train
    fingerprint = {
        "config": config_fingerprint(config_dict),
        "base": params_fingerprint(model.base_params),
    }
    every = int(get(config.get("checkpoint"), "every", 0) or 0) or int(config.train.steps)
    ckpt = Checkpointer(
        workdir,
        every=every,
        keep=int(get(config.get("checkpoint"), "keep", 2)),
        fingerprint=fingerprint,
        config=config_dict,
    )  # refuses a workdir of another experiment before anything is written
    start = ckpt.latest_step() or 0
    if jax.process_index() == 0:
        (workdir / "config.json").write_text(json.dumps(config_dict, indent=2, sort_keys=True))
    writer = MetricsWriter(workdir, resume_step=start if start else None)
    train_cfg = config.train
    batch_size = int(train_cfg.batch_size)
    eval_bs = int(get(train_cfg, "eval_batch_size", batch_size))
    log_every = int(get(train_cfg, "log_every", 10))
    eval_every = int(get(train_cfg, "eval_every", 0) or 0)

    batches = train_batches(
        data.train,
        batch_size,
        seed,
        start_step=start,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
        length_grouping=int(get(train_cfg, "length_grouping", 0) or 0),
    )
    total = sum(steps_per_stage)
    progress = ProgressBar(total, initial=start, enabled=get(train_cfg, "progress", None))
    preempt = PreemptionFlag().install()
    t_start, step, trainable_count = time.perf_counter(), start, 0
    stage_start = 0
    stopped_early = False
    try:
        for stage_index, (rules, n_steps) in enumerate(zip(stages, steps_per_stage, strict=True)):
            stage_end = stage_start + n_steps
            if stage_end <= start:
                if n_steps and stage_end == start:  # resumed at its end: the next one's start
                    model.params, model.model_state = _restore_stage(exp, rules, ckpt, start)
                stage_start = stage_end
                continue
            trainer, trainable, frozen, frozen_full = stage_trainer(exp, rules)
            trainer = hooks.start_stage(trainer, trainable, stage_index, step, stage_start, writer)
            trainable_count = partition.count(trainable)
            if start > stage_start:
                abstract = trainer.abstract_state(
                    trainable, model.model_state, jax.random.key_data(rng_train)
                )
                state, _ = ckpt.restore(abstract, step=start)
            else:
                state = trainer.init_state(
                    jax.tree.map(jnp.copy, trainable),
                    model.model_state,
                    jax.random.key_data(rng_train),
                )
            window: list[Any] = []
            while step < stage_end:
                batch = next(batches)
                state, metrics = trainer.step(state, frozen, batch)
                check_finite(metrics, step + 1)
                step += 1
                window.append(metrics)
                progress.update(step, loss=metrics["loss"], examples=batch_size)
                if step % log_every == 0 or step == total:
                    host = jax.tree.map(lambda x: float(np.mean(np.asarray(x))), window)
                    logged = {
                        k: float(np.mean([m[k] for m in host])) for k in host[0] if k != "finite"
                    }
                    logged["examples_per_s"] = (
                        batch_size * len(window) / max(time.perf_counter() - t_start, 1e-9)
                    )
                    writer.write(step, "train", logged)
                    window, t_start = [], time.perf_counter()
                params = None
                if eval_every and step % eval_every == 0 and step != total:
                    params = partition.merge(state["trainable"], frozen)
                    writer.write(
                        step,
                        "eval",
                        evaluate(
                            task,
                            forward,
                            params,
                            state["model_state"],
                            data.eval,
                            eval_bs,
                            mesh,
                            data.num_labels,
                        ),
                    )
                hooks.after_step(step, total, state, frozen, writer)
                stop = preempt.should_stop()
                ckpt.save(
                    step,
                    state,
                    {"data_position": step, "stage": stage_index},
                    force=stop or step == total,
                )
                if stop:
                    stopped_early = True
                    break
            model.params = partition.merge(_to_host(state["trainable"]), frozen_full)
            model.model_state = state["model_state"]
            stage_start = stage_end
            if stopped_early:
                break
    finally:
        preempt.uninstall()
        progress.close()
        ckpt.wait()
    if stopped_early:
        writer.close()
        ckpt.close()
        return {"stopped_at": step, "preempted": True}
    final = evaluate(
        task, forward, model.params, model.model_state, data.eval, eval_bs, mesh, data.num_labels
    )
    writer.write(step, "eval", final)
    extra = hooks.finish(step, writer)
    writer.close()
    ckpt.close()
    results = {
        "eval": final,
        "steps": step,
        "trainable_params": trainable_count,
        "total_params": partition.count(model.params),
        "trainable_pct": 100.0 * trainable_count / max(partition.count(model.params), 1),
        "method": get(config.get("method"), "name", "full"),
        "seed": seed,
        **extra,
    }
    if jax.process_index() == 0:
        write_results(workdir, results)
        plot_learning_curves(workdir / "metrics.jsonl", workdir / "learning_curves.png")
        _export(config, model, workdir)
    return results


def evaluate_workdir(workdir: str | Path, data_overrides: Mapping[str, Any] | None = None) -> dict:
    """Evaluate the newest checkpoint of a run on its eval set, or on another split/source of
    the same label set (``data_overrides``, e.g. ``{"eval_split": "test"}``)."""
    import ml_collections

    workdir = Path(workdir)
    if not (workdir / "config.json").exists():
        raise FileNotFoundError(f"{workdir} has no config.json; is it a run's workdir?")
    original = json.loads((workdir / "config.json").read_text())
    config = ml_collections.ConfigDict(original)
    for key, value in (data_overrides or {}).items():
        config.data[key] = value
    exp = build(config)
    fingerprint = {
        "config": config_fingerprint(original),
        "base": params_fingerprint(exp.model.base_params),
    }
    ckpt = Checkpointer(workdir, every=1, keep=2, fingerprint=fingerprint, config=original)
    step = ckpt.latest_step()
    if step is None:
        raise FileNotFoundError(f"{workdir} holds no checkpoint to evaluate")
    bounds = np.cumsum(exp.steps_per_stage)
    stage = min(int(np.searchsorted(bounds, step, side="left")), len(exp.stages) - 1)
    trainer, trainable, frozen, frozen_full = stage_trainer(exp, exp.stages[stage])
    abstract = trainer.abstract_state(
        trainable, exp.model.model_state, jax.random.key_data(exp.rng_train)
    )
    state, _ = ckpt.restore(abstract, step=step)
    ckpt.close()
    params = partition.merge(state["trainable"], frozen)
    eval_bs = int(get(config.train, "eval_batch_size", config.train.batch_size))
    metrics = evaluate(
        exp.task,
        exp.forward,
        params,
        state["model_state"],
        exp.data.eval,
        eval_bs,
        exp.mesh,
        exp.data.num_labels,
    )
    return {"step": step, "eval": metrics, "data": dict(data_overrides or {})}


def _restore_stage(exp: Experiment, rules: Any, ckpt: Checkpointer, step: int) -> tuple:
    """``(params, model_state)`` of a finished stage from its checkpoint at ``step``."""
    trainer, trainable, _, frozen_full = stage_trainer(exp, rules)
    abstract = trainer.abstract_state(
        trainable, exp.model.model_state, jax.random.key_data(exp.rng_train)
    )
    state, _ = ckpt.restore(abstract, step=step)
    return partition.merge(_to_host(state["trainable"]), frozen_full), state["model_state"]


def _to_host(tree: Any) -> Any:
    """Host copies of (possibly multi-process sharded) arrays, identical on every process."""
    from jax.experimental import multihost_utils

    def one(x):
        if x.is_fully_addressable:
            return np.asarray(jax.device_get(x))
        return np.asarray(multihost_utils.process_allgather(x, tiled=True))

    return jax.tree.map(one, tree)


def _export(config: Any, model: Model, workdir: Path) -> None:
    export = config.get("export")
    if not export or not (get(export, "hf") or get(export, "native")):
        return
    from adapt.convert import hf, native
    from adapt.methods import merge_all

    try:
        params = merge_all(model.params, model.methods)
    except NotImplementedError as e:
        raise ConfigError(f"cannot export a full model: {e}; export the adapter instead") from e
    if get(export, "hf"):
        hf.save_pretrained(
            params, model.config, workdir / "export_hf", architecture=model.architecture
        )
    if get(export, "native"):
        native.save_native(
            params, model.config, workdir / "export_native", architecture=model.architecture
        )


def load_config_file(path: str, arg: str | None = None) -> Mapping:
    """Import ``get_config(arg)`` from a config file (used by tests and the sweep)."""
    import importlib.util
    import sys

    resolved = Path(path).resolve()
    for (
        parent
    ) in resolved.parents:  # configs import siblings as configs.<...>: put their root on the path
        if parent.name == "configs" and str(parent.parent) not in sys.path:
            sys.path.insert(0, str(parent.parent))
            break
    spec = importlib.util.spec_from_file_location("adapt_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg) if arg is not None else module.get_config()
