"""adapt's XLA defaults: added once, never over a user's choice, and accepted by this jaxlib."""

import os
import subprocess
import sys

from adapt import xla_defaults


def test_apply_appends_the_flags_after_the_users_own():
    env = {"XLA_FLAGS": "--xla_force_host_platform_device_count=8"}
    added = xla_defaults.apply(env)
    assert added == ["--xla_cpu_experimental_ynn_fusion_type="]
    assert env["XLA_FLAGS"].split() == [
        "--xla_force_host_platform_device_count=8",
        "--xla_cpu_experimental_ynn_fusion_type=",
    ]
    assert xla_defaults.apply(env) == []  # idempotent: a second call adds nothing


def test_a_flag_the_user_set_wins_and_the_opt_out_is_honoured():
    env = {"XLA_FLAGS": "--xla_cpu_experimental_ynn_fusion_type=dot"}
    assert xla_defaults.apply(env) == []
    assert env["XLA_FLAGS"] == "--xla_cpu_experimental_ynn_fusion_type=dot"
    env = {xla_defaults.OPT_OUT_ENV: "0"}
    assert xla_defaults.apply(env) == []
    assert "XLA_FLAGS" not in env


def test_this_jaxlib_accepts_the_flags_and_computes_with_them():
    # XLA aborts the process on an unknown flag, so a jaxlib that dropped one of these
    # experimental flags would crash every entry point: catch that here, not in a user's run.
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", xla_defaults.OPT_OUT_ENV)}
    env["JAX_PLATFORMS"] = "cpu"
    code = (
        "from adapt import xla_defaults; assert xla_defaults.apply();"
        "import jax, jax.numpy as jnp; x = jnp.ones((64, 64));"
        "print(float((x @ x).sum()))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == str(64.0**3)
