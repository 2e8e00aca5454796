"""benchmarks/time_to_accuracy.py: both training loops (adapt, transformers + PEFT) run.

``--smoke`` trains each (framework, mode) a few steps on a few Banking77 sentences with a target
of 0 (reached at the first evaluation); the check is that all four processes train, evaluate
and report, that the two frameworks saw the same number of steps, and that they start from the
same model (the same test loss at step 0: the same weights, head and pooling). The real measurement is
``make bench`` (the README quotes it).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_time_to_accuracy_smoke_runs_both_frameworks(tmp_path):
    out = tmp_path / "tta.json"
    run = subprocess.run(
        [sys.executable, "-m", "benchmarks.time_to_accuracy", "--smoke", f"--out={out}"],
        cwd=REPO, capture_output=True, text=True, timeout=1800,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    saved = json.loads(out.read_text())
    results = saved["results"]
    assert sorted(results) == ["full", "lora"]
    for mode, by in results.items():
        for framework in ("adapt", "torch"):
            r = by[framework]
            assert r["reached"] and r["steps"] == 2, (mode, framework, r)
            assert r["train_s"] > 0 and 0.0 <= r["accuracy"] <= 1.0
        # the same weights and head before training: the same test loss at step 0
        starts = [by[f]["history"][0] for f in ("adapt", "torch")]
        assert starts[0]["step"] == starts[1]["step"] == 0
        assert starts[0]["test_loss"] == pytest.approx(starts[1]["test_loss"], abs=1e-5), starts
    rows = {row["mode"]: row for row in saved["table"]}
    assert sorted(rows) == ["full", "lora"]
    for row in rows.values():  # target 0 is reached at the first evaluation after training
        assert row["target"] == 0.0 and row["adapt_steps"] == row["torch_steps"] == 2, row
        assert row["torch_over_adapt"] > 0
    assert "torch/adapt" in run.stdout
    # the table of a saved run, for other targets, without training
    again = subprocess.run(
        [sys.executable, "-m", "benchmarks.time_to_accuracy", f"--from-json={out}",
         "--targets-lora=0.0,1.01"],
        cwd=REPO, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert again.returncode == 0, again.stderr[-3000:]
    assert "lora   1.010           -" in again.stdout, again.stdout
