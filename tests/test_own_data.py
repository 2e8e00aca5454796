"""Your own data through the command line: configs/text/classify.py on CSV, JSONL and parquet
files made here, with string labels, a held-out file or a held-out fraction."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
GOOD = ["great movie", "loved it", "wonderful acting", "a delight", "superb and moving"]
BAD = ["terrible film", "hated it", "boring plot", "a mess", "awful and dull"]


def _rows(n: int, offset: int = 0) -> list[dict]:
    rows = []
    for i in range(offset, offset + n):
        rows.append({"review": f"{GOOD[i % 5]} number {i}", "stars": "good"})
        rows.append({"review": f"{BAD[i % 5]} number {i}", "stars": "bad"})
    return rows


def _write(rows: list[dict], path: Path) -> Path:
    import pandas as pd

    frame = pd.DataFrame(rows)
    if path.suffix == ".csv":
        frame.to_csv(path, index=False)
    elif path.suffix == ".jsonl":
        frame.to_json(path, orient="records", lines=True)
    else:
        frame.to_parquet(path, index=False)
    return path


def _finetune(workdir: Path, arg: str, *flags: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": ""}
    return subprocess.run(
        [sys.executable, "-m", "experiments.finetune", f"--workdir={workdir}",
         f"--config=configs/text/classify.py:{arg}", *flags],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=900,
    )  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize("suffix", [".csv", ".jsonl", ".parquet"])
def test_your_own_file_trains_from_the_command_line(tmp_path, suffix):
    train = _write(_rows(30), tmp_path / f"train{suffix}")
    held_out = _write(_rows(8, offset=100), tmp_path / f"test{suffix}")
    arg = f"train={train},eval={held_out},text=review,label=stars,smoke"
    # the smoke variant's schedule, but validation every half epoch as the real config does
    out = _finetune(tmp_path / "w", arg, "--config.train.eval_every=0",
                    "--config.train.eval_every_epochs=0.5")  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    assert "data: train 36, val 12, eval 16 examples" in out.stderr
    assert "2 classes: 0=bad, 1=good" in out.stderr
    results = json.loads((tmp_path / "w" / "results.json").read_text())
    assert results["data"]["examples"]["eval"] == 16
    assert json.loads((tmp_path / "w" / "labels.json").read_text()) == {"0": "bad", "1": "good"}
    rows = [json.loads(line) for line in (tmp_path / "w" / "predictions.jsonl").open()]
    assert [r["text"] for r in rows][:2] == ["great movie number 100", "terrible film number 100"]
    assert sum(r["correct"] for r in rows) / len(rows) == pytest.approx(results["eval"]["accuracy"])
    metrics = [json.loads(line) for line in (tmp_path / "w" / "metrics.jsonl").open()]
    val_steps = [m["step"] for m in metrics if m["split"] == "val"]
    assert val_steps[:2] == [0, 2]  # 36 examples / batch 8 = 4 steps an epoch: every 2 steps


def test_a_single_file_holds_out_a_fraction_and_train_is_required(tmp_path):
    from adapt.config import ConfigError
    from adapt.harness.command_line import load_config_file

    path = str(REPO / "configs/text/classify.py")
    config = load_config_file(path, "train=mine.csv,text=review,label=stars")
    assert config.data.eval_fraction == 0.2 and "eval_source" not in config.data
    config = load_config_file(path, "train=data_dir,eval_split=validation")
    assert "eval_fraction" not in config.data and config.data.eval_split == "validation"
    assert config.model.architecture == "classifier" and config.train.eval_every_epochs == 0.5
    with pytest.raises(ConfigError, match="needs train="):
        load_config_file(path, "text=review")
