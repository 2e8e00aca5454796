"""Budgets in epochs, the validation split carved from training data, best-model selection,
early stopping, refit, and the sweep's choice of a value on validation data."""

import json
from pathlib import Path

import numpy as np
import pytest

from adapt.data import ClassificationData
from adapt.harness.command_line import load_config_file
from adapt.harness.data_setup import VAL_SALT, holdout
from adapt.harness.loop import run

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _repo_cwd(monkeypatch):
    monkeypatch.chdir(REPO)


def _lm(**train):
    """stories260K LoRA: 12 packed rows after the eval hold-out; a quarter more for validation."""
    cfg = load_config_file("configs/llm/stories_lora.py", "smoke")
    cfg.data.val_fraction = 0.25  # 3 rows: 9 train rows, batches of 8
    cfg.train.update(log_every=1, **train)
    return cfg


def _rows(workdir, split):
    lines = (Path(workdir) / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["split"] == split]


def test_the_validation_split_is_stratified_disjoint_and_fixed_by_its_seed():
    labels = np.repeat(np.arange(3), [10, 5, 2])
    data = ClassificationData({"x": np.arange(17)}, labels, ["a", "b", "c"])
    train, val = holdout(data, 0.2, seed=0, salt=VAL_SALT)
    assert sorted([*train.inputs["x"], *val.inputs["x"]]) == list(range(17))
    assert np.bincount(val.labels, minlength=3).tolist() == [2, 1, 1]  # >= 1 of each class
    again, _ = holdout(data, 0.2, seed=0, salt=VAL_SALT)
    np.testing.assert_array_equal(again.inputs["x"], train.inputs["x"])
    other, _ = holdout(data, 0.2, seed=1, salt=VAL_SALT)
    assert not np.array_equal(other.inputs["x"], train.inputs["x"])


@pytest.mark.slow
def test_epochs_set_the_steps_and_the_best_validation_weights_are_the_result(tmp_path):
    cfg = _lm(steps=0, epochs=6.0, eval_every=1, select_best="loss")
    results = run(cfg, tmp_path)
    assert results["steps"] == 6  # 9 training rows: one batch of 8 per epoch
    val = _rows(tmp_path, "val")
    assert [r["step"] for r in val] == list(range(7))  # the start and every step
    best = min(val, key=lambda r: r["loss"])
    assert results["selected_step"] == best["step"]
    assert results["val"]["loss"] == pytest.approx(best["loss"])
    meta = json.loads((tmp_path / "best" / "meta.json").read_text())
    assert meta["step"] == best["step"]
    assert not _rows(tmp_path, "eval")[:-1]  # the eval (test) split only once, at the end


@pytest.mark.slow
def test_early_stopping_ends_the_run_after_its_patience(tmp_path):
    cfg = _lm(steps=10, eval_every=1, select_best="loss", early_stopping=2)
    cfg.optim.groups.lora.lr = 0.0  # nothing improves after the start
    cfg.optim.default.lr = 0.0
    results = run(cfg, tmp_path)
    assert results["stopped_early"] and results["steps"] == 2 and results["selected_step"] == 0


@pytest.mark.slow
def test_a_preempted_selecting_run_resumes_to_the_same_choice(tmp_path, monkeypatch):
    from adapt.checkpoint import PreemptionFlag

    cfg = _lm(steps=6, eval_every=1, select_best="loss")
    cfg.checkpoint.every = 1
    reference = run(cfg, tmp_path / "ref")
    calls = {"n": 0}

    def stop_at_three(self):
        calls["n"] += 1
        return calls["n"] == 3

    with monkeypatch.context() as m:
        m.setattr(PreemptionFlag, "should_stop", stop_at_three)
        assert run(cfg, tmp_path / "run")["preempted"]
    resumed = run(cfg, tmp_path / "run")
    assert resumed["selected_step"] == reference["selected_step"]
    assert resumed["eval"]["loss"] == pytest.approx(reference["eval"]["loss"], rel=1e-6)


@pytest.mark.slow
def test_refit_trains_again_on_train_and_validation_for_the_chosen_epochs(tmp_path):
    cfg = _lm(steps=4, eval_every=1, select_best="loss", refit=True)
    results = run(cfg, tmp_path)
    chosen = results["selected_step"]
    assert results["refit"]["selected_epochs"] == chosen  # one batch per epoch
    assert results["refit"]["steps"] == chosen  # 12 rows: still one batch of 8 per epoch
    refit = json.loads((tmp_path / "refit" / "config.json").read_text())
    assert refit["data"]["val_fraction"] == 0.0 and refit["train"]["steps"] == chosen
    assert json.loads((tmp_path / "results.json").read_text())["eval"] == results["eval"]


def test_selection_without_a_validation_split_is_refused(tmp_path):
    from adapt.config import ConfigError

    cfg = load_config_file("configs/llm/stories_lora.py", "smoke")
    cfg.train.update(eval_every=1, select_best="loss")
    with pytest.raises(ConfigError, match="tuning on the test set"):
        run(cfg, tmp_path / "w")
    assert not (tmp_path / "w").exists()


def test_the_sweep_chooses_on_validation_and_runs_the_other_seeds_at_the_choice(
    tmp_path, monkeypatch
):
    """Orchestration only (no training): a fake run reports a validation accuracy that peaks at
    lr_scale 1 and an eval accuracy that would have preferred 3 (never consulted)."""
    import ml_collections

    from adapt.studies import sweep as S

    made = []

    def fake_run_point(base, point, workdir, *args, **kwargs):
        made.append(dict(point))
        scale = point.get("lr_scale", 1.0)
        val = {0.3: 0.5, 1.0: 0.8, 3.0: 0.6}[scale] if point["method"] == "lora" else 0.7
        test = {0.3: 0.4, 1.0: 0.7, 3.0: 0.9}[scale] if point["method"] == "lora" else 0.65
        return {"eval": {"accuracy": test + 0.01 * point["seed"]}, "val": {"accuracy": val},
                "trainable_pct": 1.0, "wall_seconds": 1.0}  # fmt: skip

    monkeypatch.setattr(S, "run_point", fake_run_point)
    sweep = ml_collections.ConfigDict(dict(
        name="sel", base="configs/text/minilm.py",
        grid={"method": ["logistic_regression", "lora"], "seed": [0, 1, 2]},
        select=dict(by="val.accuracy", grid={"lr_scale": [0.3, 1.0, 3.0]}, seeds=[0],
                    skip={"method": ["logistic_regression"]}),
        group_by=["method"], metrics=["accuracy", "val.accuracy"],
        baseline={"method": "logistic_regression"},
    ))  # fmt: skip
    summary = S.run_sweep(sweep, tmp_path / "runs", tmp_path / "out")
    lora_runs = [p for p in made if p["method"] == "lora"]
    assert sorted((p["seed"], p["lr_scale"]) for p in lora_runs) == [
        (0, 0.3), (0, 1.0), (0, 3.0), (1, 1.0), (2, 1.0)
    ]  # fmt: skip
    assert all("lr_scale" not in p for p in made if p["method"] == "logistic_regression")
    (lora,) = [e for e in summary if e["method"] == "lora"]
    assert lora["lr_scale"] == 1.0 and lora["runs"] == 3
    assert lora["accuracy"] == pytest.approx(0.71)  # seeds 0, 1, 2 at the chosen value
    assert lora["accuracy_vs_baseline"] == pytest.approx(0.05)  # baseline: 0.65, 0.66, 0.67
    selection = (tmp_path / "out" / "selection.csv").read_text().splitlines()
    assert len(selection) == 4 and selection[0].startswith("group,part,lr_scale,val.accuracy")
    assert sum(line.endswith(",True") for line in selection) == 1
    assert "val.accuracy" in (tmp_path / "out" / "summary.md").read_text()
