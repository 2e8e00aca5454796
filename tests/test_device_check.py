"""benchmarks/device_check.py's FLOP count, which its model FLOP utilisation divides by."""

import jax
import jax.numpy as jnp

from benchmarks.device_check import _model_flops


def test_model_flops_counts_a_steps_matmuls_from_its_input_shapes():
    # 2*m*k*n for each matmul; the count must not depend on compiling for the inputs' device
    # (on a GPU the compiled executable's count leaves out cuBLAS calls).
    step = jax.jit(lambda a, b, c: (a @ b) @ c)
    a, b, c = jnp.ones((64, 32)), jnp.ones((32, 16)), jnp.ones((16, 8))
    assert _model_flops(step, a, b, c) == 2 * 64 * 32 * 16 + 2 * 64 * 16 * 8
