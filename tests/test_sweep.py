"""Sweep configs beyond one grid: parts, setup runs referenced by later runs, per-run curves."""

import csv
import json
from pathlib import Path

import ml_collections
import pytest

from adapt.studies import report as R
from adapt.studies import sweep as S

REPO = Path(__file__).resolve().parents[1]


def test_setup_paths_are_substituted_and_unknown_ones_rejected(tmp_path):
    dirs = {"pre": tmp_path / "setup" / "pre"}
    out = S._substitute({"pretrained": "{setup.pre}/export_hf", "seed": 1}, dirs)
    assert out == {"pretrained": f"{(tmp_path / 'setup' / 'pre').absolute()}/export_hf", "seed": 1}
    with pytest.raises(ValueError, match="setup run the sweep does not define"):
        S._substitute({"pretrained": "{setup.other}/x"}, dirs)


def test_metric_paths_and_curves_average_over_seeds():
    results = [
        ({"method": "a", "seed": s}, {"eval": {"accuracy": acc}, "source_eval": {"accuracy": src},
                                      "wise_ft": [{"alpha": 0.0, "accuracy": acc - 0.1},
                                                  {"alpha": 1.0, "accuracy": acc}]})
        for s, (acc, src) in enumerate([(0.8, 0.5), (0.9, 0.7)])
    ]  # fmt: skip
    sweep = ml_collections.ConfigDict(
        dict(group_by=["method"], metrics=["accuracy", "source_eval.accuracy"])
    )
    table = R.rows(sweep, results)
    assert [r["source_eval.accuracy"] for r in table] == [0.5, 0.7]
    assert R.metric_value(results[0][1], "missing.key") is None
    (summary,) = R.summarise(sweep, table, ["method"])
    assert summary["accuracy"] == pytest.approx(0.85)
    assert summary["source_eval.accuracy_std"] == pytest.approx(0.1414, abs=1e-4)
    curve = R.curve_table({"key": "wise_ft", "x": "alpha", "y": "accuracy"}, results, ["method"])
    assert [(e["alpha"], round(e["accuracy"], 6), e["runs"]) for e in curve] == [
        (0.0, 0.75, 2),
        (1.0, 0.85, 2),
    ]


def test_baseline_differences_are_per_budget_and_losses_are_named():
    def entry(method, budget, acc):
        return {
            "method": method,
            "per_class": budget,
            "accuracy": acc,
            "accuracy_std": 0.0,
            "macro_f1": None,
            "macro_f1_std": 0.0,
            "trainable_pct": 1.0,
            "trainable_pct_std": 0.0,
            "wall_seconds": 1.0,
            "wall_seconds_std": 0.0,
            "runs": 3,
        }

    summary = [entry("scratch", 10, 0.2), entry("scratch", 50, 0.6),
               entry("lora", 10, 0.5), entry("lora", 50, 0.55), entry("probe", 50, 0.7)]  # fmt: skip
    keys = ["per_class", "method"]
    sweep = ml_collections.ConfigDict(
        dict(group_by=keys, metrics=["accuracy", "macro_f1"], baseline={"method": "scratch"})
    )
    losses = R.compare_to_baseline(summary, keys, {"method": "scratch"}, ["accuracy", "macro_f1"])
    assert [round(e["accuracy_vs_baseline"], 6) for e in summary] == [0, 0, 0.3, -0.05, 0.1]
    assert all(e["macro_f1_vs_baseline"] is None for e in summary)
    assert [(e["method"], e["per_class"]) for e in losses] == [("lora", 50)]
    text = R.markdown(sweep, summary, keys, losses)
    assert "| accuracy vs scratch |" in text and "| -0.0500 |" in text
    assert text.rstrip().endswith(
        "Rows not above method=scratch on accuracy: per_class=50; method=lora"
    )
    assert "Every row is above" in R.markdown(sweep, summary, keys, [])
    with pytest.raises(ValueError, match="not among the sweep's rows"):
        R.compare_to_baseline(summary, keys, {"method": "nothing"}, ["accuracy"])
    with pytest.raises(ValueError, match="one group_by key"):
        R.compare_to_baseline(summary, keys, {"seed": 0}, ["accuracy"])


def test_plot_x_axis_follows_x_order_and_x_labels():
    spec = ml_collections.ConfigDict(
        dict(x="per_class", series="method", y="accuracy", x_order=[10, 50, 0],
             x_labels={"0": "all"})
    )  # fmt: skip
    assert R.x_axis(spec, [0, 10, 10]) == ([10, 0], ["10", "all"])
    assert R.x_axis(spec, [100, 50, 0, 10, 5]) == (
        [10, 50, 0, 5, 100],
        ["10", "50", "all", "5", "100"],
    )
    assert R.x_axis({"x": "method"}, ["b", "a"]) == (["a", "b"], ["a", "b"])


def test_unknown_sweep_keys_are_rejected_before_anything_runs(tmp_path):
    good = dict(name="s", base="configs/llm/stories_lora.py", grid={"method": ["lora"]},
                group_by=["method"], metrics=["perplexity"],
                plot={"x": "method", "series": "method", "y": "perplexity"})  # fmt: skip
    S.check_keys(ml_collections.ConfigDict(good))
    for where, bad in [
        ("sweep", {**good, "paralel": 2}),
        ("plot", {**good, "plot": {**good["plot"], "xorder": [1]}}),
        ("curve", {**good, "curves": [{"key": "wise_ft", "x": "alpha", "why": "accuracy"}]}),
    ]:
        with pytest.raises(ValueError, match=f"unknown {where} key"):
            S.run_sweep(ml_collections.ConfigDict(bad), tmp_path / "runs", tmp_path / "out")
    assert not (tmp_path / "runs").exists()


@pytest.mark.slow
def test_parts_run_as_separate_grids_with_a_part_column(tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    sweep = ml_collections.ConfigDict(
        dict(
            name="two_parts",
            parts=[
                dict(name=n, base="configs/llm/stories_lora.py", grid={"method": [m]},
                     fixed={"smoke": True})
                for n, m in [("lora_part", "lora"), ("full_part", "full")]
            ],
            group_by=["method"],
            metrics=["perplexity"],
            plot={"x": "method", "series": "method", "y": "perplexity"},
            parallel=2,
        )
    )  # fmt: skip
    summary = S.run_sweep(sweep, tmp_path / "runs", tmp_path / "out")
    assert [(s["part"], s["method"], s["runs"]) for s in summary] == [
        ("lora_part", "lora", 1),
        ("full_part", "full", 1),
    ]
    for part, method in [("lora_part", "lora"), ("full_part", "full")]:
        workdir = tmp_path / "runs" / part / f"smoke-True_method-{method}"
        assert json.loads((workdir / "results.json").read_text())["method"] == method
        assert not (workdir / "checkpoints").exists()  # dropped once results.json exists
    with open(tmp_path / "out" / "runs.csv") as f:
        assert [r["part"] for r in csv.DictReader(f)] == ["lora_part", "full_part"]
    assert (tmp_path / "out" / "plot.png").stat().st_size > 0
    assert (tmp_path / "runs" / "jax_cache").is_dir()  # the runs shared a compilation cache
    with pytest.raises(ValueError, match="either parts or base/grid"):
        bad = ml_collections.ConfigDict(dict(sweep))
        bad.base = "x.py"
        S.parts(bad)


@pytest.mark.parametrize(
    "name",
    sorted(p.stem for p in (REPO / "configs" / "sweeps").glob("*.py") if p.stem != "__init__"),
)
@pytest.mark.parametrize("arg", [None, "smoke"])
def test_every_point_of_every_sweep_config_builds_a_valid_run_config(name, arg, monkeypatch):
    """Each run a sweep would launch gets a config its base accepts (arguments, schema), so a typo
    fails here rather than an hour into the sweep. Nothing is trained."""
    from adapt.config import RunConfig
    from adapt.harness import source_task
    from adapt.harness.command_line import load_config_file
    from adapt.harness.validation import check_run

    monkeypatch.chdir(REPO)
    monkeypatch.setattr(source_task, "check", lambda config: None)  # setup runs do not exist
    sweep = load_config_file(f"configs/sweeps/{name}.py", arg)
    S.check_keys(sweep)
    setup_dirs = {k: Path("/nonexistent") / k for k in (sweep.get("setup") or {})}
    for spec in (sweep.get("setup") or {}).values():
        check_run(
            RunConfig.parse(
                load_config_file(spec["base"], S.arg_string(dict(spec.get("args") or {})))
            )
        )
    count = 0
    for part in S.parts(sweep):
        for point in S.points(part["grid"], part.get("fixed")):
            args = S._substitute(point, setup_dirs)
            run_cfg = RunConfig.parse(load_config_file(part["base"], S.arg_string(args)))
            check_run(run_cfg)
            per_class, data = run_cfg.data.examples_per_class, run_cfg.data
            classes = data.classes or data.label_names
            if per_class and classes:  # batches drop the remainder: one batch must fit
                assert run_cfg.train.batch_size <= per_class * len(classes), (part["name"], point)
            count += 1
    assert count >= 6  # at least two methods x three seeds
    for key, value in dict(sweep.get("baseline") or {}).items():  # a baseline the grid runs
        assert key in sweep.group_by
        assert all(value in p["grid"].get(key, []) for p in S.parts(sweep))
    assert set(sweep.group_by) <= {
        k for p in S.parts(sweep) for k in [*p["grid"], *(p.get("fixed") or {})]
    }
