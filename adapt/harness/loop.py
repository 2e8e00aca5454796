"""``run(config, workdir)``: the whole experiment, from config to results.json.

config -> data -> model (+ methods) -> partition stages -> [sharded jitted steps, eval,
checkpoints, logs]* -> final eval -> results.json, learning-curve PNG, optional export.
What the config builds is :mod:`adapt.harness.experiment`; the exports :mod:`adapt.harness.exports`.

Resuming is implicit: a workdir holding checkpoints of the *same* experiment (same config and
base-weight fingerprints) continues from the newest one, bit for bit; a workdir of another
experiment is refused before anything is written.
"""

from __future__ import annotations

import json
import math
import shutil
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from adapt import partition
from adapt.checkpoint import Checkpointer, PreemptionFlag, WorkdirMismatchError
from adapt.config import ConfigError, RunConfig, suggest
from adapt.data import steps_per_epoch, train_batches
from adapt.fingerprint import config_fingerprint, data_fingerprint, params_fingerprint
from adapt.harness import exports, run_report
from adapt.harness.evaluation import evaluate, predict
from adapt.harness.experiment import (  # noqa: F401 - build and loss_function: public here too
    Experiment,
    build,
    eval_interval,
    loss_function,
    stage_trainer,
    trainable_count,
)
from adapt.harness.hooks import RunHooks
from adapt.harness.selection import BestModel
from adapt.metrics import (
    RESULTS_FILE,
    MetricsWriter,
    ProgressBar,
    plot_learning_curves,
    write_results,
)
from adapt.train import NonFiniteLossError


def _compared(stored: dict, part: str) -> bool:
    """Results written before the data fingerprint existed carry none: only it may be absent."""
    return part != "data" or part in stored


def finished_results(workdir: Path, fingerprint: dict, config_dict: dict) -> dict | None:
    """The results of a finished run of this experiment in ``workdir`` (None if it has not
    finished); a finished run of *another* experiment is refused. Reads only."""
    path = workdir / RESULTS_FILE
    if not path.exists():
        return None
    try:
        prior = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise WorkdirMismatchError(
            f"{path} is damaged ({e}); move it away to re-run the experiment here, or use a "
            "new workdir. Nothing was changed."
        ) from None
    stored = prior.get("fingerprint") if isinstance(prior, dict) else None
    if stored is None:  # results written before fingerprints: compare the saved config
        saved = workdir / "config.json"
        same = saved.exists() and json.loads(saved.read_text()) == config_dict
    else:
        same = all(stored.get(k) == v for k, v in fingerprint.items() if _compared(stored, k))
    if not same:
        parts = (("config", "run config"), ("base", "base parameters"), ("data", "training data"))
        differs = [
            what
            for part, what in parts
            if stored is None or _compared(stored, part) and stored.get(part) != fingerprint[part]
        ]
        saved = workdir / "config.json"
        changed = []
        if saved.exists():
            from adapt.checkpoint import config_diff

            changed = config_diff(json.loads(saved.read_text()), config_dict)
        raise WorkdirMismatchError(
            f"{workdir} holds the finished results of a different run ({path}: the "
            f"{' and '.join(differs)} {'differ' if len(differs) > 1 else 'differs'}"
            + (f"; changed config keys: {', '.join(changed[:10])}" if changed else "")
            + f"). Use a new workdir, or delete the old one (rm -r {workdir}) to start over. "
            "Nothing was changed."
        )
    return prior


def run(config: Any, workdir: str | Path) -> dict:
    """Train and evaluate as ``config`` says, in ``workdir``; returns the final results.

    Everything that can be wrong with the config, data, model or workdir is found before the
    first file is written. A workdir holding the finished run of this same experiment is left
    as it is and its results are returned (with ``"already_finished": True``).
    """
    workdir = Path(workdir)
    exp = build(config)
    config = exp.config
    config_dict = config.to_dict()
    model = exp.model
    fingerprint = {
        "config": config_fingerprint(config_dict),
        "base": params_fingerprint(model.base_params),
        # a resumed run re-derives its batches from the step: the data must be the same
        "data": data_fingerprint({"train": exp.data.train, "val": exp.data.val}),
    }
    total = sum(exp.steps_per_stage)
    ckpt_args = dict(
        every=config.checkpoint.every or max(total, 1), keep=config.checkpoint.keep,
        fingerprint=fingerprint, config=config_dict,
    )  # fmt: skip
    prior = finished_results(workdir, fingerprint, config_dict)
    if prior is not None:
        if jax.process_index() == 0:
            print(
                f"{workdir} already holds the finished run of this config (step "
                f"{prior.get('steps')}): results in {workdir / RESULTS_FILE}. Nothing was run "
                "or changed; use another --workdir to run it again.",
                file=sys.stderr,
            )
        return {**prior, "already_finished": True}
    Checkpointer.check_workdir(workdir, **ckpt_args)  # another experiment's: refused, untouched
    data_summary = run_report.summarize(exp.data)
    if jax.process_index() == 0:
        run_report.announce(data_summary)
    fitted = _fit_head(exp)  # deterministic: a resumed run fits the same start again
    hooks = RunHooks.create(exp, workdir)  # source task, regularizer, WiSE-FT; writes nothing
    ckpt = Checkpointer(workdir, **ckpt_args)
    start = ckpt.resume_step() or 0  # damaged newer checkpoints are moved aside, named
    if jax.process_index() == 0:
        (workdir / "config.json").write_text(json.dumps(config_dict, indent=2, sort_keys=True))
        run_report.write_labels(workdir, exp.data.label_names)
    writer = MetricsWriter(workdir, resume_step=start if start else None, final_step=total)
    best = None
    if config.train.select_best is not None:
        best = BestModel(workdir, config.train.select_best, config.train.early_stopping)
    state, step, stopped = _train(exp, hooks, ckpt, writer, best, start, total)
    if stopped == "preempted":
        writer.close()
        ckpt.close()
        return {"stopped_at": step, "preempted": True}
    data, task, mesh, forward = exp.data, exp.task, exp.mesh, exp.forward
    eval_bs = config.train.eval_batch
    selected: dict[str, Any] = {}
    if best is not None:
        params, model_state, meta = best.load()
        model.params = jax.tree.map(np.asarray, params)
        model.model_state = model_state or model.model_state
        selected = {"val": meta["val"], "selected_step": meta["step"]}
    elif data.val is not None:
        selected = {"val": _validate(exp, model.params, model.model_state)}
    if config.train.refit:
        writer.close()
        ckpt.close()
        return _refit(exp, workdir, selected, fingerprint)
    final = evaluate(task, forward, model.params, model.model_state, data.eval, eval_bs, mesh,
                     data.num_labels)  # fmt: skip
    writer.write(step, "eval", final)
    if task.predicts:
        predicted, probability = predict(forward, model.params, model.model_state, data.eval,
                                         eval_bs, mesh, task)  # fmt: skip
        if jax.process_index() == 0:
            run_report.write_predictions(workdir, data.eval, predicted, probability)
    extra = hooks.finish(step, writer)
    writer.close()
    ckpt.close()
    count, total_params = trainable_count(exp), partition.count(model.params)
    results = {
        "eval": final,
        **selected,
        "steps": step,
        "stopped_early": stopped == "early",
        "trainable_params": count,
        "total_params": total_params,
        "trainable_pct": 100.0 * count / max(total_params, 1),
        "method": config.method.name,
        "seed": exp.seed,
        "data": {
            k: v for k, v in data_summary.items() if k in ("examples", "classes", "truncated")
        },
        **({"head_fit": fitted} if fitted else {}),
        **extra,
        "fingerprint": fingerprint,
    }
    if jax.process_index() == 0:
        exports.write(config, model, workdir)
        plot_learning_curves(workdir / "metrics.jsonl", workdir / "learning_curves.png")
        write_results(workdir, results)  # last: its presence marks the run finished
    return results


def refit_config(exp: Experiment, selected_step: int) -> dict:
    """The config of the refit: the same run on the training and validation examples together,
    for as many epochs as the selected step had seen, without validation."""
    config = exp.config
    n_train = exp.data.train.num_examples
    n_all = n_train + exp.data.val.num_examples
    batch = config.train.batch_size
    epochs = selected_step / steps_per_epoch(n_train, batch)
    steps = math.ceil(epochs * steps_per_epoch(n_all, batch)) if selected_step else 0
    if config.method.head_init != "probe":  # only a fitted head stands without training
        steps = max(steps, 1)
    refit = config.to_dict()
    refit["data"]["val_fraction"] = 0.0
    refit["train"].update(steps=steps, epochs=0.0, select_best=None, early_stopping=0,
                          eval_every=0, eval_every_epochs=0.0, refit=False)  # fmt: skip
    return refit


def _refit(exp: Experiment, workdir: Path, selected: dict, fingerprint: dict) -> dict:
    """Train again on train + validation for the selected epochs (``<workdir>/refit``) and
    report that model, with the selection that chose it."""
    step = selected["selected_step"]
    refit = run(refit_config(exp, step), workdir / "refit")
    predictions = workdir / "refit" / run_report.PREDICTIONS_FILE
    if jax.process_index() == 0 and predictions.exists():  # the reported model's, where a
        shutil.copyfile(predictions, workdir / run_report.PREDICTIONS_FILE)  # reader looks
    results = {
        **{k: v for k, v in refit.items() if k not in ("fingerprint", "already_finished")},
        **selected,
        "refit": {"steps": refit["steps"], "examples": exp.data.train.num_examples
                  + exp.data.val.num_examples, "selected_epochs": step / steps_per_epoch(
                      exp.data.train.num_examples, exp.config.train.batch_size)},
        "fingerprint": fingerprint,
    }  # fmt: skip
    if jax.process_index() == 0:
        write_results(workdir, results)
    return results


def _fit_head(exp: Experiment) -> dict | None:
    """The head fitted on the frozen model's features, where the method asks for it."""
    from adapt.harness import probing

    method = exp.config.method
    if method.name == "logistic_regression":
        return probing.fit_head(exp, "sklearn")
    if method.name == "linear_probe" or method.head_init == "probe":
        return probing.fit_head(exp, "lbfgs")
    return None


def _validate(exp: Experiment, params: Any, model_state: Any) -> dict:
    """Metrics of the periodic evaluation: the validation split if there is one, else eval."""
    data = exp.data.val if exp.data.val is not None else exp.data.eval
    return evaluate(
        exp.task, exp.forward, params, model_state, data, exp.config.train.eval_batch, exp.mesh,
        exp.data.num_labels,
    )  # fmt: skip


def _train(
    exp: Experiment,
    hooks: RunHooks,
    ckpt: Checkpointer,
    writer: MetricsWriter,
    best: BestModel | None,
    start: int,
    total: int,
) -> tuple[Any, int, str | None]:
    """The training steps from ``start`` to ``total`` (or an early stop); ``(state, step,
    stopped)`` with ``stopped`` None, "early" or "preempted"."""
    config, model, data = exp.config, exp.model, exp.data
    stages, steps_per_stage = exp.stages, exp.steps_per_stage
    train_cfg = config.train
    split = "val" if data.val is not None else "eval"
    batch_size, log_every = train_cfg.batch_size, train_cfg.log_every
    eval_every = eval_interval(config, data)
    batches = train_batches(
        data.train,
        batch_size,
        exp.seed,
        start_step=start,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
        length_grouping=train_cfg.length_grouping,
    ) if total else iter(())  # fmt: skip
    progress = ProgressBar(total, initial=start, enabled=train_cfg.progress)
    preempt = PreemptionFlag().install()
    t_start, step, stage_start, stopped, state = time.perf_counter(), start, 0, None, None
    try:
        for stage_index, (rules, n_steps) in enumerate(zip(stages, steps_per_stage, strict=True)):
            stage_end = stage_start + n_steps
            if stage_end <= start and total:
                if n_steps and stage_end == start:  # resumed at its end: the next one's start
                    model.params, model.model_state, meta = _restore_stage(exp, rules, ckpt, start)
                    if best is not None:
                        best.restore_record(meta.get("best"))
                        stopped = "early" if best.should_stop() else None
                stage_start = stage_end
                if stopped:
                    break
                continue
            trainer, trainable, frozen, frozen_full = stage_trainer(exp, rules)
            trainer = hooks.start_stage(trainer, trainable, stage_index, step, stage_start, writer)
            if start > stage_start:
                abstract = trainer.abstract_state(
                    trainable, model.model_state, jax.random.key_data(exp.rng_train)
                )
                state, meta = ckpt.restore(abstract, step=start)
                if best is not None:
                    best.restore_record(meta.get("best"))
            else:
                state = trainer.init_state(
                    jax.tree.map(jnp.copy, trainable),
                    model.model_state,
                    jax.random.key_data(exp.rng_train),
                )
            if best is not None and step == 0 and stage_index == 0:  # the start is a candidate
                params = partition.merge(state["trainable"], frozen)
                metrics = _validate(exp, params, state["model_state"])
                writer.write(0, split, metrics)
                best.update(0, metrics, params, state["model_state"])
            if not total:  # a head fitted on cached features: its checkpoint, no steps
                ckpt.save(0, state, {"data_position": 0, "stage": 0}, force=True)
            if best is not None and best.should_stop():  # resumed after its early stop
                stopped = "early"
            window: list[Any] = []
            while step < stage_end and not stopped:
                batch = next(batches)
                state, metrics = trainer.step(state, frozen, batch)
                if not bool(np.asarray(metrics["finite"])):
                    _stop_non_finite(metrics, step + 1, ckpt)
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
                due = eval_every and step % eval_every == 0
                if due and (step != total or best is not None):
                    params = partition.merge(state["trainable"], frozen)
                    metrics = _validate(exp, params, state["model_state"])
                    writer.write(step, split, metrics)
                    if best is not None:
                        best.update(step, metrics, params, state["model_state"])
                        if best.should_stop():
                            stopped = "early"
                hooks.after_step(step, total, state, frozen, writer)
                preempted = preempt.should_stop()
                meta = {"data_position": step, "stage": stage_index}
                if best is not None:
                    meta["best"] = best.record()
                last = step == total or stopped == "early"
                ckpt.save(step, state, meta, force=preempted or last)
                if preempted:
                    stopped = "preempted"
                if stopped:
                    break
            model.params = partition.merge(_to_host(state["trainable"]), frozen_full)
            model.model_state = state["model_state"]
            stage_start = stage_end
            if stopped:
                break
    finally:
        preempt.uninstall()
        progress.close()
        ckpt.wait()
    return state, step, stopped


def _stop_non_finite(metrics: dict, step: int, ckpt: Checkpointer) -> None:
    ckpt.wait()
    last = ckpt.latest_step()
    kept = f"the newest checkpoint is step {last}" if last else "no checkpoint was written yet"
    raise NonFiniteLossError(
        f"the loss, gradients or updated weights became non-finite at step {step} "
        f"(loss={float(np.asarray(metrics['loss']))}); that update was discarded and {kept}. "
        "Lower the learning rate, add gradient clipping (optim clip_norm), or check the data."
    )


def evaluate_workdir(workdir: str | Path, data_overrides: Mapping[str, Any] | None = None) -> dict:
    """Evaluate the newest checkpoint of a run on its eval set, or on another split/source of
    the same label set (``data_overrides``, e.g. ``{"eval_split": "test"}``)."""
    workdir = Path(workdir)
    saved = workdir / "config.json"
    if not saved.exists():
        raise ConfigError(f"{workdir} has no config.json; is it a run's workdir?")
    try:
        original = json.loads(saved.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{saved} is damaged ({e})") from None
    stored = RunConfig.parse(original)
    data = stored.data.to_dict()
    for key, value in (data_overrides or {}).items():
        if key not in data:
            raise ConfigError(f"unknown data key {key!r}{suggest(key, list(data))}")
        data[key] = value
    exp = build({**stored.to_dict(), "data": data})
    fingerprint = {
        "config": config_fingerprint(stored.to_dict()),
        "base": params_fingerprint(exp.model.base_params),
    }
    ckpt = Checkpointer(
        workdir, every=1, keep=2, fingerprint=fingerprint, config=stored.to_dict(), create=False
    )
    step = ckpt.latest_step()
    if step is None:
        raise ConfigError(f"{workdir} holds no checkpoint to evaluate")
    bounds = np.cumsum(exp.steps_per_stage)
    stage = min(int(np.searchsorted(bounds, step, side="left")), len(exp.stages) - 1)
    trainer, trainable, frozen, frozen_full = stage_trainer(exp, exp.stages[stage])
    abstract = trainer.abstract_state(
        trainable, exp.model.model_state, jax.random.key_data(exp.rng_train)
    )
    state, _ = ckpt.restore(abstract, step=step)
    ckpt.close()
    params = partition.merge(state["trainable"], frozen)
    metrics = evaluate(
        exp.task, exp.forward, params, state["model_state"], exp.data.eval,
        exp.config.train.eval_batch, exp.mesh, exp.data.num_labels,
    )  # fmt: skip
    return {"step": step, "eval": metrics, "data": dict(data_overrides or {})}


def _restore_stage(exp: Experiment, rules: Any, ckpt: Checkpointer, step: int) -> tuple:
    """``(params, model_state, meta)`` of a finished stage from its checkpoint at ``step``."""
    trainer, trainable, _, frozen_full = stage_trainer(exp, rules)
    abstract = trainer.abstract_state(
        trainable, exp.model.model_state, jax.random.key_data(exp.rng_train)
    )
    state, meta = ckpt.restore(abstract, step=step)
    params = partition.merge(_to_host(state["trainable"]), frozen_full)
    return params, state["model_state"], meta


def _to_host(tree: Any) -> Any:
    """Host copies of (possibly multi-process sharded) arrays, identical on every process."""
    from jax.experimental import multihost_utils

    def one(x):
        if x.is_fully_addressable:
            return np.asarray(jax.device_get(x))
        return np.asarray(multihost_utils.process_allgather(x, tiled=True))

    return jax.tree.map(one, tree)
