"""Task objects: the registry agrees with the config, the regression task's metrics over batches
equal its metrics over the whole set, and regression runs from a config end to end."""

import json
import os
import subprocess
import sys
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest

from adapt import config as run_config
from adapt import sharding, tasks
from adapt.data import ClassificationData, DataError
from adapt.harness.evaluation import evaluate, predict
from adapt.harness.selection import LOWER_IS_BETTER
from adapt.tasks.classification import classification_metrics
from adapt.tasks.regression import regression_metrics

REPO = Path(__file__).resolve().parents[1]


def test_registry_and_config_name_the_same_tasks():
    assert set(run_config.TASKS) == set(tasks.TASKS)
    assert {"mse", "perplexity", "loss"} <= set(LOWER_IS_BETTER)
    assert "pearson" not in LOWER_IS_BETTER and "accuracy" not in LOWER_IS_BETTER
    with pytest.raises(tasks.UnknownTaskError, match="unknown task 'ranking'"):
        tasks.get("ranking")


def test_reading_a_config_imports_no_jax():
    code = "import sys, adapt.config; print('jax' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert out.stdout.strip() == "False", out.stderr


def _forward(params, model_state, batch, train, rng):
    return {"logits": batch["x"] @ params["w"]}, model_state


@pytest.mark.parametrize("regression", [True, False])
def test_metrics_over_padded_batches_equal_metrics_over_the_whole_set(regression):
    """21 examples in batches of 8 on 8 fake devices: the filler rows of the last batch count
    for nothing, and the per-example regression values come back in order."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(21, 3)).astype(np.float32)
    if regression:
        labels, names, w = rng.normal(size=21), [], np.array([[1.0], [-2.0], [0.5]], np.float32)
    else:
        labels, names, w = rng.integers(0, 4, 21), list("abcd"), rng.normal(size=(3, 4))
    data = ClassificationData({"x": x}, labels, names, regression)
    params = {"w": jnp.asarray(w, jnp.float32)}
    mesh = sharding.make_mesh([("data", -1)])
    task = tasks.get("regression" if regression else "classification")
    got = evaluate(task, _forward, params, {}, data, 8, mesh, None if regression else 4)
    logits = x @ w
    if regression:
        want = regression_metrics(logits[:, 0], data.labels)
        assert got["loss"] == pytest.approx(want["mse"], rel=1e-6)
    else:
        want = classification_metrics(logits.argmax(-1), data.labels, 4)
    for key, value in want.items():
        assert got[key] == pytest.approx(value, rel=1e-5, abs=1e-6), key
    predicted, _ = predict(_forward, params, {}, data, 8, mesh, task)
    expected = logits[:, 0] if regression else logits.argmax(-1)
    np.testing.assert_allclose(predicted, expected, rtol=1e-6)


def test_regression_data_refuses_what_needs_classes():
    data = ClassificationData({"x": np.zeros((3, 1))}, np.array([0.5, 1.0, 2.0]), [], True)
    assert data.labels.dtype == np.float32 and data.num_classes == 0
    with pytest.raises(DataError, match="no classes"):
        data.class_counts()
    with pytest.raises(DataError, match="must be finite"):
        ClassificationData({"x": np.zeros((2, 1))}, np.array([0.5, np.nan]), [], True)


def _problems(**changes):
    from adapt.config import ConfigError, RunConfig
    from adapt.harness.validation import check_run

    base = {"task": "regression", "model": {"path": "m"}, "data": {"kind": "text", "source": "s"},
            "method": {"name": "full"}, "train": {"steps": 1}}  # fmt: skip
    for key, value in changes.items():
        base[key] = {**base.get(key, {}), **value} if isinstance(value, dict) else value
    with pytest.raises(ConfigError) as err:
        check_run(RunConfig.parse(base))
    return str(err.value)


def test_regression_config_problems_are_named():
    assert "task 'regression' reads data kind 'text', not 'image'" in _problems(
        data={"kind": "image"}
    )
    assert "probe fits a logistic regression over classes" in _problems(
        method={"head_init": "probe"}
    )
    assert "data kind 'lm' is for task 'causal_lm'" in _problems(
        task="classification", data={"kind": "lm"}
    )


def _rows(n: int, offset: int = 0) -> list[str]:
    words = ["good", "fine", "great", "nice"]
    lines = []
    for i in range(offset, offset + n):
        k = i % 4
        lines.append(f'"{" ".join(words[:k]) or "plain"} item {i}",{k * 0.5 + 0.1 * (i % 3)}')
    return lines


@pytest.mark.slow
def test_regression_runs_from_the_command_line(tmp_path):
    """configs/text/classify.py with task=regression on a CSV of scores: the run selects by
    validation Pearson, reports the regression metrics and writes every prediction."""
    (tmp_path / "train.csv").write_text("\n".join(["sentence,score", *_rows(48)]) + "\n")
    (tmp_path / "test.csv").write_text("\n".join(["sentence,score", *_rows(12, 100)]) + "\n")
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": ""}
    arg = (f"task=regression,train={tmp_path / 'train.csv'},eval={tmp_path / 'test.csv'},"
           "text=sentence,label=score,method=full,smoke")  # fmt: skip
    out = subprocess.run(
        [sys.executable, "-m", "experiments.finetune", f"--workdir={tmp_path / 'w'}",
         f"--config=configs/text/classify.py:{arg}"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    results = json.loads((tmp_path / "w" / "results.json").read_text())
    assert {"mse", "mae", "rmse", "r2", "pearson", "spearman"} <= set(results["eval"])
    assert results["eval"]["loss"] == pytest.approx(results["eval"]["mse"])
    assert "pearson" in results["val"] and "selected_step" in results
    rows = [json.loads(line) for line in (tmp_path / "w" / "predictions.jsonl").open()]
    assert len(rows) == 12 and rows[0]["text"] == "plain item 100"
    errors = np.array([r["prediction"] - r["target"] for r in rows])
    assert np.mean(errors**2) == pytest.approx(results["eval"]["mse"], rel=1e-3)

    (tmp_path / "bad.csv").write_text("sentence,score\nfine,0.5\nodd,high\n")
    arg = arg.replace(str(tmp_path / "train.csv"), str(tmp_path / "bad.csv"))
    bad = subprocess.run(
        [sys.executable, "-m", "experiments.finetune", f"--workdir={tmp_path / 'w2'}",
         f"--config=configs/text/classify.py:{arg}"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert "row 1 of column 'score' is 'high', not a number" in bad.stderr
    assert not (tmp_path / "w2" / "results.json").exists()
