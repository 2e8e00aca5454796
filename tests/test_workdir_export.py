"""Exports of a finished run from its workdir (adapt/cli/export.py): the reported model, as
PEFT loads it; refusals before anything is written."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from adapt.config import ConfigError
from adapt.harness.command_line import load_config_file
from adapt.harness.loop import run
from adapt.harness.workdir_export import export_workdir

REPO = Path(__file__).resolve().parents[1]


def _export(workdir: Path, *flags: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": ""}
    return subprocess.run(
        [sys.executable, "-m", "experiments.export", f"--workdir={workdir}", *flags],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip


def test_an_unfinished_workdir_or_no_export_kind_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="has no config.json"):
        export_workdir(tmp_path, ["peft"])
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ConfigError, match="has no results.json: the run has not finished"):
        export_workdir(tmp_path, ["peft"])
    with pytest.raises(ConfigError, match="choose from hf, native, peft"):
        export_workdir(tmp_path, ["onnx"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json"]


@pytest.mark.slow
def test_peft_export_of_a_finished_run_gives_its_reported_predictions(tmp_path):
    """A LoRA run that selected its best validation weights and wrote no export: exporting from
    the workdir afterwards gives the adapter of those weights (PEFT's probabilities are the
    run's predictions.jsonl); a second export is refused, and so is an unexportable run."""
    torch = pytest.importorskip("torch")
    peft = pytest.importorskip("peft")
    transformers = pytest.importorskip("transformers")
    config = load_config_file(
        str(REPO / "configs/text/minilm.py"), "dataset=sst2,method=lora,smoke"
    )
    config.model.pooling = "pooler"  # what transformers' BertForSequenceClassification computes
    workdir = tmp_path / "run"
    results = run(config, workdir)
    assert "selected_step" in results and not (workdir / "export_peft").exists()

    out = _export(workdir, "--peft")
    assert out.returncode == 0, out.stderr[-3000:]
    written = json.loads(out.stdout)
    assert written["source"].startswith(str(workdir / "best"))
    export = Path(written["peft"])
    adapter = json.loads((export / "adapter_config.json").read_text())
    base = transformers.AutoModelForSequenceClassification.from_pretrained(
        adapter["base_model_name_or_path"], num_labels=2
    )
    model = peft.PeftModel.from_pretrained(base, export).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(export)
    rows = [json.loads(line) for line in (workdir / "predictions.jsonl").open()][:8]
    enc = tokenizer([r["text"] for r in rows], padding=True, truncation=True, max_length=32,
                    return_tensors="pt")  # fmt: skip
    with torch.no_grad():
        probs = torch.softmax(model(**enc).logits, -1).numpy()
    for row, p in zip(rows, probs, strict=True):
        assert p.max() == pytest.approx(row["probability"], abs=2e-5)

    again = _export(workdir, "--peft")
    assert again.returncode == 2 and "Traceback" not in again.stderr
    assert "already exist" in again.stderr

    config.model.pooling = None  # all-MiniLM-L6-v2's mean pooling: not a head PEFT can load
    config.train.select_best, config.train.early_stopping = None, 0  # reported: the last
    config.data.val_fraction = 0.0  # checkpoint, restored before the export is refused
    mean_run = tmp_path / "mean"
    run(config, mean_run)
    before = sorted(p.name for p in mean_run.iterdir())
    refused = _export(mean_run, "--peft")
    assert refused.returncode == 2 and "export.peft: the base model" in refused.stderr
    assert sorted(p.name for p in mean_run.iterdir()) == before
