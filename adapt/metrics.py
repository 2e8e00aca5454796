"""What a run leaves behind for people: metrics.jsonl, TensorBoard, a progress bar, results, plots.

Files in the workdir (written by process 0 only; on other processes every writer is a no-op, so
the loop can call them unconditionally):

- ``metrics.jsonl``: one JSON object per line, ``{"step": int, "split": "train"|"eval"|..., <name>:
  <number>, ...}``, flushed after every line so a killed run loses nothing it logged. The file is
  the source of truth for plots and tables; it is plain text so ``jq``/pandas read it directly.
- ``tb/<split>/``: the same scalars for TensorBoard (tensorboardX), one run per split, so train
  and eval curves of the same metric share a chart.
- ``results.json``: the final numbers, written atomically (tmp file + rename).
- a learning-curve PNG from :func:`plot_learning_curves`.

**Resuming.** A run killed after logging step 130 but restored from its checkpoint at step 100
would log steps 101-130 twice. ``MetricsWriter(workdir, resume_step=100)`` therefore first drops
every record with ``step > 100`` from metrics.jsonl (:meth:`MetricsWriter.truncate_after`) and
opens the TensorBoard writers with ``purge_step=101``, which makes TensorBoard hide the stale
events at steps >= 101. ``resume_step=None`` means a fresh run: leftovers of an earlier run that
never checkpointed are dropped the same way (everything goes). The Checkpointer is opened first,
so a workdir of a *different* run is refused before this module touches it.
"""

from __future__ import annotations

import json
import math
import os
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import numpy as np

from adapt.fingerprint import jsonable

METRICS_FILE = "metrics.jsonl"
RESULTS_FILE = "results.json"
_BOOKKEEPING = ("step", "split")


def _is_primary() -> bool:
    return jax.process_index() == 0


def _atomic_write_text(path: Path, text: str) -> None:
    """Write via a tmp file in the same directory and ``os.replace``: readers never see half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_metrics(path: str | os.PathLike) -> list[dict]:
    """The records of a metrics.jsonl; a torn last line (a kill mid-write) is skipped."""
    path = Path(path)
    if not path.exists():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict) and "step" in record:
            records.append(record)
    return records


class MetricsWriter:
    """Append metrics to ``metrics.jsonl`` and TensorBoard (see the module docstring)."""

    def __init__(
        self,
        workdir: str | os.PathLike,
        *,
        resume_step: int | None = None,
        final_step: int | None = None,
        tensorboard: bool = True,
    ):
        self.workdir = Path(workdir)
        self.path = self.workdir / METRICS_FILE
        self.enabled = _is_primary()
        self._tensorboard = tensorboard
        self._purge_step = 0 if resume_step is None else int(resume_step) + 1
        self._tb: dict[str, Any] = {}
        self._file = None
        if not self.enabled:
            return
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.truncate_after(-1 if resume_step is None else int(resume_step))
        if resume_step is not None and resume_step == final_step:
            self._drop_final_evaluations(int(resume_step))

    def _drop_final_evaluations(self, step: int) -> None:
        """A run resumed at its last step evaluates again; drop what the first attempt logged
        after its final checkpoint (every non-train record at that step), so nothing repeats."""
        kept = [r for r in read_metrics(self.path) if r["step"] != step or r["split"] == "train"]
        if self.path.exists() and len(kept) != len(self.path.read_text().splitlines()):
            _atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in kept))

    def truncate_after(self, step: int) -> int:
        """Drop records with ``step`` greater than ``step`` (and torn lines); returns how many."""
        if not self.enabled:
            return 0
        if self._file is not None:
            self._file.close()
            self._file = None
        dropped = 0
        if self.path.exists():
            lines = self.path.read_text().splitlines()
            kept = [
                json.dumps(r, allow_nan=True) for r in read_metrics(self.path) if r["step"] <= step
            ]
            dropped = len(lines) - len(kept)
            if dropped:
                _atomic_write_text(self.path, "".join(line + "\n" for line in kept))
        return dropped

    def _writer(self, split: str):
        if split not in self._tb:
            from tensorboardX import SummaryWriter

            # tensorboardX names files by second and host: a resumed run starting within the
            # same second would overwrite the earlier file without a unique suffix.
            self._tb[split] = SummaryWriter(
                logdir=str(self.workdir / "tb" / split),
                purge_step=self._purge_step,
                flush_secs=30,
                filename_suffix=f".{os.getpid()}.{time.time_ns()}",
            )
        return self._tb[split]

    def write(self, step: int, split: str, metrics: Mapping[str, Any]) -> None:
        """Log ``metrics`` (numbers; arrays are fetched to host) at ``step`` for ``split``."""
        if not self.enabled:
            return
        values = jsonable(dict(metrics), where=f"{split} metrics")
        clash = set(values) & set(_BOOKKEEPING)
        if clash:
            raise ValueError(f"metric names {sorted(clash)} are reserved for the record itself")
        record = {"step": int(step), "split": split, **values}
        if self._file is None:
            self._file = open(self.path, "a")  # noqa: SIM115 (kept open across writes)
        self._file.write(json.dumps(record, allow_nan=True) + "\n")
        self._file.flush()
        if self._tensorboard:
            tb = self._writer(split)
            for name, value in values.items():
                if isinstance(value, int | float) and not isinstance(value, bool):
                    tb.add_scalar(name, value, int(step))
            tb.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        for tb in self._tb.values():
            tb.close()
        self._tb.clear()

    def __enter__(self) -> MetricsWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class ProgressBar:
    """Progress on stderr, process 0 only: a tqdm bar (step/total, loss, examples/s) on a
    terminal; where stderr is a file or pipe (logs, CI, sweeps), a plain line every
    ``1 / lines`` of the steps (step, share, loss, examples/s, elapsed and remaining time), so a
    long run's log never goes quiet. ``enabled=True`` forces the bar, ``False`` silences both.
    ``update`` is cheap: the loss (possibly a device array) is only fetched to host when shown."""

    def __init__(
        self,
        total: int,
        *,
        initial: int = 0,
        desc: str = "train",
        enabled: bool | None = None,
        mininterval: float = 1.0,
        lines: int = 20,
    ):
        self._plain_every = 0
        if enabled is None:
            enabled = sys.stderr.isatty() and _is_primary()
            if not enabled and _is_primary() and total > 0:
                self._plain_every = max(total // lines, 1)
        self.enabled = enabled
        self.mininterval = mininterval
        self._bar = None
        self._total, self._desc = total, desc
        self._start, self._initial = time.perf_counter(), initial
        self._examples = 0
        if not enabled:
            return
        from tqdm.auto import tqdm

        self._bar = tqdm(
            total=total,
            initial=initial,
            desc=desc,
            unit="step",
            dynamic_ncols=True,
            mininterval=mininterval,
        )
        self._examples = 0
        self._loss = None
        self._last = time.perf_counter()

    def update(self, step: int, *, loss: Any = None, examples: int = 0) -> None:
        """The loop has finished ``step``; ``examples`` were processed since the last call."""
        if self._plain_every:
            self._examples += examples
            if step % self._plain_every == 0 or step == self._total:
                self._plain_line(step, loss)
            return
        if self._bar is None:
            return
        self._bar.update(int(step) - self._bar.n)
        self._examples += examples
        if loss is not None:
            self._loss = loss
        now = time.perf_counter()
        if now - self._last >= self.mininterval:
            postfix = {"ex/s": f"{self._examples / (now - self._last):.1f}"}
            if self._loss is not None:
                postfix["loss"] = f"{float(np.asarray(self._loss)):.4f}"
            self._bar.set_postfix(postfix, refresh=False)
            self._examples, self._last = 0, now

    def _plain_line(self, step: int, loss: Any) -> None:
        elapsed = time.perf_counter() - self._start
        done = step - self._initial
        left = elapsed / done * (self._total - step) if done > 0 else float("nan")
        shown = f" loss {float(np.asarray(loss)):.4f}" if loss is not None else ""
        print(
            f"{self._desc} step {step}/{self._total} ({100 * step / self._total:.0f}%){shown}, "
            f"{self._examples / max(elapsed, 1e-9):.1f} examples/s, elapsed "
            f"{_duration(elapsed)}, left {_duration(left)}",
            file=sys.stderr,
            flush=True,
        )

    def write(self, message: str) -> None:
        """Print a line without breaking the bar."""
        if self._bar is not None:
            self._bar.write(message)
        elif _is_primary():
            print(message, file=sys.stderr)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


def _duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    minutes, secs = divmod(int(round(seconds)), 60)
    return f"{minutes // 60}h{minutes % 60:02d}m" if minutes >= 60 else f"{minutes}m{secs:02d}s"


def write_results(workdir: str | os.PathLike, results: Mapping[str, Any]) -> Path:
    """Write ``results.json`` atomically (process 0 only); returns its path."""
    path = Path(workdir) / RESULTS_FILE
    if _is_primary():
        text = json.dumps(jsonable(dict(results), where="results"), indent=2, sort_keys=True)
        _atomic_write_text(path, text + "\n")
    return path


# -------------------------------------------------------------------------------------- plots
def _series(records: list[dict]) -> dict[str, dict[str, tuple[np.ndarray, np.ndarray]]]:
    """``{metric: {split: (steps, values)}}``; the last record wins for a repeated (split, step)."""
    last: dict[tuple[str, int], dict] = {}
    for r in records:
        last[(str(r.get("split", "train")), int(r["step"]))] = r
    table: dict[str, dict[str, list]] = {}
    for (split, step), r in sorted(last.items(), key=lambda kv: (kv[0][0], kv[0][1])):
        for name, value in r.items():
            if name in _BOOKKEEPING or isinstance(value, bool):
                continue
            if isinstance(value, int | float) and math.isfinite(value):
                table.setdefault(name, {}).setdefault(split, []).append((step, value))
    return {
        name: {s: tuple(np.asarray(c) for c in zip(*pts, strict=True)) for s, pts in by.items()}
        for name, by in table.items()
    }


def smooth(values: np.ndarray, window: int) -> np.ndarray:
    """A centred moving average whose window shrinks symmetrically at the ends, so the curve
    starts and ends on the logged values (an EMA lags: at the end of a rising curve it shows
    an older, lower value than the run reached)."""
    values = np.asarray(values, np.float64)
    n, half = len(values), max(int(window) // 2, 0)
    sums = np.concatenate([[0.0], np.cumsum(values)])
    i = np.arange(n)
    h = np.minimum(np.minimum(i, n - 1 - i), half)
    return (sums[i + h + 1] - sums[i - h]) / (2 * h + 1)


def plot_learning_curves(
    metrics_jsonl: str | os.PathLike, out_png: str | os.PathLike, *, title: str | None = None
) -> Path:
    """One panel per metric (loss first), every split that logged it on the same axes.

    Noisy train curves are drawn faint with a centred moving average on top (:func:`smooth`:
    it ends on the last logged value); every panel spans the whole run (step 0 to the last
    step logged), so a metric evaluated once shows where in the run it was; perplexity
    spanning more than two decades gets a log axis. Returns ``out_png``.
    """
    from matplotlib.figure import Figure  # no pyplot: no global backend or figure state

    series = _series(read_metrics(metrics_jsonl))
    if not series:
        raise ValueError(f"no numeric metrics in {metrics_jsonl}")
    names = sorted(series, key=lambda n: (n != "loss", n))
    cols = min(3, len(names))
    rows = math.ceil(len(names) / cols)
    fig = Figure(figsize=(4.8 * cols, 3.4 * rows))
    axes = fig.subplots(rows, cols, squeeze=False)
    every_step = np.concatenate([s for by in series.values() for s, _ in by.values()])
    first, last = min(0, int(every_step.min())), int(every_step.max())
    pad = max((last - first) * 0.02, 0.5)
    for ax, name in zip(axes.flat, names, strict=False):
        for split, (steps, values) in sorted(series[name].items()):
            if split == "train" and len(values) >= 20:
                (line,) = ax.plot(steps, values, alpha=0.3, linewidth=0.8)
                window = max(len(values) // 25, 3)
                ax.plot(steps, smooth(values, window), color=line.get_color(),
                        label=f"{split} (mean of {window | 1})")  # fmt: skip
            else:
                marker = "o" if len(values) <= 30 else None
                ax.plot(steps, values, marker=marker, markersize=3, label=split)
        values = np.concatenate([v for _, v in series[name].values()])
        if name == "perplexity" and values.min() > 0 and values.max() / values.min() > 100:
            ax.set_yscale("log")
        ax.set_xlim(first - pad, last + pad)
        ax.set_title(name.replace("_", " "))
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    for ax in list(axes.flat)[len(names) :]:
        ax.set_visible(False)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    out = Path(out_png)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    return out
