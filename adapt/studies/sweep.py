"""Studies: grids of runs, one workdir per point, resumable, with model selection on validation
data and summaries as CSV, markdown and plots (:mod:`adapt.studies.report`).

A sweep config's ``get_config()`` returns a ConfigDict with
- ``name``: the sweep's name (results go to ``results/<name>/`` unless ``--out`` says otherwise);
- either one grid: ``base`` (the config file every run uses, e.g.
  ``configs/text/minilm.py``), ``grid`` (``{arg: [values]}``, the ``get_config`` arguments to
  cross: ``method``, ``seed`` ...) and ``fixed`` (arguments shared by every run, optional);
- or ``parts``: a list of such ``{name, base, grid, fixed}`` dicts, for one study over several
  datasets or models; each row then carries a ``part`` column;
- ``setup`` (optional): ``{name: {base, args}}`` runs made before the grid (e.g. pretraining a
  source model); an argument value containing ``{setup.NAME}`` is replaced by that run's workdir,
  so a grid can start from its export (``pretrained={setup.vit_pretrain}/export_hf``);
- ``select`` (optional): model selection on validation data, the way papers choose a learning
  rate: ``{"by": "val.accuracy", "grid": {"lr_scale": [0.3, 1.0, 3.0]}, "seeds": [0],
  "skip": {"method": ["linear_probe"]}}``. For every group of the grid (every point but its
  ``seed``), the runs of the ``seeds`` listed are made at each candidate value; the value whose
  mean ``by`` metric (a path into results.json, on the validation split carved from the training
  data) is best is chosen, and the other seeds run at it only. Ties go to the first candidate.
  The summary reports the chosen runs, with the chosen value as a column, and
  ``selection.csv`` lists every candidate's validation and eval metrics (the eval numbers of the
  candidates not chosen are shown, never used). Groups matching ``skip`` run once per seed,
  without the grid (methods with nothing to tune, e.g. a probe fitted to convergence);
- ``group_by``: the grid keys that identify a row of the summary (the others, e.g. ``seed``, are
  averaged: mean +- std); ``part`` is prepended when there are parts;
- ``metrics``: what to report from each run's ``results.json``: a plain name is an eval metric
  (``accuracy``, ``macro_f1`` ...), a dotted one is a path into ``results.json``
  (``source_eval.accuracy``, ``val.accuracy``);
- ``plot``: ``{"x": arg, "series": arg, "y": metric}`` for ``plot.png`` (optional; one panel per
  part); the x values are evenly spaced ticks in sorted order unless ``x_order`` lists them
  (values it does not list follow, sorted), and ``x_labels`` (``{str(value): label}``) renames
  ticks, e.g. ``per_class`` 0 as "all" after the small budgets;
- ``curves`` (optional): ``[{"key", "x", "y"}]``: a list of per-run curves in ``results.json``
  (``results[key]`` = ``[{x: ..., y: ...}, ...]``, e.g. the WiSE-FT curve over ``alpha``),
  averaged over seeds into ``<key>.csv`` and ``<key>.png``;
- ``baseline`` (optional): ``{grid_key: value}``, e.g. ``{"method": "logistic_regression"}``:
  each summary row gains ``<metric>_vs_baseline``, its mean minus the mean of the baseline row
  that agrees on every other group key (the same part and budget), and summary.md a column for
  the first metric and a closing line naming the rows that do not beat it, so a claim like
  "every transfer method beats the baseline at every budget" is checked by the sweep;
- ``keep_checkpoints`` (default False): a finished run's ``checkpoints/`` folder is deleted (its
  ``results.json``, metrics and exports stay), since a sweep of MiniLM runs would otherwise keep
  ~300 MB per run;
- ``launcher`` (optional): where runs execute (:mod:`adapt.studies.launchers`): local
  subprocesses (default) or ``{"name": "submitit", ...}``, one cluster job per point (SLURM, or
  submitit's local executor), with the same resume behaviour;
- ``parallel`` (default 1): how many runs go at once (with submitit: jobs in flight). On a 2-core CPU two concurrent runs finish
  a grid of short runs sooner (start-up, tokenisation and compilation are single-threaded), but
  each run's ``wall_seconds`` then includes the contention.

A run whose workdir already holds ``results.json`` is skipped, so an interrupted sweep continues
where it stopped (an unfinished run resumes from its own checkpoint). Runs share a persistent XLA
compilation cache under the workdir root, so seeds after the first skip most compilation.
"""

from __future__ import annotations

import ast
import itertools
import json
import os
import shutil
import sys
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from adapt.config import check as check_schema
from adapt.config import suggest
from adapt.errors import PREEMPTED_EXIT_CODE, USAGE_EXIT_CODE, AdaptError
from adapt.studies import launchers, report
from adapt.studies.report import metric_value


class SweepError(AdaptError, ValueError):
    """A sweep config that cannot run, or a run of it that stopped on bad input."""


class RunPreempted(AdaptError):
    """A run of the sweep was preempted (SIGTERM) after checkpointing; re-run to continue."""


def points(grid: Mapping[str, Sequence[Any]], fixed: Mapping[str, Any] | None = None) -> list[dict]:
    keys = list(grid)
    return [
        {**(fixed or {}), **dict(zip(keys, combo, strict=True))}
        for combo in itertools.product(*(grid[k] for k in keys))
    ]


def arg_string(point: Mapping[str, Any]) -> str:
    return ",".join(f"{k}={v}" for k, v in point.items())


def run_name(point: Mapping[str, Any]) -> str:
    return "_".join(f"{k}-{v}" for k, v in point.items()).replace("/", "-")


# What the sweep machinery reads; anything else is an error before a run starts.
_SWEEP_KEYS = ("name", "base", "grid", "fixed", "parts", "setup", "group_by", "metrics", "plot",
               "curves", "baseline", "keep_checkpoints", "parallel", "select",
               "launcher")  # fmt: skip
_SECTION_KEYS = {
    "part": ("name", "base", "grid", "fixed"),
    "setup run": ("base", "args"),
    "plot": ("x", "series", "y", "x_order", "x_labels"),
    "curve": ("key", "x", "y"),
    "select": ("by", "grid", "seeds", "skip"),
}


def check_keys(sweep: Any) -> None:
    """Raise on a key the sweep machinery would silently ignore (a typo such as ``paralel``)."""
    check_schema(sweep, dict.fromkeys(_SWEEP_KEYS), "sweep")
    sections = [("plot", sweep.get("plot") or {}), ("select", sweep.get("select") or {})]
    sections += [("part", p) for p in sweep.get("parts") or []]
    sections += [("setup run", s) for s in (sweep.get("setup") or {}).values()]
    sections += [("curve", c) for c in sweep.get("curves") or []]
    for kind, section in sections:
        check_schema(section, dict.fromkeys(_SECTION_KEYS[kind]), kind)
    select = sweep.get("select")
    if select:
        if not select.get("by") or not select.get("grid") or len(select["grid"]) != 1:
            raise SweepError("select needs 'by' (a results.json path) and a one-key 'grid'")
        if not select.get("seeds"):
            raise SweepError("select.seeds lists the seeds whose runs choose the value")


def load_sweep(spec: str | None, overrides: Sequence[tuple[str, str]] = ()) -> Any:
    """The sweep config of ``--config=path[:arg]`` with ``--config.<key>=<value>`` overrides of
    its existing keys (values read as Python literals, else strings)."""
    from adapt.config import load_config_file

    if not spec:
        raise SweepError("--config is required: --config=<sweep config file>[:<argument>]")
    path, _, arg = spec.partition(":")
    sweep = load_config_file(path, arg or None)
    for key, text in overrides:
        target, parts = sweep, key.split(".")
        for part in parts:
            if part not in target:
                raise SweepError(f"unknown sweep key {key}{suggest(part, list(target))}")
            if part != parts[-1]:
                target = target[part]
        try:
            value = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            value = text
        try:
            target[parts[-1]] = value
        except (TypeError, ValueError) as e:
            raise SweepError(f"--config.{key}={text!r}: {e}") from None
    check_keys(sweep)
    return sweep


def parts(sweep: Any) -> list[dict]:
    """The sweep's grids as ``[{name, base, grid, fixed}]`` (one, named after the sweep, when the
    config gives ``base``/``grid`` directly)."""
    if "parts" in sweep:
        if "base" in sweep or "grid" in sweep:
            raise SweepError("a sweep config gives either parts or base/grid, not both")
        out = [dict(p) for p in sweep.parts]
    else:
        out = [dict(name=sweep.name, base=sweep.base, grid=sweep.grid, fixed=sweep.get("fixed"))]
    names = [p["name"] for p in out]
    if len(set(names)) != len(names):
        raise SweepError(f"sweep parts need distinct names; got {names}")
    return out


def _environment(workdir_root: Path) -> dict:
    env = dict(os.environ)
    env.setdefault("JAX_COMPILATION_CACHE_DIR", str((workdir_root / "jax_cache").absolute()))
    env.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "1")
    return env


def run_point(
    base: str,
    point: Mapping[str, Any],
    workdir: Path,
    extra_flags: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
    keep_checkpoints: bool = True,
    launcher: launchers.Launcher | None = None,
) -> dict:
    """Run one point in a fresh process (isolates memory and jit caches; by ``launcher``, local
    by default); return its results."""
    results = workdir / "results.json"
    if results.exists():
        return json.loads(results.read_text())
    start = time.perf_counter()
    cmd = [
        sys.executable,
        "-m",
        "adapt.cli.finetune",
        f"--config={base}:{arg_string(point)}",
        f"--workdir={Path(workdir).absolute()}",
        *extra_flags,
    ]
    launcher = launcher or launchers.LocalLauncher()
    returncode, stderr = launcher.run(cmd, dict(env or os.environ), workdir.name)
    if returncode == PREEMPTED_EXIT_CODE:
        raise RunPreempted(f"run {workdir} was preempted; run the sweep again to continue it")
    if returncode == USAGE_EXIT_CODE:
        lines = [line for line in stderr.splitlines() if line.startswith("error: ")]
        raise SweepError(f"run {workdir} stopped: {lines[-1] if lines else stderr[-500:]}")
    if returncode != 0:
        raise RuntimeError(
            f"run {workdir.name} failed (exit status {returncode}; run the sweep again to "
            f"resume it from its checkpoints):\n{stderr[-4000:]}"
        )
    data = json.loads(results.read_text())
    data.setdefault("wall_seconds", time.perf_counter() - start)
    results.write_text(json.dumps(data, indent=2))
    if not keep_checkpoints:
        shutil.rmtree(workdir / "checkpoints", ignore_errors=True)
    return data


def _substitute(point: Mapping[str, Any], setup_dirs: Mapping[str, Path]) -> dict:
    out = {}
    for k, v in point.items():
        if isinstance(v, str) and "{setup." in v:
            for name, path in setup_dirs.items():
                v = v.replace(f"{{setup.{name}}}", str(path.absolute()))
            if "{setup." in v:
                raise SweepError(f"argument {k}={v!r} names a setup run the sweep does not define")
        out[k] = v
    return out


# ------------------------------------------------------------------------------ selection
def _skipped(select: Mapping[str, Any], point: Mapping[str, Any]) -> bool:
    return any(point.get(k) in list(v) for k, v in dict(select.get("skip") or {}).items())


def _lower_is_better(metric: str) -> bool:
    return metric.rsplit(".", 1)[-1] in ("loss", "perplexity")


def choose(
    select: Mapping[str, Any], candidates: Mapping[Any, Sequence[Mapping[str, Any]]]
) -> tuple[Any, list[dict]]:
    """The candidate value with the best mean ``select["by"]`` over its runs, and a table of
    every candidate (``{value, by, runs}``); ties go to the first candidate."""
    by = select["by"]
    table, best, best_score = [], None, None
    for value, results in candidates.items():
        scores = [metric_value(r, by) for r in results]
        if any(s is None for s in scores):
            raise SweepError(
                f"select.by {by!r} is missing from a run's results.json; the runs need a "
                "validation split (data.val_fraction) for selection"
            )
        score = float(sum(scores) / len(scores))
        table.append({"value": value, by: score, "runs": len(scores)})
        better = best_score is None or (
            score < best_score if _lower_is_better(by) else score > best_score
        )
        if better:
            best, best_score = value, score
    return best, table


def run_sweep(
    sweep: Any, workdir_root: Path, out_dir: Path, extra_flags: Sequence[str] = ()
) -> list[dict]:
    check_keys(sweep)
    grids = parts(sweep)
    with_parts = "parts" in sweep
    env = _environment(workdir_root)
    keep = bool(sweep.get("keep_checkpoints", False))
    launcher = launchers.make(sweep.get("launcher"), workdir_root)
    setup_dirs: dict[str, Path] = {}
    for name, spec in (sweep.get("setup") or {}).items():
        setup_dirs[name] = workdir_root / "setup" / name
        args = dict(spec.get("args") or {})
        run_point(spec["base"], args, setup_dirs[name], extra_flags, env, keep, launcher)
        print(f"setup {name}: done", flush=True)
    select = dict(sweep.get("select") or {})
    key, values = next(iter(dict(select["grid"]).items())) if select else (None, [None])
    seeds = list(select.get("seeds") or [])

    def job(part, point, extra=None):
        point = {**point, **(extra or {})}
        row_point = {"part": part["name"], **point} if with_parts else point
        root = workdir_root / part["name"] if with_parts else workdir_root
        return row_point, part["base"], _substitute(point, setup_dirs), root / run_name(point)

    def execute(jobs):
        def one(j):
            row_point, base, args, workdir = j
            res = run_point(base, args, workdir, extra_flags, env, keep, launcher)
            shown = ", ".join(f"{m}={metric_value(res, m)}" for m in sweep.metrics)
            print(f"{workdir.relative_to(workdir_root)}: {shown}", flush=True)
            return row_point, res

        with ThreadPoolExecutor(max_workers=max(int(sweep.get("parallel", 1)), 1)) as pool:
            return list(pool.map(one, jobs))  # in job order, whatever order they finish in

    def group(part, point):
        return (part["name"], *sorted((k, str(v)) for k, v in point.items() if k != "seed"))

    # (grid index, job) for runs that need no choice; candidates for the selection seeds;
    # the other seeds of selected groups wait for the choice
    plain, candidates, later = [], [], []
    index = 0
    for part in grids:
        for point in points(part["grid"], part.get("fixed")):
            if not select or _skipped(select, point):
                plain.append((index, job(part, point)))
            elif point.get("seed") in seeds:
                candidates += [(index, group(part, point), v, job(part, point, {key: v}))
                               for v in values]  # fmt: skip
            else:
                later.append((index, part, point))
            index += 1
    first = execute([j for _, j in plain] + [c[3] for c in candidates])
    results = list(zip([i for i, _ in plain], first[: len(plain)], strict=True))
    selection: list[dict] = []
    if select:
        runs: dict[tuple, dict] = {}
        for (_, g, value, _), (_, res) in zip(candidates, first[len(plain) :], strict=True):
            runs.setdefault(g, {}).setdefault(value, []).append(res)
        chosen = {}
        for g, cands in runs.items():
            chosen[g], table = choose(select, cands)
            selection += [{"group": "; ".join(f"{k}={v}" for k, v in g[1:]), "part": g[0],
                           key: row["value"], select["by"]: row[select["by"]],
                           "runs": row["runs"], "chosen": row["value"] == chosen[g]}
                          for row in table]  # fmt: skip
        results += [(i, r) for (i, g, v, _), r in zip(candidates, first[len(plain) :],
                                                     strict=True) if v == chosen[g]]  # fmt: skip
        missing = [
            group(part, point) for _, part, point in later if group(part, point) not in chosen
        ]
        if missing:
            raise SweepError(
                f"no selection runs for {missing[0]}: select.seeds must be in the grid"
            )
        second = [job(part, point, {key: chosen[group(part, point)]}) for _, part, point in later]
        results += list(zip([i for i, _, _ in later], execute(second), strict=True))
    results = [r for _, r in sorted(results, key=lambda item: item[0])]  # grid order
    keys = report.group_keys(sweep, with_parts)
    table = report.rows(sweep, results)
    summary = report.summarise(sweep, table, keys, extra=[key] if select else [])
    baseline = dict(sweep.get("baseline") or {})
    losses = (
        report.compare_to_baseline(summary, keys, baseline, list(sweep.metrics))
        if baseline
        else None
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    report.write_csv(out_dir / "runs.csv", table)
    report.write_csv(out_dir / "summary.csv", summary)
    if selection:
        report.write_csv(out_dir / "selection.csv", selection)
    (out_dir / "summary.md").write_text(report.markdown(sweep, summary, keys, losses))
    report.plot(sweep, summary, out_dir / "plot.png", [p["name"] for p in grids])
    for curve in sweep.get("curves") or []:
        ctable = report.curve_table(curve, results, keys)
        if ctable:
            report.write_csv(out_dir / f"{curve['key']}.csv", ctable)
            report.plot_curve(curve, ctable, keys, out_dir / f"{curve['key']}.png")
    return summary


__all__ = [
    "RunPreempted",
    "SweepError",
    "arg_string",
    "check_keys",
    "choose",
    "load_sweep",
    "parts",
    "points",
    "run_name",
    "run_point",
    "run_sweep",
]
