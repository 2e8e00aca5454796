"""benchmarks/op_profile.py reads per-op times out of each framework's profiler: the op a step
is made of shows up under its own name and kind, profiler bookkeeping does not."""

import jax
import jax.numpy as jnp
import pytest

from benchmarks.op_profile import jax_op_times, torch_op_times


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


def test_torch_ops_are_named_with_their_self_time():
    torch = pytest.importorskip("torch")
    a = torch.ones(256, 256)
    table = torch_op_times(lambda: torch.tanh(a @ a).sum(), steps=2)
    kinds = _names(table, "by_kind")
    assert "aten::mm" in kinds and "aten::tanh" in kinds, kinds
    assert all(row["ms_per_step"] >= 0 for row in table["by_op"])
