"""Grids of runs: one workdir per point, resumable, summarised as CSV, markdown and plots.

A sweep config's ``get_config()`` returns a ConfigDict with
- ``name``: the sweep's name (results go to ``results/<name>/`` unless ``--out`` says otherwise);
- either one grid: ``base`` (the config file every run uses, e.g.
  ``configs/glue/banking77_minilm.py``), ``grid`` (``{arg: [values]}``, the ``get_config``
  arguments to cross: ``method``, ``seed`` ...) and ``fixed`` (arguments shared by every run,
  optional);
- or ``parts``: a list of such ``{name, base, grid, fixed}`` dicts, for one study over several
  datasets or models; each row then carries a ``part`` column;
- ``setup`` (optional): ``{name: {base, args}}`` runs made before the grid (e.g. pretraining a
  source model); an argument value containing ``{setup.NAME}`` is replaced by that run's workdir,
  so a grid can start from its export (``pretrained={setup.vit_pretrain}/export_hf``);
- ``group_by``: the grid keys that identify a row of the summary (the others, e.g. ``seed``, are
  averaged: mean +- std); ``part`` is prepended when there are parts;
- ``metrics``: what to report from each run's ``results.json``: a plain name is an eval metric
  (``accuracy``, ``macro_f1`` ...), a dotted one is a path into ``results.json``
  (``source_eval.accuracy``);
- ``plot``: ``{"x": arg, "series": arg, "y": metric}`` for ``plot.png`` (optional; one panel per
  part); the x values are evenly spaced ticks in sorted order unless ``x_order`` lists them
  (values it does not list follow, sorted), and ``x_labels`` (``{str(value): label}``) renames
  ticks, e.g. ``per_class`` 0 as "all" after the small budgets;
- ``curves`` (optional): ``[{"key", "x", "y"}]``: a list of per-run curves in ``results.json``
  (``results[key]`` = ``[{x: ..., y: ...}, ...]``, e.g. the WiSE-FT curve over ``alpha``),
  averaged over seeds into ``<key>.csv`` and ``<key>.png``;
- ``baseline`` (optional): ``{grid_key: value}``, e.g. ``{"method": "scratch"}``: each summary
  row gains ``<metric>_vs_baseline``, its mean minus the mean of the baseline row that agrees on
  every other group key (the same part and budget), and summary.md a column for the first metric
  and a closing line naming the rows that do not beat it, so a claim like "every transfer method
  beats training from scratch at every budget" is checked by the sweep, not by eye;
- ``keep_checkpoints`` (default False): a finished run's ``checkpoints/`` folder is deleted (its
  ``results.json``, metrics and exports stay), since a sweep of MiniLM runs would otherwise keep
  ~300 MB per run;
- ``parallel`` (default 1): how many runs go at once. On a 2-core CPU two concurrent runs finish
  a grid of short runs sooner (start-up, tokenisation and compilation are single-threaded), but
  each run's ``wall_seconds`` then includes the contention.

A run whose workdir already holds ``results.json`` is skipped, so an interrupted sweep continues
where it stopped (an unfinished run resumes from its own checkpoint). Runs share a persistent XLA
compilation cache under the workdir root, so seeds after the first skip most compilation.
"""

from __future__ import annotations

import csv
import itertools
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from adapt.harness import config as config_lib


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


# What the sweep machinery reads; adapt.harness.config.check rejects anything else.
_SWEEP_KEYS = ("name", "base", "grid", "fixed", "parts", "setup", "group_by", "metrics", "plot",
               "curves", "baseline", "keep_checkpoints", "parallel")  # fmt: skip
_SECTION_KEYS = {
    "part": ("name", "base", "grid", "fixed"),
    "setup run": ("base", "args"),
    "plot": ("x", "series", "y", "x_order", "x_labels"),
    "curve": ("key", "x", "y"),
}


def check_keys(sweep: Any) -> None:
    """Raise on a key the sweep machinery would silently ignore (a typo such as ``paralel``)."""
    config_lib.check(sweep, dict.fromkeys(_SWEEP_KEYS), "sweep")
    sections = [("plot", sweep.get("plot") or {})]
    sections += [("part", p) for p in sweep.get("parts") or []]
    sections += [("setup run", s) for s in (sweep.get("setup") or {}).values()]
    sections += [("curve", c) for c in sweep.get("curves") or []]
    for kind, section in sections:
        config_lib.check(section, dict.fromkeys(_SECTION_KEYS[kind]), kind)


def parts(sweep: Any) -> list[dict]:
    """The sweep's grids as ``[{name, base, grid, fixed}]`` (one, named after the sweep, when the
    config gives ``base``/``grid`` directly)."""
    if "parts" in sweep:
        if "base" in sweep or "grid" in sweep:
            raise ValueError("a sweep config gives either parts or base/grid, not both")
        out = [dict(p) for p in sweep.parts]
    else:
        out = [dict(name=sweep.name, base=sweep.base, grid=sweep.grid, fixed=sweep.get("fixed"))]
    names = [p["name"] for p in out]
    if len(set(names)) != len(names):
        raise ValueError(f"sweep parts need distinct names; got {names}")
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
) -> dict:
    """Run one point in a fresh process (isolates memory and jit caches); return its results."""
    results = workdir / "results.json"
    if results.exists():
        return json.loads(results.read_text())
    start = time.perf_counter()
    cmd = [
        sys.executable,
        "-m",
        "experiments.finetune",
        f"--config={base}:{arg_string(point)}",
        f"--workdir={workdir}",
        *extra_flags,
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, check=False, env=env)
    if out.returncode != 0:
        raise RuntimeError(f"run {workdir.name} failed:\n{out.stderr[-4000:]}")
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
                raise ValueError(f"argument {k}={v!r} names a setup run the sweep does not define")
        out[k] = v
    return out


def metric_value(results: Mapping[str, Any], name: str) -> Any:
    """``results["eval"][name]`` for a plain name, else the dotted path into ``results``."""
    node: Any = results if "." in name else results.get("eval", {})
    for key in name.split("."):
        if not isinstance(node, Mapping) or key not in node:
            return None
        node = node[key]
    return node


def rows(sweep: Any, results: Sequence[tuple[dict, dict]]) -> list[dict]:
    out = []
    for point, res in results:
        row = dict(point)
        for m in sweep.metrics:
            row[m] = metric_value(res, m)
        row["trainable_pct"] = res.get("trainable_pct")
        row["wall_seconds"] = res.get("wall_seconds")
        out.append(row)
    return out


def _group_keys(sweep: Any, with_parts: bool) -> list[str]:
    keys = list(sweep.group_by)
    return ["part", *keys] if with_parts and "part" not in keys else keys


def _mean_std(values: Sequence[Any]) -> tuple[float | None, float]:
    vals = np.array([v for v in values if v is not None], float)
    if not vals.size:
        return None, 0.0
    return float(vals.mean()), float(vals.std(ddof=1)) if vals.size > 1 else 0.0


def summarise(sweep: Any, table: Sequence[dict], group_keys: Sequence[str]) -> list[dict]:
    """Mean and std over the non-grouped grid keys (seeds) for each group."""
    groups: dict[tuple, list[dict]] = {}
    for row in table:
        groups.setdefault(tuple(row.get(k) for k in group_keys), []).append(row)
    summary = []
    for key, members in groups.items():
        entry = dict(zip(group_keys, key, strict=True))
        entry["runs"] = len(members)
        for m in [*sweep.metrics, "trainable_pct", "wall_seconds"]:
            entry[m], entry[f"{m}_std"] = _mean_std([r.get(m) for r in members])
        summary.append(entry)
    return summary


def compare_to_baseline(
    summary: list[dict], group_keys: Sequence[str], baseline: Mapping[str, Any], metrics: list[str]
) -> list[dict]:
    """Adds ``<metric>_vs_baseline`` to every row of ``summary`` (in place); returns the rows (other
    than the baseline's own) whose first metric does not exceed the baseline's."""
    (key, value), *rest = baseline.items()
    if rest or key not in group_keys:
        raise ValueError(f"baseline must be one group_by key and its value; got {dict(baseline)}")
    others = [k for k in group_keys if k != key]
    base_rows = {tuple(e[k] for k in others): e for e in summary if e[key] == value}
    if not base_rows:
        raise ValueError(f"baseline {key}={value!r} is not among the sweep's rows")
    losses = []
    for e in summary:
        ref = base_rows.get(tuple(e[k] for k in others))
        for m in metrics:
            ok = ref is not None and e[m] is not None and ref[m] is not None
            e[f"{m}_vs_baseline"] = e[m] - ref[m] if ok else None
        first = e[f"{metrics[0]}_vs_baseline"]
        if e[key] != value and (first is None or first <= 0):
            losses.append(e)
    return losses


def markdown(
    sweep: Any,
    summary: Sequence[dict],
    group_keys: Sequence[str],
    baseline_losses: Sequence[dict] | None = None,
) -> str:
    """The summary table (mean ± std); with a ``baseline``, a column of differences from it and
    a closing line naming the rows that do not beat it (``baseline_losses``)."""
    baseline = dict(sweep.get("baseline") or {})
    first = sweep.metrics[0]
    vs = [f"{first} vs {v}" for v in baseline.values()]
    head = [*group_keys, *sweep.metrics, *vs, "trainable %", "wall s", "runs"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for e in summary:
        cells = [str(e[k]) for k in group_keys]
        cells += [
            f"{e[m]:.4f} ± {e[m + '_std']:.4f}" if e[m] is not None else "-" for m in sweep.metrics
        ]
        if vs:
            d = e.get(f"{first}_vs_baseline")
            cells.append("-" if d is None else f"{d:+.4f}")
        cells += [f"{e['trainable_pct']:.3f}" if e["trainable_pct"] is not None else "-"]
        cells += [
            f"{e['wall_seconds']:.0f}" if e["wall_seconds"] is not None else "-",
            str(e["runs"]),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    text = "\n".join(lines) + "\n"
    if baseline:
        ((key, value),) = baseline.items()
        named = ["; ".join(f"{k}={e[k]}" for k in group_keys) for e in baseline_losses or []]
        text += (
            f"\nRows not above {key}={value} on {first}: " + " | ".join(named) + "\n"
            if named
            else f"\nEvery row is above {key}={value} on {first}.\n"
        )
    return text


def _sort_key(v: Any) -> tuple:
    return (isinstance(v, str), v)


def x_axis(spec: Mapping[str, Any], values: Iterable[Any]) -> tuple[list[Any], list[str]]:
    """The plot's x values in tick order and their tick labels (``x_order``, ``x_labels``)."""
    order = list(spec.get("x_order") or [])
    labels = dict(spec.get("x_labels") or {})
    values = set(values)
    listed = [v for v in order if v in values]
    ordered = listed + sorted(values - set(listed), key=_sort_key)
    return ordered, [str(labels.get(str(v), v)) for v in ordered]


def plot(sweep: Any, summary: Sequence[dict], path: Path, part_names: Sequence[str]) -> Path | None:
    spec = sweep.get("plot")
    if not spec:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = part_names if len(part_names) > 1 else [None]
    fig, axes = plt.subplots(1, len(panels), figsize=(6.5 * len(panels), 4.5), squeeze=False)
    for ax, part in zip(axes[0], panels, strict=True):
        entries_all = [e for e in summary if part is None or e.get("part") == part]
        series: dict[Any, list[dict]] = {}
        for e in entries_all:
            series.setdefault(e[spec["series"]], []).append(e)
        xs_all, tick_labels = x_axis(spec, (e[spec["x"]] for e in entries_all))
        for name, entries in series.items():
            entries = sorted(entries, key=lambda e: xs_all.index(e[spec["x"]]))
            xs = [xs_all.index(e[spec["x"]]) for e in entries]
            ys = [e[spec["y"]] for e in entries]
            errs = [e[spec["y"] + "_std"] for e in entries]
            ax.errorbar(xs, ys, yerr=errs, marker="o", capsize=3, label=str(name))
        ax.set_xticks(range(len(xs_all)), tick_labels)
        ax.set_xlabel(spec["x"])
        ax.set_ylabel(spec["y"])
        ax.set_title(part or sweep.name)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def curve_table(
    curve: Mapping[str, str],
    results: Sequence[tuple[dict, dict]],
    group_keys: Sequence[str],
) -> list[dict]:
    """Mean +- std of ``curve["y"]`` at each ``curve["x"]`` of ``results[curve["key"]]`` over the
    runs of each group."""
    collected: dict[tuple, list[Any]] = {}
    for point, res in results:
        for item in res.get(curve["key"]) or []:
            key = (*(point.get(k) for k in group_keys), item[curve["x"]])
            collected.setdefault(key, []).append(item.get(curve["y"]))
    table = []
    for key, values in collected.items():
        entry = dict(zip([*group_keys, curve["x"]], key, strict=True))
        entry[curve["y"]], entry[f"{curve['y']}_std"] = _mean_std(values)
        entry["runs"] = len(values)
        table.append(entry)
    return table


def plot_curve(
    curve: Mapping[str, str], table: Sequence[dict], group_keys: Sequence[str], path: Path
) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    series: dict[tuple, list[dict]] = {}
    for e in table:
        series.setdefault(tuple(e[k] for k in group_keys), []).append(e)
    for name, entries in series.items():
        entries = sorted(entries, key=lambda e: e[curve["x"]])
        ax.errorbar(
            [e[curve["x"]] for e in entries],
            [e[curve["y"]] for e in entries],
            yerr=[e[curve["y"] + "_std"] for e in entries],
            marker="o",
            capsize=3,
            label=", ".join(map(str, name)),
        )
    ax.set_xlabel(curve["x"])
    ax.set_ylabel(curve["y"])
    ax.set_title(curve["key"])
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _write_csv(path: Path, table: Sequence[dict]) -> None:
    fields = list(dict.fromkeys(k for row in table for k in row))
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(table)


def run_sweep(
    sweep: Any, workdir_root: Path, out_dir: Path, extra_flags: Sequence[str] = ()
) -> list[dict]:
    check_keys(sweep)
    grids = parts(sweep)
    with_parts = "parts" in sweep
    env = _environment(workdir_root)
    keep = bool(sweep.get("keep_checkpoints", False))
    setup_dirs: dict[str, Path] = {}
    for name, spec in (sweep.get("setup") or {}).items():
        setup_dirs[name] = workdir_root / "setup" / name
        args = dict(spec.get("args") or {})
        run_point(spec["base"], args, setup_dirs[name], extra_flags, env, keep)
        print(f"setup {name}: done", flush=True)
    jobs = []  # (row point, base, args, workdir)
    for part in grids:
        root = workdir_root / part["name"] if with_parts else workdir_root
        for point in points(part["grid"], part.get("fixed")):
            row_point = {"part": part["name"], **point} if with_parts else point
            args = _substitute(point, setup_dirs)
            jobs.append((row_point, part["base"], args, root / run_name(point)))

    def one(job):
        row_point, base, args, workdir = job
        res = run_point(base, args, workdir, extra_flags, env, keep)
        print(
            f"{workdir.relative_to(workdir_root)}: "
            + ", ".join(f"{m}={metric_value(res, m)}" for m in sweep.metrics),
            flush=True,
        )
        return row_point, res

    with ThreadPoolExecutor(max_workers=max(int(sweep.get("parallel", 1)), 1)) as pool:
        results = list(pool.map(one, jobs))  # in grid order, whatever order they finish in
    group_keys = _group_keys(sweep, with_parts)
    table = rows(sweep, results)
    summary = summarise(sweep, table, group_keys)
    baseline = dict(sweep.get("baseline") or {})
    losses = (
        compare_to_baseline(summary, group_keys, baseline, list(sweep.metrics))
        if baseline
        else None
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    _write_csv(out_dir / "runs.csv", table)
    _write_csv(out_dir / "summary.csv", summary)
    (out_dir / "summary.md").write_text(markdown(sweep, summary, group_keys, losses))
    plot(sweep, summary, out_dir / "plot.png", [p["name"] for p in grids])
    for curve in sweep.get("curves") or []:
        ctable = curve_table(curve, results, group_keys)
        if ctable:
            _write_csv(out_dir / f"{curve['key']}.csv", ctable)
            plot_curve(curve, ctable, group_keys, out_dir / f"{curve['key']}.png")
    return summary
