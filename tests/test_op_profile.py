"""benchmarks/op_profile.py reads per-op times out of each framework's profiler: the op a step
is made of shows up under its own name and kind, profiler bookkeeping does not."""

import threading

import jax
import jax.numpy as jnp
import pytest

from benchmarks.op_profile import (
    UNATTRIBUTED,
    hlo_ops,
    jax_op_times,
    torch_op_times,
    xla_thread_times,
)

START, STOP = "ThreadpoolListener::StartRegion", "ThreadpoolListener::StopRegion"


def _names(table, key):
    return [row["op"] for row in table[key]]


def test_xla_thunks_of_a_jitted_step_are_named_per_op_and_per_kind():
    step = jax.jit(lambda a: jnp.tanh(a @ a).sum())
    a = jnp.ones((256, 256))
    step(a).block_until_ready()
    table = jax_op_times(lambda: step(a).block_until_ready(), steps=2)
    kinds = _names(table, "by_kind")
    assert table["steps"] == 2 and table["total_ms_per_step"] > 0
    assert any("dot" in k for k in kinds), kinds  # the matmul thunk, whatever XLA numbers it
    assert not any(k.startswith(("ThreadpoolListener", "ThunkExecutor", "end: ")) for k in kinds)
    assert not any("PjitFunction" in k for k in kinds)  # the Python dispatch line is left out


def test_pool_time_goes_to_the_dot_in_flight_and_waits_count_for_nothing():
    # The launching thread hands dot.1 to the pool and blocks; two pool threads work on it until
    # its end marker (t=56), one also runs fusion.3. Times in ns.
    client = [("dot.1", 0, 10), ("ThunkExecutor::Execute (wait for completion)", 10, 90),
              (START, 0, 0), (STOP, 100, 0)]  # fmt: skip
    pool_a = [(START, 5, 0), (STOP, 55, 0), ("end: dot.1", 56, 0),
              (START, 58, 0), ("fusion.3", 60, 10), (STOP, 72, 0)]  # fmt: skip
    pool_b = [(START, 20, 0), (STOP, 80, 0)]
    times = xla_thread_times([("client", client), ("a", pool_a), ("b", pool_b)])
    assert times["dot.1"] == 10 + 50 + 36  # its launch, a's [5, 55), b's [20, 56)
    assert times["fusion.3"] == 10
    assert times[UNATTRIBUTED] == 24 + 4  # b's [56, 80), a's [58, 72) around fusion.3
    assert "ThunkExecutor::Execute (wait for completion)" not in times


def test_pool_time_is_shared_by_concurrent_dots_and_a_lost_end_marker_lasts_to_the_next_launch():
    client = [("dot.1", 0, 2), ("dot.2", 10, 2), ("dot.3", 40, 2), ("end: dot.1", 30, 0),
              ("end: dot.3", 60, 0)]  # fmt: skip  # dot.2's marker is missing
    pool = [(START, 0, 0), (STOP, 60, 0)]
    times = xla_thread_times([("client", client), ("pool", pool)])
    # pool [0, 60) minus nothing on its own line: [0,10) dot.1; [10,30) dot.1 and dot.2 half
    # each; [30,40) dot.2; [40,60) dot.3
    assert times["dot.1"] == 2 + 10 + 10
    assert times["dot.2"] == 2 + 10 + 10
    assert times["dot.3"] == 2 + 20
    assert times[UNATTRIBUTED] == 0


def test_pool_time_of_concurrent_dots_is_shared_by_their_work_when_known():
    client = [("dot.1", 0, 0), ("dot.2", 0, 0), ("end: dot.1", 40, 0), ("end: dot.2", 40, 0)]
    pool = [(START, 0, 0), (STOP, 40, 0)]
    times = xla_thread_times([("client", client), ("pool", pool)], {"dot.1": 3.0, "dot.2": 1.0})
    assert times["dot.1"] == 30 and times["dot.2"] == 10
    half = xla_thread_times([("client", client), ("pool", pool)], {"dot.1": 3.0})  # one unknown
    assert half["dot.1"] == 20 and half["dot.2"] == 20


def test_a_large_dot_is_credited_with_the_pool_time_it_takes():
    # the matmul's thunk event is only its hand-off to XLA's pool: without the pool's busy
    # time the dot showed a few per cent of this step; with it, most of it
    step = jax.jit(lambda a: jnp.tanh(a @ a).sum())
    a = jnp.ones((1024, 1024))
    step(a).block_until_ready()
    # another Python thread of the process waiting meanwhile (a long-lived test worker has such
    # threads): its waits once showed up as the biggest "op" and left the dot 12%
    stop = threading.Event()

    def wait_until_stopped() -> None:
        while not stop.wait(0.01):
            pass

    waiter = threading.Thread(target=wait_until_stopped)
    waiter.start()
    try:
        table = jax_op_times(lambda: step(a).block_until_ready(), steps=3)
    finally:
        stop.set()
        waiter.join()
    assert not [row for row in table["by_kind"] if row["op"].startswith("$")], table["by_kind"]
    shares = {row["op"]: row["share"] for row in table["by_kind"]}
    dot = sum(share for kind, share in shares.items() if "dot" in kind)
    assert dot > 0.7, table["by_kind"]
    assert table["wall_ms_per_step"] > 0


def test_each_xla_op_says_what_it_computes_and_its_flops():
    step = jax.jit(lambda x, w: jnp.tanh(x @ w))
    x, w = jnp.ones((64, 48)), jnp.ones((48, 40))
    compiled = step.lower(x, w).compile()
    dots = [(name, op) for name, op in hlo_ops(compiled.as_text()).items() if "gflop" in op]
    assert len(dots) == 1, dots
    name, op = dots[0]
    assert op["hlo"] == "f32[64,40]{1,0} dot(f32[64,48]{1,0}, f32[48,40]{1,0}) contracting 1|0", op
    assert op["gflop"] == 2 * 64 * 48 * 40 / 1e9
    assert "dot_general" in op["source"]  # JAX's op_name: where in the program it came from
    table = jax_op_times(
        lambda: compiled(x, w).block_until_ready(), steps=1, hlo_text=compiled.as_text()
    )
    assert any(row.get("gflop") == op["gflop"] for row in table["by_op"]), table["by_op"]
    (shape,) = table["dots_by_shape"]
    assert shape["dot"] == op["hlo"] and shape["count"] == 1 and shape["gflop_per_thread_s"] > 0


def test_torch_ops_are_named_with_their_self_time():
    torch = pytest.importorskip("torch")
    a = torch.ones(256, 256)
    table = torch_op_times(lambda: torch.tanh(a @ a).sum(), steps=2)
    kinds = _names(table, "by_kind")
    assert "aten::mm" in kinds and "aten::tanh" in kinds, kinds
    assert all(row["ms_per_step"] >= 0 for row in table["by_op"])
