"""`make demo`'s program runs end to end (its smoke version: a few steps) and prints its table."""

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_demo_smoke_prints_the_comparison(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "experiments.demo", "--smoke", f"--root={tmp_path}"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    lines = out.stdout.splitlines()
    assert any(line.startswith("lora") for line in lines)
    assert any(line.startswith("linear_probe") for line in lines)
    assert (tmp_path / "demo.png").stat().st_size > 10_000
    assert (tmp_path / "lora" / "results.json").exists()
