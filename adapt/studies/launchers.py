"""Where a sweep's runs execute: each point is one command (``python -m adapt.cli.finetune ...``)
handed to a launcher, which returns its exit status and the end of its stderr.

- ``local`` (default): a subprocess on this machine; ``parallel`` of them at once.
- ``submitit``: one cluster job per point through `submitit <https://github.com/facebookincubator/
  submitit>`_ (``pip install 'adapt-jax[cluster]'``): SLURM when there is one, or submitit's
  local executor (``cluster: "local"``: each point a separate job process on this machine, as the
  tests run it). A point of several processes (``tasks`` > 1: nodes x tasks per node) is one
  multi-task job whose every task runs the command with ``--distributed_auto``, so that
  ``jax.distributed.initialize()`` reads the job's coordinator, process count and index from the
  SLURM environment.

A sweep config selects one with ``launcher = {"name": "submitit", "cluster": None, "slurm": {...},
"tasks": 1, "folder": None}``: ``slurm`` holds submitit's executor parameters (``timeout_min``,
``slurm_partition``, ``gpus_per_node``, ``cpus_per_task``, ``mem_gb`` ...), ``folder`` its log
folder (default ``<workdirs>/submitit``). Resume is the launcher's business only in that every
point's command is the same each time: a finished point (its ``results.json``) is skipped before
any job is submitted, and a point whose job died resumes from its own checkpoints when the sweep
is run again.
"""

from __future__ import annotations

import subprocess
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

from adapt.errors import AdaptError

NAMES = ("local", "submitit")
_KEYS = {"name", "cluster", "slurm", "tasks", "nodes", "folder"}


class LauncherError(AdaptError):
    """A launcher config that cannot work (unknown name or key, submitit missing)."""


class Launcher(Protocol):
    def run(self, cmd: Sequence[str], env: Mapping[str, str], name: str) -> tuple[int, str]:
        """Run one point's command to its end: ``(exit status, the end of its stderr)``."""


def run_command(cmd: Sequence[str], env: Mapping[str, str]) -> tuple[int, str]:
    """The command in a subprocess (what a local run, and each task of a cluster job, does)."""
    out = subprocess.run(list(cmd), capture_output=True, text=True, check=False, env=dict(env))
    return out.returncode, out.stderr[-20000:]


class LocalLauncher:
    def run(self, cmd: Sequence[str], env: Mapping[str, str], name: str) -> tuple[int, str]:
        return run_command(cmd, env)


class SubmititLauncher:
    """Each point a submitit job; ``run`` blocks (in the sweep's thread for that point) until
    the job ends, so ``parallel`` bounds how many jobs are queued at once."""

    def __init__(self, folder: Path, cluster: str | None, slurm: Mapping[str, Any], tasks: int,
                 nodes: int) -> None:  # fmt: skip
        try:
            import submitit
        except ImportError as e:
            raise LauncherError(
                "launcher 'submitit' needs submitit: pip install 'adapt-jax[cluster]' (in a "
                "checkout: pip install -e '.[cluster]')"
            ) from e
        self.tasks, self.nodes = tasks, nodes
        self._lock = threading.Lock()
        if tasks > 1 and cluster in ("local", "debug"):
            raise LauncherError(
                f"launcher tasks={tasks}: a multi-process point needs SLURM (cluster {cluster!r} "
                "runs one task per job)"
            )
        self.executor = submitit.AutoExecutor(folder=str(folder), cluster=cluster)
        params = dict(slurm)
        if self.executor.cluster == "slurm":
            params.setdefault("nodes", nodes)
            params.setdefault("tasks_per_node", max(tasks // max(nodes, 1), 1))
        elif tasks > 1:
            raise LauncherError(
                f"launcher tasks={tasks}: a multi-process point needs SLURM, and none was found "
                f"here (submitit chose {self.executor.cluster!r})"
            )
        try:
            self.executor.update_parameters(**params)
        except (TypeError, ValueError) as e:
            raise LauncherError(f"launcher slurm parameters {dict(slurm)}: {e}") from None

    def run(self, cmd: Sequence[str], env: Mapping[str, str], name: str) -> tuple[int, str]:
        cmd = [*cmd, "--distributed_auto"] if self.tasks > 1 else list(cmd)
        with self._lock:  # the sweep's threads share the executor: name and submit together
            self.executor.update_parameters(name=name)
            job = self.executor.submit(run_command, cmd, dict(env))
        try:
            results = job.results()  # one (status, stderr) per task
        except Exception as e:  # noqa: BLE001 - the job itself died (killed, timed out, lost)
            return -9, f"job {job.job_id} ended without a result: {e}"
        return next(((rc, err) for rc, err in results if rc != 0), results[0])


def make(spec: Mapping[str, Any] | None, workdir_root: Path) -> Launcher:
    """The launcher a sweep config's ``launcher`` section names (None: local)."""
    spec = dict(spec or {})
    unknown = set(spec) - _KEYS
    if unknown:
        raise LauncherError(f"unknown launcher keys {sorted(unknown)}; known: {sorted(_KEYS)}")
    name = spec.get("name", "local")
    if name not in NAMES:
        raise LauncherError(f"launcher {name!r} is not one of {list(NAMES)}")
    if name == "local":
        return LocalLauncher()
    folder = Path(spec.get("folder") or workdir_root / "submitit")
    return SubmititLauncher(
        folder, spec.get("cluster"), dict(spec.get("slurm") or {}), int(spec.get("tasks", 1)),
        int(spec.get("nodes", 1)),
    )  # fmt: skip


__all__ = ["NAMES", "LauncherError", "LocalLauncher", "SubmititLauncher", "make", "run_command"]
