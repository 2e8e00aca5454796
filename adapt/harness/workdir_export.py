"""Exports of a finished run, from its workdir: the model its ``results.json`` reports, as a
Hugging Face folder, adapt's native folder or a PEFT adapter, without training again.

The reported model is the one the run evaluated last: the refit's (``<workdir>/refit``) when the
run refitted on train + validation, the best validation weights (``best/``) when it selected,
else its final checkpoint. The workdir's config is rebuilt as the run built it (data, model,
methods; the base weights must still be the ones it trained on: their fingerprint is checked),
the exports are checked as a run checks them before training, and nothing is written until
they pass; an export folder that already exists is refused, never overwritten.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import jax
import numpy as np

from adapt import partition
from adapt.checkpoint import Checkpointer
from adapt.config import ConfigError, ExportSection, RunConfig
from adapt.fingerprint import config_fingerprint, params_fingerprint
from adapt.harness import exports
from adapt.harness.experiment import Experiment, build, stage_trainer
from adapt.harness.selection import BestModel

KINDS = ("hf", "native", "peft")


def _finished(workdir: Path) -> dict:
    results = workdir / "results.json"
    if not (workdir / "config.json").exists():
        raise ConfigError(f"{workdir} has no config.json; is it a run's workdir?")
    if not results.exists():
        raise ConfigError(
            f"{workdir} has no results.json: the run has not finished, so there is no reported "
            "model to export yet (resume it with the same command first)"
        )
    return json.loads(results.read_text())


def reported_model(workdir: str | Path) -> tuple[Experiment, str]:
    """The run rebuilt from ``workdir`` with ``exp.model.params`` / ``model_state`` set to the
    model its results report, and where those weights came from."""
    workdir = Path(workdir)
    results = _finished(workdir)
    if "refit" in results:  # the reported model is the refit run's
        return reported_model(workdir / "refit")
    stored = RunConfig.parse(json.loads((workdir / "config.json").read_text()))
    exp = build(stored)
    model = exp.model
    if stored.train.select_best is not None:
        best = BestModel(workdir, stored.train.select_best)
        best.step = results.get("selected_step")
        params, model_state, _ = best.load()
        model.params = jax.tree.map(np.asarray, params)
        model.model_state = model_state or model.model_state
        return exp, f"{workdir / 'best'} (step {best.step})"
    fingerprint = {
        "config": config_fingerprint(stored.to_dict()),
        "base": params_fingerprint(model.base_params),
    }
    ckpt = Checkpointer(
        workdir, every=1, keep=2, fingerprint=fingerprint, config=stored.to_dict(), create=False
    )
    step = ckpt.latest_step()
    if step is None:
        raise ConfigError(f"{workdir} holds no checkpoint to export")
    trainer, trainable, frozen, _ = stage_trainer(exp, exp.stages[-1])
    abstract = trainer.abstract_state(
        trainable, model.model_state, jax.random.key_data(exp.rng_train)
    )
    state, _ = ckpt.restore(abstract, step=step)
    ckpt.close()
    model.params = jax.tree.map(np.asarray, partition.merge(state["trainable"], frozen))
    model.model_state = jax.tree.map(np.asarray, state["model_state"])
    return exp, f"{workdir / 'checkpoints'} (step {step})"


def export_workdir(
    workdir: str | Path, kinds: list[str] | tuple[str, ...], out: str | Path | None = None
) -> dict[str, Path]:
    """Write the ``kinds`` exports (``hf``, ``native``, ``peft``) of the model ``workdir``'s run
    reports into ``out`` (default: the workdir) as ``export_<kind>``; returns their paths."""
    bad = sorted(set(kinds) - set(KINDS))
    if bad or not kinds:
        raise ConfigError(f"exports to write: choose from {', '.join(KINDS)}; got {list(kinds)}")
    workdir = Path(workdir)
    out = Path(out) if out is not None else workdir
    targets = {kind: out / f"export_{kind}" for kind in kinds}
    existing = [str(p) for p in targets.values() if p.exists()]
    if existing:
        raise ConfigError(
            f"{', '.join(existing)} already exist(s); move them away or choose another --out "
            "(exports are never overwritten)"
        )
    exp, source = reported_model(workdir)
    config = dataclasses.replace(exp.config, export=ExportSection(**{k: True for k in kinds}))
    exports.check(config, exp.model)  # what cannot be exported is refused before writing
    out.mkdir(parents=True, exist_ok=True)
    exports.write(config, exp.model, out)
    return {"source": source, **{kind: path for kind, path in targets.items()}}


__all__ = ["KINDS", "export_workdir", "reported_model"]
