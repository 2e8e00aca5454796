"""Grids of runs: one workdir per point, resumable, summarised as CSV, markdown and a plot.

A sweep config's ``get_config()`` returns a ConfigDict with
- ``name``: the sweep's name (results go to ``results/<name>/`` unless ``--out`` says otherwise);
- ``base``: the config file every run uses (``configs/glue/banking77_minilm.py``);
- ``grid``: ``{arg: [values]}``, the ``get_config`` arguments to cross (``method``, ``seed`` ...);
- ``fixed``: arguments shared by every run (optional);
- ``group_by``: the grid keys that identify a row of the summary (the others, e.g. ``seed``, are
  averaged: mean +- std);
- ``metrics``: eval metrics to report (``accuracy``, ``macro_f1`` ...);
- ``plot``: ``{"x": arg, "series": arg, "y": metric}`` for the PNG (optional).

A run whose workdir already holds ``results.json`` is skipped, so an interrupted sweep continues
where it stopped (an unfinished run resumes from its own checkpoint).
"""

from __future__ import annotations

import csv
import itertools
import json
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np


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


def run_point(
    base: str, point: Mapping[str, Any], workdir: Path, extra_flags: Sequence[str] = ()
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
    out = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"run {workdir.name} failed:\n{out.stderr[-4000:]}")
    data = json.loads(results.read_text())
    data.setdefault("wall_seconds", time.perf_counter() - start)
    results.write_text(json.dumps(data, indent=2))
    return data


def rows(sweep: Any, results: Sequence[tuple[dict, dict]]) -> list[dict]:
    out = []
    for point, res in results:
        row = dict(point)
        for m in sweep.metrics:
            row[m] = res["eval"].get(m)
        row["trainable_pct"] = res.get("trainable_pct")
        row["wall_seconds"] = res.get("wall_seconds")
        out.append(row)
    return out


def summarise(sweep: Any, table: Sequence[dict]) -> list[dict]:
    """Mean and std over the non-grouped grid keys (seeds) for each group."""
    groups: dict[tuple, list[dict]] = {}
    for row in table:
        groups.setdefault(tuple(row[k] for k in sweep.group_by), []).append(row)
    summary = []
    for key, members in groups.items():
        entry = dict(zip(sweep.group_by, key, strict=True))
        entry["runs"] = len(members)
        for m in [*sweep.metrics, "trainable_pct", "wall_seconds"]:
            vals = np.array([r[m] for r in members if r.get(m) is not None], float)
            entry[m] = float(vals.mean()) if vals.size else None
            entry[f"{m}_std"] = float(vals.std(ddof=1)) if vals.size > 1 else 0.0
        summary.append(entry)
    return summary


def markdown(sweep: Any, summary: Sequence[dict]) -> str:
    head = [*sweep.group_by, *sweep.metrics, "trainable %", "wall s", "runs"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for e in summary:
        cells = [str(e[k]) for k in sweep.group_by]
        cells += [
            f"{e[m]:.4f} ± {e[m + '_std']:.4f}" if e[m] is not None else "-" for m in sweep.metrics
        ]
        cells += [f"{e['trainable_pct']:.3f}" if e["trainable_pct"] is not None else "-"]
        cells += [
            f"{e['wall_seconds']:.0f}" if e["wall_seconds"] is not None else "-",
            str(e["runs"]),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot(sweep: Any, summary: Sequence[dict], path: Path) -> Path | None:
    spec = sweep.get("plot")
    if not spec:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    series: dict[Any, list[dict]] = {}
    for e in summary:
        series.setdefault(e[spec["series"]], []).append(e)
    xs_all = sorted({e[spec["x"]] for e in summary}, key=lambda v: (isinstance(v, str), v))
    for name, entries in series.items():
        entries = sorted(entries, key=lambda e: xs_all.index(e[spec["x"]]))
        xs = [xs_all.index(e[spec["x"]]) for e in entries]
        ys = [e[spec["y"]] for e in entries]
        errs = [e[spec["y"] + "_std"] for e in entries]
        ax.errorbar(xs, ys, yerr=errs, marker="o", capsize=3, label=str(name))
    ax.set_xticks(range(len(xs_all)), [str(x) for x in xs_all])
    ax.set_xlabel(spec["x"])
    ax.set_ylabel(spec["y"])
    ax.set_title(sweep.name)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def run_sweep(
    sweep: Any, workdir_root: Path, out_dir: Path, extra_flags: Sequence[str] = ()
) -> list[dict]:
    results = []
    for point in points(sweep.grid, sweep.get("fixed")):
        res = run_point(sweep.base, point, workdir_root / run_name(point), extra_flags)
        results.append((point, res))
        print(
            f"{run_name(point)}: " + ", ".join(f"{m}={res['eval'].get(m)}" for m in sweep.metrics),
            flush=True,
        )
    table = rows(sweep, results)
    summary = summarise(sweep, table)
    out_dir.mkdir(parents=True, exist_ok=True)
    with open(out_dir / "runs.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(table[0]))
        writer.writeheader()
        writer.writerows(table)
    with open(out_dir / "summary.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(summary[0]))
        writer.writeheader()
        writer.writerows(summary)
    (out_dir / "summary.md").write_text(markdown(sweep, summary))
    plot(sweep, summary, out_dir / "plot.png")
    return summary
