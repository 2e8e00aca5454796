"""What both sides of ``benchmarks/vs_pytorch.py`` share: the fixed batch and head, how a step is
timed, and the process's thread count and peak memory."""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

MODES = ("forward", "full", "lora")
BATCH, LENGTH, LABELS = 32, 128, 2
LR, WEIGHT_DECAY = 1e-4, 0.01
PEAK_N = 2048


def make_batch() -> dict[str, np.ndarray]:
    """The fixed batch both frameworks see: random token ids, every position real."""
    rng = np.random.default_rng(0)
    return {
        "ids": rng.integers(1000, 30000, size=(BATCH, LENGTH)).astype(np.int32),
        "mask": np.ones((BATCH, LENGTH), np.int32),
        "labels": rng.integers(0, LABELS, size=BATCH).astype(np.int32),
    }


def head_weights(hidden: int) -> tuple[np.ndarray, np.ndarray]:
    """Fixed classifier weights (in, out) and bias, so both frameworks compute the same logits."""
    rng = np.random.default_rng(1)
    return (0.02 * rng.standard_normal((hidden, LABELS))).astype(np.float32), np.zeros(
        LABELS, np.float32
    )


def num_threads() -> int:
    """The cores this process may use: what XLA's CPU thread pool sizes itself to."""
    return len(os.sched_getaffinity(0))


def peak_rss_mb() -> float:
    """VmHWM: the peak resident set of this process, in MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def time_calls(call: Callable[[], None], warmup: int, steps: int) -> dict[str, Any]:
    """First call, ``warmup`` more, then ``steps`` timed calls (each ends synchronised)."""
    t0 = time.perf_counter()
    call()
    first = time.perf_counter() - t0
    for _ in range(warmup):
        call()
    times, cpu = [], []
    for _ in range(steps):
        t0, c0 = time.perf_counter(), time.process_time()
        call()
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return {
        "first_s": first,
        "times_s": times,
        "median_s": statistics.median(times),
        "median_cpu_s": statistics.median(cpu),  # all threads; less sensitive to other load
    }


def best_time(fn: Callable[[], None], reps: int) -> float:
    """Fastest of ``reps`` calls after one warm-up: a peak is what the machine *can* do."""
    fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def first_processor(cpuinfo: str | None = None) -> dict[str, str]:
    """The fields of the first processor in /proc/cpuinfo (or in ``cpuinfo``); empty elsewhere.
    One parser for the model name, family, model and flags that results record."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            cpuinfo = ""
    fields: dict[str, str] = {}
    for line in cpuinfo.splitlines():
        if not line.strip():
            if fields:  # the first processor is enough
                break
            continue
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    return fields


def cpu_name(cpuinfo: str | None = None) -> str:
    """The CPU's model name ("unknown" where there is none): results name their machine."""
    return first_processor(cpuinfo).get("model name", "unknown")


# The instruction sets that decide which matmul kernels XLA and PyTorch can use: two hosts that
# /proc/cpuinfo both calls "AMD EPYC" have differed 3.4x in fp32 matmul peak (AVX2 only vs
# AVX-512 with bf16 units), so results name these as well as the model name.
ISA_FLAGS = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "amx_tile", "amx_bf16")


def cpu_kind(cpuinfo: str | None = None) -> dict[str, Any]:
    """The CPU's family, model and the matmul-relevant ISA flags it has (from /proc/cpuinfo):
    ``{"family": "23", "model": "1", "isa": ["avx2", "fma"]}``; empty fields elsewhere."""
    fields = first_processor(cpuinfo)
    present = set(fields.get("flags", "").split())
    return {
        "family": fields.get("cpu family", ""),
        "model": fields.get("model", ""),
        "isa": [flag for flag in ISA_FLAGS if flag in present],
    }
