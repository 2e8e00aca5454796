"""Sweep launchers: the submitit launcher (its local executor: each point a separate job) gives
the local launcher's summary, a point killed mid-run resumes from its checkpoint when the sweep
runs again, and launcher configs that cannot work stop before anything runs."""

import json
import os
import signal
import threading
import time
from pathlib import Path

import ml_collections
import pytest

from adapt.studies import launchers
from adapt.studies import sweep as S

REPO = Path(__file__).resolve().parents[1]


def test_launcher_configs_that_cannot_work_are_refused(tmp_path):
    assert isinstance(launchers.make(None, tmp_path), launchers.LocalLauncher)
    with pytest.raises(launchers.LauncherError, match="'slurmm' is not one of"):
        launchers.make({"name": "slurmm"}, tmp_path)
    with pytest.raises(launchers.LauncherError, match=r"unknown launcher keys \['partition'\]"):
        launchers.make({"name": "submitit", "partition": "gpu"}, tmp_path)
    pytest.importorskip("submitit")
    with pytest.raises(launchers.LauncherError, match="multi-process point needs SLURM"):
        launchers.make({"name": "submitit", "cluster": "local", "tasks": 2}, tmp_path)
    assert not any(tmp_path.iterdir())  # nothing was submitted or written


def _sweep(launcher=None, steps=4):
    spec = dict(
        name="tiny",
        base="configs/llm/stories_lora.py",
        grid={"method": ["lora", "full"], "seed": [0]},
        fixed={"smoke": True},
        group_by=["method"],
        metrics=["loss"],
    )
    if launcher:
        spec["launcher"] = launcher
    return ml_collections.ConfigDict(spec)


def _losses(workdir: Path) -> list[float]:
    rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in rows if r["split"] == "train"]


@pytest.mark.slow
def test_submitit_jobs_give_the_local_summary(tmp_path, monkeypatch):
    pytest.importorskip("submitit")
    monkeypatch.chdir(REPO)
    local = S.run_sweep(_sweep(), tmp_path / "local", tmp_path / "out_local")
    jobs = S.run_sweep(
        _sweep({"name": "submitit", "cluster": "local"}), tmp_path / "jobs", tmp_path / "out_jobs"
    )
    assert [r["method"] for r in jobs] == ["lora", "full"]
    assert [r["loss"] for r in jobs] == [r["loss"] for r in local]  # the same numbers
    assert list((tmp_path / "jobs" / "submitit").glob("*_log.out"))  # they did run as jobs
    for method in ("lora", "full"):
        point = S.run_name({"smoke": True, "method": method, "seed": 0})
        assert _losses(tmp_path / "jobs" / point) == _losses(tmp_path / "local" / point)


def _kill_after_first_checkpoint(workdir: Path, stop: threading.Event) -> None:
    """SIGKILL the run writing ``workdir`` once its step-4 checkpoint is finalised (a state,
    not a time: orbax renames the folder into place when it is complete)."""
    import psutil

    while not stop.is_set():
        if (workdir / "checkpoints" / "4").is_dir():
            for proc in psutil.process_iter(["pid", "cmdline"]):
                cmdline = " ".join(proc.info["cmdline"] or [])
                if "adapt.cli.finetune" in cmdline and f"--workdir={workdir}" in cmdline:
                    os.kill(proc.info["pid"], signal.SIGKILL)
                    return
        time.sleep(0.05)


@pytest.mark.slow
def test_a_point_killed_mid_run_resumes_when_the_sweep_runs_again(tmp_path, monkeypatch):
    pytest.importorskip("submitit")
    monkeypatch.chdir(REPO)
    flags = ["--config.train.steps=12", "--config.checkpoint.every=4", "--config.train.log_every=1"]
    sweep = _sweep({"name": "submitit", "cluster": "local"})
    sweep.grid.method = ["full"]
    reference = S.run_sweep(sweep, tmp_path / "ref", tmp_path / "out_ref", flags)
    point = S.run_name({"smoke": True, "method": "full", "seed": 0})
    workdir = (tmp_path / "runs" / point).absolute()
    stop = threading.Event()
    killer = threading.Thread(target=_kill_after_first_checkpoint, args=(workdir, stop))
    killer.start()
    try:
        with pytest.raises(RuntimeError, match="exit status -9; run the sweep again to resume"):
            S.run_sweep(sweep, tmp_path / "runs", tmp_path / "out", flags)
    finally:
        stop.set()
        killer.join()
    assert not (workdir / "results.json").exists()
    resumed = S.run_sweep(sweep, tmp_path / "runs", tmp_path / "out", flags)
    assert resumed[0]["loss"] == reference[0]["loss"]
    assert _losses(workdir)[-8:] == _losses(tmp_path / "ref" / point)[-8:]  # steps 5-12 again
