"""Where a step's time goes, op by op: XLA:CPU's thunks (``jax.profiler``) next to PyTorch's ops
(``torch.profiler``), for ``python -m benchmarks.vs_pytorch --profile N``.

Each function runs ``call`` (one synchronised step) ``steps`` times under its framework's
profiler and returns milliseconds per step: per op (XLA: each thunk of the compiled step, e.g.
``fusion.12`` or ``dot.3``; torch: each aten op's self CPU time) and per kind of op (the name
without its instance number, e.g. ``fusion``, ``dot``, ``aten::addmm``), each with its ``share``
of the framework's total (compare shares across frameworks: the totals are counted differently).

XLA:CPU needs more than its thunks' events (measured, AMD EPYC, jaxlib 0.10.2): a large dot's
thunk only hands the contraction to the Eigen pool and returns, so its event covers the
hand-off, and the thunk events alone sum to about a third of the step (251 of 664 ms for the
MiniLM forward pass). The pool's threads mark their busy spans (``ThreadpoolListener``'s
StartRegion/StopRegion); the busy time not covered by an op event (or by the executor's wait)
on the same thread is the handed-off work, and is credited to the dots and convolutions in
flight: launched, and not yet marked ``end: <op>``.
So XLA's numbers are thread time summed over XLA's threads (on 2 cores up to twice the step's
wall time: ``wall_ms_per_step`` is measured alongside), where torch's self CPU times are the
calling thread's and sum to about the step. Pool time with no dot in flight is
``pool (no dot in flight)``; it stays small when the attribution holds. Concurrent dots share
the pool's time in proportion to their FLOPs (from the compiled module's text, which also names
each op: :func:`hlo_ops`). What stays approximate: a loop fusion split across the pool shows one
event, and its other part's time goes to the dots in flight.
"""

from __future__ import annotations

import bisect
import math
import re
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

# profiler bookkeeping on XLA's thread lines, not computation
_XLA_NOT_OPS = ("ThreadpoolListener", "ThunkExecutor", "end: ")
_REGION_START, _REGION_STOP = "ThreadpoolListener::StartRegion", "ThreadpoolListener::StopRegion"
_MARKERS = ("ThreadpoolListener", "end: ")  # instants, not spans of work
_NEVER = 2**63 - 1
_HANDS_OFF = re.compile(r"^(dot|dot_general|convolution)(\.\d+)?$")  # thunks that use the pool
UNATTRIBUTED = "pool (no dot in flight)"


def _kind(name: str) -> str:
    return re.sub(r"[.\d]+$", "", name)


def _table(
    ns_by_op: Counter, steps: int, top: int, wall_s: float | None = None, ops: dict | None = None
) -> dict:
    kinds: Counter = Counter()
    for name, ns in ns_by_op.items():
        kinds[_kind(name)] += ns
    total = sum(ns_by_op.values())
    per_step = lambda counter, n: [
        {"op": name, "ms_per_step": ns / steps / 1e6, "share": ns / total if total else 0.0}
        for name, ns in counter.most_common(n)
    ]
    table = {
        "steps": steps,
        "total_ms_per_step": total / steps / 1e6,
        "by_kind": per_step(kinds, top),
        "by_op": [{**row, **(ops or {}).get(row["op"], {})} for row in per_step(ns_by_op, top)],
    }
    if ops:  # the matmuls grouped by what they compute: which shape and layout is slow
        by_shape: dict[str, dict[str, Any]] = {}
        for name, ns in ns_by_op.items():
            op = ops.get(name, {})
            if "gflop" in op:
                row = by_shape.setdefault(op["hlo"], {"dot": op["hlo"], "count": 0, "ns": 0.0})
                row["count"] += 1
                row["ns"] += ns
                row["gflop"] = row.get("gflop", 0.0) + op["gflop"]
        table["dots_by_shape"] = [
            {
                "dot": row["dot"],
                "count": row["count"],
                "ms_per_step": row["ns"] / steps / 1e6,
                "share": row["ns"] / total,
                # per second of thread time: x the threads busy for the machine's rate
                "gflop_per_thread_s": row["gflop"] * steps / (row["ns"] / 1e9) if row["ns"] else 0,
            }
            for row in sorted(by_shape.values(), key=lambda r: -r["ns"])[:top]
        ]
    if wall_s is not None:
        table["wall_ms_per_step"] = wall_s / steps * 1e3
    return table


def _uncovered(start: int, stop: int, covered: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """The parts of [start, stop) outside the sorted, disjoint ``covered`` intervals."""
    parts, cursor = [], start
    for lo, hi in covered:
        if hi <= cursor or lo >= stop:
            continue
        if lo > cursor:
            parts.append((cursor, lo))
        cursor = max(cursor, hi)
    if cursor < stop:
        parts.append((cursor, stop))
    return parts


def _spans(lines: list[tuple[str, list[tuple[str, int, int]]]]) -> list[tuple[int, int, str]]:
    """(start, end, op) of each hand-off thunk: from its launch to its ``end: <op>`` marker (the
    pool finishing it), or to the next hand-off's launch when the marker is missing."""
    launches: dict[str, list[int]] = {}
    ends: dict[str, list[int]] = {}
    durations: dict[tuple[str, int], int] = {}
    for _, events in lines:
        for name, start, duration in events:
            if _HANDS_OFF.match(name):
                launches.setdefault(name, []).append(start)
                durations[name, start] = duration
            elif name.startswith("end: ") and _HANDS_OFF.match(name[5:]):
                ends.setdefault(name[5:], []).append(start)
    every_launch = sorted(start for starts in launches.values() for start in starts)
    spans = []
    for name, starts in launches.items():
        marks = sorted(ends.get(name, []))
        for start in sorted(starts):
            i = bisect.bisect_left(marks, start)
            if i < len(marks):
                stop = marks.pop(i)
            else:  # marker lost (seen on a trace's last step): in flight until the next launch
                j = bisect.bisect_right(every_launch, start)
                stop = every_launch[j] if j < len(every_launch) else _NEVER
            spans.append((start, max(stop, start + durations[name, start]), name))
    return sorted(spans)


def xla_thread_times(
    lines: list[tuple[str, list[tuple[str, int, int]]]], work: dict[str, float] | None = None
) -> Counter:
    """ns per op from XLA:CPU's thread lines, ``(line name, [(event, start_ns, duration_ns)])``:
    each op's own events, plus the pool's busy time outside op events, shared among the dots
    and convolutions in flight at that moment (launched, not yet marked ``end: <op>``) in
    proportion to their ``work`` (e.g. GFLOP; equally where unknown). Without weights a rank-8
    LoRA matmul running beside a 384 x 384 one took half the pool's time in the profile, where
    alone it takes a tenth of it."""
    ns_by_op: Counter = Counter()
    for _, events in lines:
        for name, _start, duration in events:
            if not name.startswith(_XLA_NOT_OPS):
                ns_by_op[name] += duration
    spans = _spans(lines)
    # elementary intervals between consecutive span boundaries, each with the ops in flight
    bounds = sorted({t for start, stop, _ in spans for t in (start, stop)})
    active: list[list[str]] = [[] for _ in bounds]
    for start, stop, name in spans:
        for i in range(bisect.bisect_left(bounds, start), bisect.bisect_left(bounds, stop)):
            active[i].append(name)
    for _, events in lines:
        ordered = sorted(events, key=lambda e: e[1])
        # what this thread's events account for, disjoint: ops, and the executor's waits (a
        # region around a wait is the launching thread blocked, not the pool working)
        merged: list[tuple[int, int]] = []
        for name, start, duration in ordered:
            if name.startswith(_MARKERS) or duration == 0:
                continue
            if merged and start <= merged[-1][1]:
                merged[-1] = (merged[-1][0], max(merged[-1][1], start + duration))
            else:
                merged.append((start, start + duration))
        region_start = None
        for name, start, _ in ordered:
            if name == _REGION_START:
                region_start = start
            elif name == _REGION_STOP and region_start is not None:
                for lo, hi in _uncovered(region_start, start, merged):
                    _credit(lo, hi, bounds, active, ns_by_op, work or {})
                region_start = None
    return ns_by_op


def _credit(
    lo: int, hi: int, bounds: list[int], active: list[list[str]], out: Counter, work: dict
) -> None:
    """Share [lo, hi) of pool time among the ops in flight over each of its parts (elementary
    interval ``i`` is ``[bounds[i], bounds[i + 1])`` with ``active[i]`` in flight), in
    proportion to their ``work`` where every one of them has some, else equally."""
    cursor, i = lo, bisect.bisect_right(bounds, lo) - 1  # bounds[i] <= cursor < bounds[i + 1]
    while cursor < hi:
        if 0 <= i < len(bounds) - 1:
            stop, names = min(hi, bounds[i + 1]), active[i]
        else:  # before the first span or after the last
            stop, names = (min(hi, bounds[0]) if i < 0 else hi), []
        names = names or [UNATTRIBUTED]
        weights = [work.get(name, 0.0) for name in names]
        if not all(w > 0 for w in weights):
            weights = [1.0] * len(names)
        for name, weight in zip(names, weights, strict=True):
            out[name] += (stop - cursor) * weight / sum(weights)
        cursor, i = stop, i + 1


# name, shape with its layout (minor-to-major: "{1,0}" is row-major), opcode, operands, the rest
_INSTRUCTION = re.compile(
    r"^\s*(?:ROOT )?%([\w.\-]+) = (\w+\[[\d,]*\](?:\{[\d,]*\})?)\S* ([\w\-]+)\((.*?)\)(.*)$"
)
_OP_NAME = re.compile(r'op_name="([^"]*)"')


def hlo_ops(hlo_text: str) -> dict[str, dict[str, Any]]:
    """What each instruction of a compiled module's text is, by name (the name its thunk's events
    carry): ``hlo`` (``f32[4096,8]{1,0} dot(f32[4096,384]{1,0}, f32[384,8]{1,0})``: shapes with
    their layouts, which decide how fast a GEMM runs), ``source`` (the JAX
    op_name: the model's module path), and for dots ``gflop`` (2 x output size x contracted
    size)."""
    shapes: dict[str, str] = {}
    parsed = []
    for line in hlo_text.splitlines():
        match = _INSTRUCTION.match(line)
        if match:
            name, shape, opcode, operands, rest = match.groups()
            shapes[name] = shape
            parsed.append((name, shape, opcode, operands, rest))
    dims = lambda shape: [
        int(d) for d in shape[shape.index("[") + 1 : shape.index("]")].split(",") if d
    ]
    ops = {}
    for name, shape, opcode, operands, rest in parsed:
        args = [shapes.get(a.strip().lstrip("%"), "?") for a in operands.split(",") if a.strip()]
        info: dict[str, Any] = {"hlo": f"{shape} {opcode}({', '.join(args)})"}
        source = _OP_NAME.search(rest)
        if source:
            info["source"] = source.group(1)
        contracting = re.search(r"lhs_contracting_dims=\{([\d,]*)\}", rest)
        if opcode == "dot" and contracting and args and args[0] != "?":
            lhs = dims(args[0])
            k = math.prod(lhs[int(i)] for i in contracting.group(1).split(",") if i)
            info["gflop"] = 2 * math.prod(dims(shape)) * k / 1e9
            # which axes contract tells a transposed operand (the layout GEMMs care about)
            rhs = re.search(r"rhs_contracting_dims=\{([\d,]*)\}", rest)
            info["hlo"] += f" contracting {contracting.group(1)}|{rhs.group(1) if rhs else '?'}"
        ops[name] = info
    return ops


def jax_op_times(
    call: Callable[[], None], steps: int, top: int = 25, hlo_text: str = ""
) -> dict[str, Any]:
    """Per-op thread times of XLA:CPU from a ``jax.profiler`` trace of ``steps`` calls; with the
    compiled step's ``hlo_text`` (``compiled.as_text()``) each op says what it is (:func:`hlo_ops`)."""
    import jax
    from jax.profiler import ProfileData

    # no Python tracer: its events ("$threading.py:611 wait" of any other thread in the process,
    # e.g. a test worker's leftover threads) are not XLA's ops and would be counted as such
    options = jax.profiler.ProfileOptions()
    options.python_tracer_level = 0
    with tempfile.TemporaryDirectory() as folder:
        with jax.profiler.trace(folder, profiler_options=options):
            start = time.perf_counter()
            for _ in range(steps):
                call()
            wall_s = time.perf_counter() - start
        traces = sorted(Path(folder).rglob("*.xplane.pb"))
        if not traces:
            raise RuntimeError(f"jax.profiler wrote no .xplane.pb under {folder}")
        data = ProfileData.from_file(str(traces[-1]))
    lines = [
        (
            line.name,
            [
                (e.name, e.start_ns, e.duration_ns)
                for e in line.events
                if not e.name.startswith("$")
            ],
        )  # Python functions, should any be traced
        for plane in data.planes
        if plane.name == "/host:CPU"
        for line in plane.lines
        if line.name != "python"  # dispatch and Python, not the compiled step's ops
    ]
    ops = hlo_ops(hlo_text)
    work = {name: op["gflop"] for name, op in ops.items() if op.get("gflop")}
    return _table(xla_thread_times(lines, work), steps, top, wall_s, ops)


def torch_op_times(call: Callable[[], None], steps: int, top: int = 25) -> dict[str, Any]:
    """Per-op self CPU times of PyTorch from ``torch.profiler`` over ``steps`` calls."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        start = time.perf_counter()
        for _ in range(steps):
            call()
        wall_s = time.perf_counter() - start
    ns_by_op = Counter(
        {e.key: e.self_cpu_time_total * 1e3 for e in prof.key_averages()}  # microseconds
    )
    return _table(ns_by_op, steps, top, wall_s)
