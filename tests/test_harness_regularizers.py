"""Harness support for the forgetting and LP-FT/WiSE-FT experiments: EWC and L2-SP in the loss,
source-task tracking with a frozen source head, the WiSE-FT curve, and their config checks.

One SST-2 smoke run exports the "source" model that the Banking77 forgetting runs start from.
"""

import json
import shutil
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from adapt import paths
from adapt.config import ConfigError
from adapt.data import eval_batches
from adapt.harness import loop
from adapt.harness.command_line import load_config_file
from adapt.harness.data_setup import load_split
from adapt.harness.loop import build, evaluate, run
from adapt.harness.model_setup import load_checkpoint

REPO = Path(__file__).resolve().parents[1]
HEAD = r"classifier/.*"


def _config(path, arg="smoke"):
    cfg = load_config_file(str(REPO / path), arg)
    cfg.mesh.axes = [("data", 1)]  # one device: these runs check numbers, not meshes (faster)
    return cfg


def _rows(workdir, split):
    rows = [json.loads(line) for line in (Path(workdir) / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if r["split"] == split]


def _plain(cfg, steps):
    """``cfg`` as a plain run of ``steps`` steps: no selection, early stopping or refit (the
    recipe's), so these tests see the regularizers alone."""
    cfg.train.update(steps=steps, epochs=0.0, select_best=None, early_stopping=0, refit=False,
                     eval_every=0)  # fmt: skip
    cfg.data.val_fraction = 0.0
    return cfg


def _backbone(flat):
    return {p: np.asarray(v, np.float64) for p, v in flat.items() if not p.startswith("classifier")}


@pytest.fixture(autouse=True)
def _repo_cwd(monkeypatch):
    monkeypatch.chdir(REPO)  # configs name vendored data relative to the repo root


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The SST-2 source run (full fine-tuning, exported, with the WiSE-FT curve) and Banking77
    forgetting runs from its export: plain fine-tuning and EWC with a huge strength."""
    root = tmp_path_factory.mktemp("forgetting")
    out = {}
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(REPO)
        sst2 = _config(
            "configs/text/minilm.py", "dataset=sst2,method=full,export=True,wise=True,smoke"
        )
        _plain(sst2, 6)  # no selection: the final weights are the last step's, not the start's
        out["sst2"] = (root / "sst2", sst2, run(sst2, root / "sst2"))
        source = root / "sst2" / "export_native"
        for method, extra in (("full", ""), ("ewc", ",strength=1e12")):
            cfg = _config(
                "configs/text/forgetting.py", f"method={method}{extra},source={source},smoke"
            )
            _plain(cfg, 8).checkpoint.every = 8
            # No global-norm clipping of the backbone: a huge penalty would dominate the norm and
            # scale the task gradient of weakly constrained leaves to nothing, leaving them to
            # coast on Adam's momentum (see adapt/harness/regularize.py).
            cfg.optim.groups.backbone.clip_norm = 0.0
            cfg.export = dict(native=True)
            out[method] = (root / method, cfg, run(cfg, root / method))
    return out


# ----------------------------------------------------------------------------- source task
@pytest.mark.slow
def test_source_eval_at_step_0_is_the_exported_source_model(runs):
    workdir, cfg, results = runs["full"]
    export = Path(cfg.source_task.path)
    module, params, _, _ = load_checkpoint(export, "BertForSequenceClassification")
    data = load_split(
        {**cfg.source_task.data.to_dict(), "tokenizer": "all-MiniLM-L6-v2"},
        "eval",
        seed=0,
        model_path=None,
    )
    correct, nll, count = 0, 0.0, 0
    for batch in eval_batches(data, 16):
        logits = module.apply(
            {"params": params},
            jnp.asarray(batch["input_ids"]),
            attention_mask=jnp.asarray(batch["attention_mask"]),
            token_type_ids=jnp.asarray(batch["token_type_ids"]),
            deterministic=True,
        )["logits"]
        logp = np.asarray(jax.nn.log_softmax(logits.astype(jnp.float32)), np.float64)
        w = batch["weights"] > 0
        labels = batch["labels"][w]
        correct += int(np.sum(np.argmax(logp[w], -1) == labels))
        nll -= float(np.sum(logp[w][np.arange(len(labels)), labels]))
        count += len(labels)
    step0 = results["source_curve"][0]
    assert step0["step"] == 0 and count == 32
    assert step0["accuracy"] == correct / count
    assert step0["loss"] == pytest.approx(nll / count, abs=1e-5)
    # ...and the source run's own final eval of the same examples, before the export:
    assert step0["loss"] == pytest.approx(runs["sst2"][2]["eval"]["loss"], abs=1e-5)
    logged = _rows(workdir, "source")
    assert [r["step"] for r in logged] == [0, 2, 4, 6, 8]
    assert [r["step"] for r in results["source_curve"]] == [0, 2, 4, 6, 8]
    assert results["source_eval"]["loss"] == logged[-1]["loss"]
    assert results["eval"]["accuracy"] >= 0  # the target task (Banking77, 77 classes) ran too


# ---------------------------------------------------------------------------- regularizers
@pytest.mark.slow
def test_ewc_with_a_huge_strength_keeps_the_backbone_at_the_anchor(runs):
    anchor = _backbone(
        paths.flatten(load_checkpoint(Path(runs["full"][1].source_task.path), None)[1])
    )

    def distance(method):
        final = _backbone(
            paths.flatten(load_checkpoint(runs[method][0] / "export_native", None)[1])
        )
        return sum(float(np.sum((final[p] - anchor[p]) ** 2)) for p in anchor if "encoder" in p)

    # Encoder layers only: embedding rows of tokens absent from the Fisher's few examples have
    # zero Fisher, so EWC leaves them free (as it should).
    free, held = distance("full"), distance("ewc")
    assert free > 0
    assert held < 0.2 * free, (held, free)  # measured: 0.036x
    penalties = [r["penalty"] for r in _rows(runs["ewc"][0], "train")]
    assert max(penalties) > 0


@pytest.mark.slow
def test_l2sp_penalty_is_the_squared_distance_to_the_start(tmp_path):
    cfg = _config("configs/text/minilm.py", "dataset=sst2,method=full,smoke")
    cfg.regularizer = dict(kind="l2sp", strength=0.5)
    _plain(cfg, 3).train.log_every = 1
    cfg.checkpoint.update(every=2, keep=2)
    cfg.method.head_init = "fresh"
    run(cfg, tmp_path)
    start = _backbone(paths.flatten(build(cfg).model.base_params))
    manager = ocp.CheckpointManager(
        (tmp_path / "checkpoints").absolute(), item_names=("state", "meta")
    )
    logged = {r["step"]: r["penalty"] for r in _rows(tmp_path, "train")}
    # The penalty logged at step 3 is computed on the weights after step 2 (step 1 has LR 0).
    restored = manager.restore(2, args=ocp.args.Composite(state=ocp.args.StandardRestore()))
    manager.close()
    trained = _backbone(paths.flatten(restored["state"]["trainable"]))
    assert set(trained) == set(start)  # every backbone leaf trains under method=full
    by_hand = 0.5 * 0.5 * sum(float(np.sum((trained[p] - start[p]) ** 2)) for p in start)
    assert by_hand > 0
    assert logged[3] == pytest.approx(by_hand, rel=1e-4)


# ------------------------------------------------------------------------------- WiSE-FT
@pytest.mark.slow
def test_wise_ft_curve_runs_from_the_start_to_the_final_model(runs):
    _, cfg, results = runs["sst2"]
    curve = results["wise_ft"]
    assert [row["alpha"] for row in curve] == pytest.approx([i / 10 for i in range(11)])
    final = {k: v for k, v in curve[-1].items() if k != "alpha"}
    assert final == pytest.approx(results["eval"], abs=1e-6)
    exp = build(cfg)  # the same config rebuilds the start: pretrained encoder, probed head
    loop._fit_head(exp)
    start = evaluate(
        exp.task, exp.forward, exp.model.params, exp.model.model_state, exp.data.eval, 16,
        exp.mesh, exp.data.num_labels,
    )  # fmt: skip
    assert {k: v for k, v in curve[0].items() if k != "alpha"} == pytest.approx(start, abs=1e-6)
    assert curve[0]["loss"] != pytest.approx(curve[-1]["loss"], abs=1e-6)


@pytest.mark.slow
def test_lp_ft_resumed_at_its_stage_boundary_keeps_the_probe_and_the_curve(tmp_path):
    """A run resumed exactly at the LP-FT stage boundary restores the probed head (the next
    stage's start and WiSE-FT's theta_0) from the checkpoint instead of starting from scratch."""
    cfg = _config("configs/text/minilm.py", "dataset=sst2,method=full,wise=True,smoke")
    _plain(cfg, 4).method.update(name="lp_ft", head_init="fresh")  # the two-stage recipe
    cfg.checkpoint.every, cfg.checkpoint.keep = 1, 10
    first = run(cfg, tmp_path)
    assert (tmp_path / "wise_ft_theta0.safetensors").exists()  # multi-stage: theta_0 is saved
    for step_dir in (tmp_path / "checkpoints").iterdir():
        if step_dir.name.isdigit() and int(step_dir.name) > 2:  # "killed" right after step 2
            shutil.rmtree(step_dir)
    again = run(cfg, tmp_path)
    assert again["eval"] == first["eval"]
    assert again["wise_ft"] == first["wise_ft"]


# ---------------------------------------------------------------------------- bad configs
def _sst2_with(**sections):
    cfg = _config("configs/text/minilm.py", "dataset=sst2,method=full,smoke")
    for key, value in sections.items():
        setattr(cfg, key, value)
    return cfg


@pytest.mark.parametrize(
    "sections, match",
    [
        ({"regularizer": dict(kind="ewc", strength=1.0)}, "ewc' needs a source task"),
        ({"regularizer": dict(kind="l2", strength=1.0)}, "regularizer.kind 'l2' is not one of"),
        (
            {"regularizer": dict(kind="l2sp", strength=-1.0)},
            "strength must be a finite number >= 0",
        ),
        ({"wise_ft": dict(alphas=[0.0, 0.5, 1.5])}, r"alphas must lie in \[0, 1\]; got \[1.5\]"),
        ({"wise_ft": dict(alphas=[])}, "non-empty list"),
        ({"source_task": dict(path="third_party", data=None)}, "source_task.data is required"),
        (
            {"source_task": dict(path="third_party", data=dict(kind="text", source="x"))},
            "model.path .* must be source_task.path",
        ),
    ],
    ids=["ewc-no-source", "unknown-kind", "negative", "alpha>1", "no-alphas", "no-data", "path"],
)
def test_bad_sections_are_named_before_anything_is_written(tmp_path, sections, match):
    with pytest.raises(ConfigError, match=match):
        run(_sst2_with(**sections), tmp_path / "w")
    assert not (tmp_path / "w").exists()


@pytest.mark.slow
def test_a_regularizer_that_penalises_nothing_is_an_error(tmp_path):
    cfg = _config("configs/text/minilm.py", "dataset=sst2,method=lora,smoke")
    cfg.regularizer = dict(kind="l2sp", strength=0.1)  # LoRA trains only new leaves
    with pytest.raises(ConfigError, match="penalises nothing"):
        run(cfg, tmp_path / "w")
    assert not (tmp_path / "w").exists()
