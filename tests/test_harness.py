"""The experiment harness end to end: configs' smoke runs, meshes, resume, bad input."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import pytest

from adapt.checkpoint import WorkdirMismatchError
from adapt.config import ConfigError
from adapt.data import DataError
from adapt.harness.command_line import load_config_file
from adapt.harness.loop import run

REPO = Path(__file__).resolve().parents[1]


def _config(path, arg="smoke"):
    return load_config_file(str(REPO / path), arg)


def _losses(workdir):
    rows = [json.loads(line) for line in (Path(workdir) / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in rows if r["split"] == "train"]


def _snapshot(path: Path):
    if not path.exists():
        return None
    return sorted(
        (str(p.relative_to(path)), p.stat().st_mtime_ns, p.stat().st_size) for p in path.rglob("*")
    )


@pytest.fixture(autouse=True)
def _repo_cwd(monkeypatch):
    monkeypatch.chdir(REPO)  # configs name vendored data relative to the repo root


# ------------------------------------------------------------------------------- smoke runs
@pytest.mark.parametrize(
    "path, arg",
    [
        ("configs/text/minilm.py", "dataset=sst2,smoke"),
        ("configs/text/minilm.py", "dataset=banking77,smoke"),
        ("configs/vision/fmnist_resnet20.py", "smoke"),
        ("configs/vision/fmnist_vit.py", "smoke"),
        ("configs/llm/stories_lora.py", "smoke"),
        ("configs/llm/stories_sst2_qlora.py", "smoke"),
    ],
)
@pytest.mark.slow
def test_config_smoke_runs_end_to_end(tmp_path, path, arg):
    results = run(_config(path, arg), tmp_path)
    assert results["steps"] == 4
    for name in ("results.json", "metrics.jsonl", "learning_curves.png", "config.json"):
        assert (tmp_path / name).exists(), name
    assert list((tmp_path / "tb").rglob("events.out.tfevents.*"))
    if "accuracy" in results["eval"]:
        assert 0.0 <= results["eval"]["accuracy"] <= 1.0
        _check_predictions(tmp_path, results)
    else:
        assert 1.0 < results["eval"]["perplexity"] < 512  # below uniform over the vocabulary
    assert results["eval"]["loss"] == pytest.approx(results["eval"]["loss"])  # not NaN


def _check_predictions(workdir, results):
    """labels.json names every class; predictions.jsonl has one line per eval example and
    recomputes the reported accuracy."""
    labels = json.loads((workdir / "labels.json").read_text())
    assert len(labels) == results["data"]["classes"] and labels["0"]
    rows = [json.loads(line) for line in (workdir / "predictions.jsonl").read_text().splitlines()]
    assert [r["index"] for r in rows] == list(range(results["data"]["examples"]["eval"]))
    assert {r["label"] for r in rows} <= set(labels.values())
    assert all(r["correct"] == (r["label"] == r["prediction"]) for r in rows)
    assert all(0 < r["probability"] <= 1 for r in rows)
    accuracy = sum(r["correct"] for r in rows) / len(rows)
    assert accuracy == pytest.approx(results["eval"]["accuracy"], abs=1e-9)


@pytest.mark.slow
def test_a_run_reports_its_data_and_warns_about_truncation(tmp_path, capfd, caplog):
    config = _config("configs/text/minilm.py", "dataset=sst2,method=linear_probe,smoke")
    config.data.max_length = 8  # most SST-2 dev sentences are longer than 6 word pieces
    results = run(config, tmp_path)
    err = capfd.readouterr().err
    assert "data: train 48, eval 32 examples" in err
    assert "data: 2 classes: 0=negative, 1=positive" in err
    share = results["data"]["truncated"]["eval"]
    assert share > 0.5 and f"{100 * share:.1f}% of the eval examples are cut" in err
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert any("eval examples are longer than data.max_length=8" in m for m in warned)
    _check_predictions(tmp_path, results)
    texts = [json.loads(line)["text"] for line in (tmp_path / "predictions.jsonl").open()]
    assert len(set(texts)) > 1 and all(texts)


@pytest.mark.slow
def test_a_hugging_face_export_carries_its_tokenizer(tmp_path):
    transformers = pytest.importorskip("transformers")
    from tokenizers import Tokenizer

    from adapt import weights

    config = _config("configs/text/minilm.py", "dataset=sst2,method=bitfit,smoke")
    config.model.pooling = "pooler"  # BertForSequenceClassification's own head: exportable
    config.export = {"hf": True}
    run(config, tmp_path)
    export = tmp_path / "export_hf"
    assert (export / "tokenizer.json").exists() and (export / "vocab.txt").exists()
    text = "A gripping, if overlong, thriller."
    expected = Tokenizer.from_file(str(weights.resolve("all-MiniLM-L6-v2") / "tokenizer.json"))
    expected.no_padding()  # the shipped tokenizer.json pads to 128; compare the tokens
    loaded = transformers.AutoTokenizer.from_pretrained(export)
    assert loaded(text)["input_ids"] == expected.encode(text).ids
    model = transformers.AutoModelForSequenceClassification.from_pretrained(export)
    assert model.config.num_labels == 2


@pytest.mark.slow
@pytest.mark.parametrize("method", ["lora", "dora", "ia3"])
def test_export_peft_at_the_end_of_a_run_loads_in_peft_with_the_same_outputs(tmp_path, method):
    torch = pytest.importorskip("torch")
    peft = pytest.importorskip("peft")
    transformers = pytest.importorskip("transformers")
    config = _config("configs/text/minilm.py", f"dataset=sst2,method={method},smoke")
    config.model.pooling = "pooler"  # what transformers' BertForSequenceClassification computes
    config.export = {"peft": True}
    run(config, tmp_path)
    export = tmp_path / "export_peft"
    adapter = json.loads((export / "adapter_config.json").read_text())
    base = transformers.AutoModelForSequenceClassification.from_pretrained(
        adapter["base_model_name_or_path"], num_labels=2
    )
    model = peft.PeftModel.from_pretrained(base, export).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(export)  # carried with the adapter
    rows = [json.loads(line) for line in (tmp_path / "predictions.jsonl").open()][:8]
    enc = tokenizer([r["text"] for r in rows], padding=True, truncation=True, max_length=32,
                    return_tensors="pt")  # fmt: skip
    with torch.no_grad():
        probs = torch.softmax(model(**enc).logits, -1).numpy()
    labels = json.loads((tmp_path / "labels.json").read_text())
    for row, p in zip(rows, probs, strict=True):
        assert labels[str(int(p.argmax()))] == row["prediction"]
        assert p.max() == pytest.approx(row["probability"], abs=2e-5)  # adapt's, to 6 decimals


def test_export_peft_of_what_peft_cannot_load_is_refused_before_training(tmp_path):
    config = _config("configs/text/minilm.py", "dataset=sst2,method=lora,smoke")
    config.export = {"peft": True}  # all-MiniLM-L6-v2 pools by the mean: not BERT's head
    with pytest.raises(ConfigError, match="export.peft: the base model as transformers builds"):
        run(config, tmp_path / "w")
    config = _config("configs/text/minilm.py", "dataset=sst2,method=houlsby,smoke")
    config.model.pooling = "pooler"
    config.export = {"peft": True}
    with pytest.raises(ConfigError, match="export.peft writes one LoRA"):
        run(config, tmp_path / "w")
    assert not (tmp_path / "w").exists()


@pytest.mark.slow
@pytest.mark.parametrize(
    "method",
    ["full", "linear_probe", "bitfit", "dora", "ia3", "houlsby", "pfeiffer", "prefix", "prompt",
     "ptuning_v2", "gradual_unfreezing", "lp_ft", "scratch"],
)  # fmt: skip
def test_every_method_smoke_on_sst2(tmp_path, method):
    results = run(
        _config("configs/text/minilm.py", f"dataset=sst2,method={method},smoke"), tmp_path
    )
    assert results["method"] == {"lp_ft": "full"}.get(method, method)  # lp_ft: full, probed head
    assert results["steps"] == (0 if method == "linear_probe" else 4)
    assert 0 < results["trainable_params"] <= results["total_params"]
    if method == "linear_probe":  # fitted on every labelled example: nothing to select
        assert "val" not in results
    else:
        assert 0.0 <= results["val"]["accuracy"] <= 1.0


@pytest.mark.slow
def test_new_head_replaces_a_same_shape_pretrained_head_and_nothing_else():
    """CIFAR-10's 10-way head fits Fashion-MNIST's 10 labels by shape only: model.new_head must
    start it afresh (a kept head cost the vision sweep's linear probe 50 points)."""
    import numpy as np

    from adapt import paths
    from adapt.harness.model_setup import load_model

    section = _config("configs/vision/fmnist_resnet20.py", "method=linear_probe,smoke").model
    assert section.new_head
    rng = jax.random.key(0)
    kept = paths.flatten(load_model({**section.to_dict(), "new_head": False}, 10, rng).params)
    fresh = paths.flatten(load_model(section, 10, rng).params)
    assert sorted(kept) == sorted(fresh)
    changed = {p for p in kept if not np.array_equal(kept[p], fresh[p])}
    assert changed == {"linear/kernel", "linear/bias"}
    assert not np.any(fresh["linear/bias"])  # a fresh Dense bias; CIFAR's trained one is not 0
    with pytest.raises(ConfigError, match="no parameter matches the head pattern 'nothing/.*'"):
        load_model({**section.to_dict(), "head": "nothing/.*"}, 10, rng)


@pytest.mark.slow
def test_vit_transfer_from_an_adapt_pretrained_export(tmp_path):
    pre = tmp_path / "pre"
    run(_config("configs/vision/fmnist_vit.py", "stage=pretrain,smoke"), pre)
    assert (pre / "export_hf" / "config.json").exists()
    arg = f"stage=transfer,method=lora,pretrained={pre / 'export_hf'},smoke"
    results = run(_config("configs/vision/fmnist_vit.py", arg), tmp_path / "transfer")
    assert results["trainable_pct"] < 20


# --------------------------------------------------------------------------------- meshes
@pytest.mark.slow
def test_one_device_and_eight_device_meshes_give_the_same_losses(tmp_path):
    assert jax.device_count() == 8
    losses = {}
    for name, axes, rules in [
        ("single", [("data", 1)], "dp"),
        ("dp8", [("data", 8)], "dp"),
        ("fsdp8", [("data", 8)], "fsdp"),
    ]:
        cfg = _config("configs/llm/stories_lora.py", "method=full,smoke")
        cfg.train.steps, cfg.train.batch_size, cfg.train.log_every = 8, 8, 1
        cfg.checkpoint.every = 100
        cfg.mesh.axes, cfg.mesh.rules = axes, rules
        run(cfg, tmp_path / name)
        losses[name] = _losses(tmp_path / name)
    assert len(losses["single"]) == 8
    for name in ("dp8", "fsdp8"):
        assert max(abs(a - b) for a, b in zip(losses["single"], losses[name], strict=True)) < 1e-5


# --------------------------------------------------------------------------- bad input
def test_unknown_config_key_is_named(tmp_path):
    cfg = _config("configs/text/minilm.py", "dataset=sst2,smoke")
    cfg.unlock()
    cfg.train.stpes = 3
    with pytest.raises(ConfigError, match="train.stpes"):
        run(cfg, tmp_path / "w")
    assert not (tmp_path / "w").exists()


@pytest.mark.parametrize(
    "change, error, match",
    [
        (lambda c: c.data.update(source="third_party/sst2_missing"), DataError, "sst2_missing"),
        (lambda c: c.data.update(text_column="sentense"), DataError, "sentense"),
        (lambda c: c.data.update(label_column="polarity"), DataError, "polarity"),
        (lambda c: c.data.update(label_names=["negative"]), DataError, "label"),
        (lambda c: c.data.update(max_examples=0), ConfigError, "data.max_examples"),
    ],
    ids=[
        "missing-file",
        "missing-text-column",
        "missing-label-column",
        "label-outside-map",
        "empty",
    ],
)
def test_bad_data_config_errors_and_writes_nothing(tmp_path, change, error, match):
    cfg = _config("configs/text/minilm.py", "dataset=sst2,smoke")
    change(cfg)
    before = _snapshot(REPO / "third_party")
    with pytest.raises(error, match=match):
        run(cfg, tmp_path / "w")
    assert not (tmp_path / "w").exists()
    assert _snapshot(REPO / "third_party") == before


def test_images_of_the_wrong_shape(tmp_path):
    cfg = _config("configs/vision/fmnist_resnet20.py")
    cfg.data.image_shape = (32, 32)
    with pytest.raises(DataError, match="shape"):
        run(cfg, tmp_path / "w")
    assert not (tmp_path / "w").exists()


@pytest.mark.slow
def test_workdir_of_another_experiment_is_refused_untouched(tmp_path):
    run(_config("configs/llm/stories_lora.py"), tmp_path)
    before = _snapshot(tmp_path)
    other = _config("configs/llm/stories_lora.py")
    other.optim.groups.lora.lr = 1e-2
    with pytest.raises(WorkdirMismatchError, match="config"):
        run(other, tmp_path)
    assert _snapshot(tmp_path) == before


# ----------------------------------------------------------------------------- resume
def _finetune(workdir, *extra, wait=True, steps=12, expect=0):
    cmd = [
        sys.executable, "-m", "experiments.finetune",
        "--config=configs/llm/stories_lora.py:method=full,smoke",
        f"--workdir={workdir}",
        f"--config.train.steps={steps}", "--config.train.log_every=1",
        "--config.checkpoint.every=4", *extra,
    ]  # fmt: skip
    env = {**os.environ, "XLA_FLAGS": "", "JAX_PLATFORMS": "cpu"}
    if wait:
        out = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, check=False)
        assert out.returncode == expect, out.stderr[-3000:]
        return out
    return subprocess.Popen(
        cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def _wait_until(condition, proc, what, timeout=600):
    """Poll for a state of the run (never a duration); fail if the run ends first."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if condition():
            return
        if proc.poll() is not None:
            raise AssertionError(f"run ended before {what}: {proc.stderr.read()[-2000:]}")
        time.sleep(0.05)
    raise AssertionError(f"no {what} within {timeout} s")


def _steps(workdir):
    folder = Path(workdir) / "checkpoints"
    return sorted(int(p.name) for p in folder.iterdir() if p.name.isdigit())


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
def test_killed_run_resumes_with_the_same_losses(tmp_path, sig):
    """Killed once the step-4 checkpoint is final (orbax renames its folder to ``4`` only after
    every file is committed), whatever the machine's speed: the state the test needs."""
    reference = tmp_path / "ref"
    _finetune(reference, steps=40)
    ref_losses = _losses(reference)
    assert len(ref_losses) == 40

    workdir = tmp_path / "killed"
    proc = _finetune(workdir, wait=False, steps=40)
    _wait_until(lambda: (workdir / "checkpoints" / "4").is_dir(), proc, "the step-4 checkpoint")
    proc.send_signal(sig)
    code = proc.wait(timeout=300)
    assert code == (75 if sig == signal.SIGTERM else -signal.SIGKILL), proc.stderr.read()[-2000:]
    assert 4 in _steps(workdir) and max(_steps(workdir)) < 40, _steps(workdir)
    assert not (workdir / "results.json").exists()
    _finetune(workdir, steps=40)
    assert _losses(workdir) == ref_losses  # bit for bit on CPU
    assert json.loads((workdir / "results.json").read_text())["steps"] == 40


@pytest.mark.slow
@pytest.mark.parametrize("how", ["truncated", "garbled"])
def test_a_damaged_newest_checkpoint_is_named_kept_and_skipped(tmp_path, how):
    """Step 8's largest tensor file truncated (or overwritten with other bytes of the same size):
    the re-run names the file, moves step 8 to damaged_checkpoints/ (nothing deleted) and
    resumes from step 4 with the losses of an undisturbed run."""
    reference = tmp_path / "ref"
    _finetune(reference, "--config.checkpoint.keep=3")
    workdir = tmp_path / "run"
    _finetune(workdir, "--config.checkpoint.keep=3")
    assert _steps(workdir) == [4, 8, 12]
    shutil.rmtree(workdir / "checkpoints" / "12")  # as if killed after saving step 8
    (workdir / "results.json").unlink()
    victim = max(
        (workdir / "checkpoints" / "8" / "state").rglob("*"), key=lambda p: p.stat().st_size
    )
    data = victim.read_bytes()
    damaged = data[: len(data) // 2] if how == "truncated" else bytes(b ^ 0x5A for b in data)
    victim.write_bytes(damaged)
    out = _finetune(workdir, "--config.checkpoint.keep=3")
    relative = victim.relative_to(workdir / "checkpoints" / "8")
    assert f"checkpoint step 8 is damaged ({victim}" in out.stderr, out.stderr[-2000:]
    kept = workdir / "damaged_checkpoints" / "8" / relative
    assert kept.read_bytes() == damaged  # moved aside as it was, never deleted
    assert _steps(workdir) == [4, 8, 12]  # 8 and 12 written again by the resumed run
    assert _losses(workdir)[-8:] == _losses(reference)[-8:]


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["jit", "per_device"])  # pjit step / shard_map step
def test_two_processes_reproduce_the_single_process_losses(tmp_path, mode):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    common = [
        sys.executable, "-m", "experiments.finetune",
        "--config=configs/llm/stories_lora.py:method=full,smoke", f"--config.mesh.mode={mode}",
        "--config.train.steps=6", "--config.train.log_every=1", "--config.checkpoint.every=3",
    ]  # fmt: skip
    env = {**os.environ, "XLA_FLAGS": "", "JAX_PLATFORMS": "cpu"}
    single = subprocess.run(
        [*common, f"--workdir={tmp_path / 'single'}", "--cpu_devices=8"],
        cwd=REPO, env=env, capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert single.returncode == 0, single.stderr[-3000:]
    procs = [
        subprocess.Popen(
            [
                *common,
                f"--workdir={tmp_path / 'multi'}",
                "--cpu_devices=4",
                f"--coordinator=127.0.0.1:{port}",
                "--num_processes=2",
                f"--process_id={i}",
            ],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        for i in range(2)
    ]
    for p in procs:
        _, err = p.communicate(timeout=600)
        assert p.returncode == 0, err[-3000:]
    a, b = _losses(tmp_path / "single"), _losses(tmp_path / "multi")
    assert len(a) == 6
    assert max(abs(x - y) for x, y in zip(a, b, strict=True)) < 1e-5


@pytest.mark.slow
def test_nan_loss_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    import numpy as np

    from adapt.harness import loop
    from adapt.train import NonFiniteLossError

    original = loop.train_batches

    def poisoned(*args, **kwargs):  # from step 5 on, the loss weights are NaN
        for step, batch in enumerate(original(*args, **kwargs), start=kwargs.get("start_step", 0)):
            if step >= 4:
                batch = {**batch, "loss_mask": batch["loss_mask"] * np.nan}
            yield batch

    monkeypatch.setattr(loop, "train_batches", poisoned)
    cfg = _config("configs/llm/stories_lora.py", "method=full,smoke")
    cfg.train.steps, cfg.checkpoint.every = 8, 2
    with pytest.raises(NonFiniteLossError, match="non-finite at step 5"):
        run(cfg, tmp_path)
    steps = sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit())
    assert max(steps) == 4  # the last good state; nothing was saved after the NaN
    assert not (tmp_path / "results.json").exists()


@pytest.mark.slow
def test_evaluate_and_sweep_entry_points(tmp_path):
    from adapt.harness.loop import evaluate_workdir
    from adapt.studies.sweep import run_sweep

    run(_config("configs/llm/stories_lora.py"), tmp_path / "run")
    again = evaluate_workdir(tmp_path / "run")
    final = json.loads((tmp_path / "run" / "results.json").read_text())["eval"]
    assert again["step"] == 4
    assert again["eval"]["loss"] == pytest.approx(final["loss"], rel=1e-6)

    import ml_collections

    sweep = ml_collections.ConfigDict(
        dict(
            name="tiny",
            base="configs/llm/stories_lora.py",
            grid={"method": ["lora", "full"], "seed": [0, 1]},
            fixed={"smoke": True},
            group_by=["method"],
            metrics=["perplexity"],
            plot={"x": "method", "series": "method", "y": "perplexity"},
        )
    )
    summary = run_sweep(sweep, tmp_path / "sweep", tmp_path / "out")
    assert [s["runs"] for s in summary] == [2, 2]
    for name in ("runs.csv", "summary.csv", "summary.md", "plot.png"):
        assert (tmp_path / "out" / name).exists()
    before = (tmp_path / "out" / "runs.csv").read_text()
    run_sweep(sweep, tmp_path / "sweep", tmp_path / "out")  # resumable: nothing re-runs
    assert (tmp_path / "out" / "runs.csv").read_text() == before


@pytest.mark.slow
def test_relative_workdir(tmp_path):
    rel = os.path.relpath(tmp_path / "rel", REPO)  # cwd is the repo (fixture)
    assert not os.path.isabs(rel)
    results = run(_config("configs/llm/stories_lora.py"), rel)
    assert results["steps"] == 4 and (tmp_path / "rel" / "checkpoints").is_dir()


@pytest.mark.slow
def test_layerwise_lr_decay_from_the_config(tmp_path):
    cfg = _config("configs/text/minilm.py", "dataset=sst2,method=full,smoke")
    cfg.optim.layerwise_decay = 0.8
    cfg.train.update(select_best=None, early_stopping=0)  # the ResNet data has no val split
    results = run(cfg, tmp_path)
    assert results["trainable_pct"] == 100.0
    cfg.model.kind = "resnet_cifar"  # no layer count: a clear error, not a silent no-op
    cfg.model.path = "third_party/resnet20_cifar10"
    cfg.data = _config("configs/vision/fmnist_resnet20.py").data
    with pytest.raises(ConfigError, match="num_hidden_layers"):
        run(cfg, tmp_path / "resnet")


@pytest.mark.parametrize(
    "path, arg",
    [("configs/text/minilm.py", "dataset=sst2,smoke"), ("configs/llm/stories_lora.py", "smoke")],
)
@pytest.mark.slow
def test_bfloat16_compute_tracks_float32(tmp_path, path, arg):
    reference = run(_config(path, arg), tmp_path / "f32")["eval"]["loss"]
    cfg = _config(path, arg)
    cfg.model.dtype = "bfloat16"  # compute; trainable leaves stay float32 (param_dtype)
    cfg.model.frozen_dtype = "bfloat16"  # frozen base stored in bf16
    loss = run(cfg, tmp_path / "bf16")["eval"]["loss"]
    assert loss == pytest.approx(reference, rel=0.05)
