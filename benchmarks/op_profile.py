"""Where a step's time goes, op by op: XLA:CPU's thunks (``jax.profiler``) next to PyTorch's ops
(``torch.profiler``), for ``python -m benchmarks.vs_pytorch --profile N``.

Each function runs ``call`` (one synchronised step) ``steps`` times under its framework's
profiler and returns milliseconds per step: per op (XLA: each thunk of the compiled step, e.g.
``fusion.12`` or ``dot.3``; torch: each aten op's self CPU time) and per kind of op (the name
without its instance number, e.g. ``fusion``, ``dot``, ``aten::addmm``). XLA:CPU may run
independent thunks at once on its threads, so its per-op times can sum to more than the step.
Measured caveat (AMD EPYC, jaxlib 0.10.2): XLA's thunk events sum to about a third of the step
(251 of 664 ms for the MiniLM forward pass) where torch's ops sum to the step: XLA:CPU hands
large dots to its Eigen pool and the thunk's event does not cover all of that work, so XLA's
``dot`` times are lower bounds and most of the step's remainder is matmul; the other kinds
(fusions, copies, reduce-windows) are whole.
"""

from __future__ import annotations

import re
import tempfile
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

# profiler bookkeeping on XLA's thread lines, not computation
_XLA_NOT_OPS = ("ThreadpoolListener", "ThunkExecutor", "end: ")


def _table(ns_by_op: Counter, steps: int, top: int) -> dict[str, Any]:
    kinds: Counter = Counter()
    for name, ns in ns_by_op.items():
        kinds[re.sub(r"[.\d]+$", "", name)] += ns
    per_step = lambda counter, n: [
        {"op": name, "ms_per_step": ns / steps / 1e6} for name, ns in counter.most_common(n)
    ]
    return {
        "steps": steps,
        "total_ms_per_step": sum(ns_by_op.values()) / steps / 1e6,
        "by_kind": per_step(kinds, top),
        "by_op": per_step(ns_by_op, top),
    }


def jax_op_times(call: Callable[[], None], steps: int, top: int = 25) -> dict[str, Any]:
    """Per-thunk times of XLA:CPU from a ``jax.profiler`` trace of ``steps`` calls."""
    import jax
    from jax.profiler import ProfileData

    ns_by_op: Counter = Counter()
    with tempfile.TemporaryDirectory() as folder:
        with jax.profiler.trace(folder):
            for _ in range(steps):
                call()
        traces = sorted(Path(folder).rglob("*.xplane.pb"))
        if not traces:
            raise RuntimeError(f"jax.profiler wrote no .xplane.pb under {folder}")
        data = ProfileData.from_file(str(traces[-1]))
    for plane in data.planes:
        if plane.name != "/host:CPU":
            continue
        for line in plane.lines:
            if line.name == "python":  # dispatch and Python, not the compiled step's ops
                continue
            for event in line.events:
                if not event.name.startswith(_XLA_NOT_OPS):
                    ns_by_op[event.name] += event.duration_ns
    return _table(ns_by_op, steps, top)


def torch_op_times(call: Callable[[], None], steps: int, top: int = 25) -> dict[str, Any]:
    """Per-op self CPU times of PyTorch from ``torch.profiler`` over ``steps`` calls."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            call()
    ns_by_op = Counter(
        {e.key: e.self_cpu_time_total * 1e3 for e in prof.key_averages()}  # microseconds
    )
    return _table(ns_by_op, steps, top)
