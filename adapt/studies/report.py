"""The tables and plots of a study: one row per run, mean +- std per group, the difference
from a baseline row, and plots (see :mod:`adapt.studies.sweep` for the config keys).
"""

from __future__ import annotations

import csv
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np


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


def group_keys(sweep: Any, with_parts: bool) -> list[str]:
    keys = list(sweep.group_by)
    return ["part", *keys] if with_parts and "part" not in keys else keys


def mean_std(values: Sequence[Any]) -> tuple[float | None, float]:
    vals = np.array([v for v in values if v is not None], float)
    if not vals.size:
        return None, 0.0
    return float(vals.mean()), float(vals.std(ddof=1)) if vals.size > 1 else 0.0


def summarise(
    sweep: Any, table: Sequence[dict], group_keys: Sequence[str], extra: Sequence[str] = ()
) -> list[dict]:
    """Mean and std over the non-grouped grid keys (seeds) for each group; ``extra`` columns
    are the same within a group (a value chosen by selection) and are copied."""
    groups: dict[tuple, list[dict]] = {}
    for row in table:
        groups.setdefault(tuple(row.get(k) for k in group_keys), []).append(row)
    summary = []
    for key, members in groups.items():
        entry = dict(zip(group_keys, key, strict=True))
        entry["runs"] = len(members)
        entry.update({k: members[0].get(k) for k in extra})
        for m in [*sweep.metrics, "trainable_pct", "wall_seconds"]:
            entry[m], entry[f"{m}_std"] = mean_std([r.get(m) for r in members])
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
        entry[curve["y"]], entry[f"{curve['y']}_std"] = mean_std(values)
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


def write_csv(path: Path, table: Sequence[dict]) -> None:
    fields = list(dict.fromkeys(k for row in table for k in row))
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(table)


__all__ = [
    "compare_to_baseline",
    "curve_table",
    "group_keys",
    "markdown",
    "mean_std",
    "metric_value",
    "plot",
    "plot_curve",
    "rows",
    "summarise",
    "write_csv",
    "x_axis",
]
