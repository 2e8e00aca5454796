"""Bad input through the entry points: exit status 2, one line that names what was wrong, no
traceback, and nothing in the workdir changed (no file added, removed or altered).

Each case runs ``python -m experiments.<entry>`` in a fresh process against a copy of a workdir
that already holds a finished run (or against a path that must not be created), so the test
sees what a user sees. The cases are the mistakes users make: misspelt keys, impossible
hyperparameters, missing or damaged files, inconsistent multi-process flags.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LM = "configs/llm/stories_lora.py:smoke"
SST2 = "configs/text/minilm.py:dataset=sst2,smoke"
ENV = {**os.environ, "XLA_FLAGS": "", "JAX_PLATFORMS": "cpu"}


def _run(entry: str, *args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", f"experiments.{entry}", *args]
    return subprocess.run(
        cmd, cwd=cwd, env=ENV, capture_output=True, text=True, check=False, timeout=600
    )


def _tree(path: Path) -> dict[str, str] | None:
    """Every file under ``path`` with the sha256 of its bytes (None if ``path`` is absent)."""
    if not path.exists():
        return None
    return {
        str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(path.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """A workdir holding a finished 4-step run of stories260K LoRA (the base of most cases)."""
    workdir = tmp_path_factory.mktemp("finished") / "run"
    out = _run("finetune", f"--config={LM}", f"--workdir={workdir}")
    assert out.returncode == 0, out.stderr[-3000:]
    return workdir


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """Small broken data files."""
    folder = tmp_path_factory.mktemp("data")
    (folder / "empty.csv").write_bytes(b"")
    (folder / "blank_label.csv").write_text("text,label\ngood,0\nfine,1\nno label here,\nok,0\n")
    (folder / "train.csv").write_text(
        "text,label\n" + "".join(f"t{i},{i % 2}\n" for i in range(40))
    )
    (folder / "bad_quote.csv").write_text('text,label\na,0\n"b,1\n')
    return folder


def _damage_checkpoints(workdir: Path) -> None:
    (workdir / "results.json").unlink()  # an unfinished run: resuming reads the checkpoints
    for meta in (workdir / "checkpoints").glob("*/meta/metadata"):
        meta.write_text(meta.read_text()[:10])


def _garble_results(workdir: Path) -> None:
    (workdir / "results.json").write_text('{"eval": {"acc')


# (id, entry point, arguments, text the one-line message must contain, workdir preparation)
# "{wd}" is the workdir copy, "{data}" the folder of broken files.
CASES = [
    ("misspelt-key", "finetune", ["--config.optim.lrr=1e-3"], "optim.lrr", None),
    ("misspelt-nested-key", "finetune", ["--config.data.seq_lne=64"], "did you mean 'seq_len'", None),
    ("missing-config-file", "finetune", ["--config=configs/llm/nope.py"], "nope.py", None),
    ("config-argument", "finetune", ["--config=configs/llm/stories_lora.py:metod=lora"],
     "'metod'", None),
    ("group-for-no-label", "finetune", ["--config.optim.groups.lroa.lr=1e-3"], "lroa", None),
    ("zero-steps", "finetune", ["--config.train.steps=0"], "train.steps", None),
    ("nan-lr", "finetune", ["--config.optim.default.lr=nan"], "optim.default.lr", None),
    ("negative-lr", "finetune", ["--config.optim.groups.lora.lr=-1e-3"], "optim.groups.lora.lr",
     None),
    ("inf-weight-decay", "finetune", ["--config.optim.default.weight_decay=inf"], "weight_decay",
     None),
    ("unknown-schedule", "finetune", ["--config.optim.default.schedule=cosin"], "schedule", None),
    ("warmup-beyond-steps", "finetune", ["--config.optim.default.warmup_steps=40"],
     "warmup_steps", None),
    ("batch-size-negative", "finetune", ["--config.train.batch_size=-8"], "train.batch_size",
     None),
    ("grad-accum-uneven", "finetune", ["--config.train.grad_accum=3"], "grad_accum", None),
    ("unknown-method", "finetune", ["--config.method.name=loar"], "method.name", None),
    ("unknown-method-option", "finetune", ["--config.method.options.rnak=4"], "rnak", None),
    ("unknown-dtype", "finetune", ["--config.model.dtype=float8"], "model.dtype", None),
    ("unknown-mesh-rules", "finetune", ["--config.mesh.rules=tpx"], "mesh.rules", None),
    ("unknown-mesh-mode", "finetune", ["--config.mesh.mode=pmap"], "mesh.mode", None),
    ("per-device-fsdp", "finetune", ["--config.mesh.mode=per_device", "--config.mesh.rules=fsdp"],
     "mesh.mode 'per_device' is data parallel", None),
    ("mesh-too-big", "finetune", ["--config.mesh.axes=[('data', 3)]"], "mesh", None),
    ("keep-zero", "finetune", ["--config.checkpoint.keep=0"], "checkpoint.keep", None),
    ("unknown-remat", "finetune", ["--config.train.remat=everything"], "train.remat", None),
    ("not-an-int", "finetune", ["--config.seed=abc"], "seed", None),
    ("unknown-task", "finetune", ["--config.task=regression"], "task", None),
    ("missing-model", "finetune", ["--config.model.path=third_party/nothing/model.bin"],
     "third_party/nothing/model.bin", None),
    ("missing-data", "finetune", ["--config.data.source=third_party/stories260K/nope.txt"],
     "nope.txt", None),
    ("missing-tokenizer", "finetune",
     ["--config.data.tokenizer=third_party/stories260K/nope.model"], "nope.model", None),
    ("text-option-on-lm-data", "finetune", ["--config.data.max_length=64"], "data.max_length",
     None),
    ("seq-len-one", "finetune", ["--config.data.seq_len=1"], "data.seq_len", None),
    ("eval-fraction-range", "finetune", ["--config.data.eval_fraction=1.5"], "eval_fraction", None),
    ("ewc-without-source", "finetune",
     ["--config.regularizer.kind=ewc", "--config.regularizer.strength=1.0"], "source_task", None),
    ("wise-alpha-range", "finetune", ["--config.wise_ft.alphas=[1.5]"], "wise_ft.alphas", None),
    ("export-unmergeable", "finetune",
     ["--config.method.name=prefix", "--config.method.options={}", "--config.export.hf=True",
      "--config.optim.groups={'prefix': {'lr': 0.001}}"], "export", None),
    ("processes-without-coordinator", "finetune", ["--num_processes=2"], "--coordinator", None),
    ("coordinator-without-port", "finetune", ["--num_processes=2", "--coordinator=localhost"],
     "host:port", None),
    ("process-id-out-of-range", "finetune",
     ["--num_processes=2", "--process_id=2", "--coordinator=127.0.0.1:1"], "--process_id", None),
    ("unknown-flag", "finetune", ["--workdri=/tmp/x"], "workdri", None),
    ("finished-workdir-other-config", "finetune", ["--config.optim.groups.lora.lr=0.01"],
     "optim.groups.lora.lr", None),
    ("garbled-results", "finetune", [], "results.json", _garble_results),
    ("every-checkpoint-damaged", "finetune", [], "metadata", _damage_checkpoints),
    ("text-single-file", "finetune",
     [f"--config={SST2}", "--config.data.source=third_party/sst2/dev.tsv"], "single file", None),
    ("empty-csv", "finetune",
     [f"--config={SST2}", "--config.data.source={data}/empty.csv",
      "--config.data.eval_source={data}/empty.csv", "--config.data.delimiter=None"],
     "empty.csv", None),
    ("blank-label", "finetune",
     [f"--config={SST2}", "--config.data.source={data}/blank_label.csv",
      "--config.data.eval_fraction=0.25", "--config.data.delimiter=None",
      "--config.data.text_column=text", "--config.data.label_names=None"], "row(s) 3", None),
    ("unbalanced-quote", "finetune",
     [f"--config={SST2}", "--config.data.source={data}/bad_quote.csv",
      "--config.data.eval_fraction=0.5", "--config.data.delimiter=None"], "bad_quote.csv", None),
    ("missing-text-column", "finetune",
     [f"--config={SST2}", "--config.data.source={data}/train.csv", "--config.data.delimiter=None",
      "--config.data.eval_fraction=0.5"], "'sentence'", None),
    ("batch-larger-than-data", "finetune",
     [f"--config={SST2}", "--config.data.max_examples=4"], "train.batch_size", None),
    ("evaluate-no-workdir", "evaluate", ["--workdir={data}"], "config.json", None),
    ("evaluate-unknown-data-key", "evaluate", ["--workdir={wd}", "--data=eval_splt=train"],
     "eval_splt", None),
    ("convert-missing-input", "convert", ["--input=/nonexistent/model", "--output={data}/out"],
     "/nonexistent/model", None),
    ("sweep-missing-config", "sweep", ["--config=configs/sweeps/nope.py"], "nope.py", None),
    ("sweep-misspelt-key", "sweep", ["--config=configs/sweeps/forgetting.py",
                                     "--config.paralel=1"], "paralel", None),
]  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize(
    "entry, args, needle, prepare", [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_bad_input_exits_2_with_one_line_and_changes_nothing(
    tmp_path, finished, data, entry, args, needle, prepare
):
    workdir = tmp_path / "run"
    shutil.copytree(finished, workdir)
    if prepare is not None:
        prepare(workdir)
    args = [a.replace("{wd}", str(workdir)).replace("{data}", str(data)) for a in args]
    if entry == "finetune":
        if not any(a.startswith("--config=") for a in args):
            args = [f"--config={LM}", *args]
        if not any(a.startswith("--workdir") for a in args):
            args = [*args, f"--workdir={workdir}"]
    before, data_before = _tree(workdir), _tree(data)
    out = _run(entry, *args)
    assert out.returncode == 2, (out.returncode, out.stderr[-3000:])
    lines = [line for line in out.stderr.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, out.stderr[-3000:]
    assert needle in lines[0], lines[0]
    assert "Traceback" not in out.stderr, out.stderr[-3000:]
    assert _tree(workdir) == before
    assert _tree(data) == data_before


def test_a_fresh_workdir_is_not_created_on_bad_input(tmp_path):
    workdir = tmp_path / "never"
    out = _run(
        "finetune", f"--config={LM}", "--config.optim.default.lr=nan", f"--workdir={workdir}"
    )
    assert out.returncode == 2 and not workdir.exists()


def test_verbose_shows_the_traceback(tmp_path):
    out = _run("finetune", f"--config={LM}", "--config.train.steps=0", f"--workdir={tmp_path}/w",
               "--verbose")  # fmt: skip
    assert out.returncode == 2
    assert "Traceback" in out.stderr and "error: " in out.stderr


@pytest.mark.slow
def test_rerunning_a_finished_run_changes_nothing(tmp_path, finished):
    workdir = tmp_path / "run"
    shutil.copytree(finished, workdir)
    before = _tree(workdir)
    mtimes = {p: p.stat().st_mtime_ns for p in workdir.rglob("*")}
    out = _run("finetune", f"--config={LM}", f"--workdir={workdir}")
    assert out.returncode == 0, out.stderr[-3000:]
    assert "already holds the finished run" in out.stderr and "results.json" in out.stderr
    assert _tree(workdir) == before
    assert {p: p.stat().st_mtime_ns for p in workdir.rglob("*")} == mtimes
    results = json.loads((workdir / "results.json").read_text())
    assert results["trainable_params"] > 0


def test_a_coordinator_without_peers_gives_up_within_its_timeout(tmp_path):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = _run(
        "finetune", f"--config={LM}", f"--workdir={tmp_path}/w", "--num_processes=2",
        "--process_id=0", f"--coordinator=127.0.0.1:{port}", "--coordinator_timeout=3",
    )  # fmt: skip
    assert out.returncode == 2, out.stderr[-3000:]
    (line,) = [x for x in out.stderr.splitlines() if x.startswith("error: ")]
    assert "waited 3 s" in line and "[1]" in line
    assert not (tmp_path / "w").exists()
