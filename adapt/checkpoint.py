"""Checkpoints that resume a run exactly, and refuse to resume a different one.

:class:`Checkpointer` wraps ``orbax.checkpoint.CheckpointManager``. Checkpoints live in
``<workdir>/checkpoints/<step>/`` with two items:

- ``state``: the train state pytree (in the harness ``{"trainable", "opt_state", "step", "rng"}``),
  saved with ``StandardSave``. Arrays may be sharded over a mesh; each process writes its own
  shards and :meth:`Checkpointer.restore` reads them back into the shardings of the abstract
  state it is given (so a run may also resume on a different mesh).
- ``meta``: JSON (``JsonSave``): the caller's meta (data position, metrics so far), plus
  ``step``, ``fingerprint`` and optionally the canonical ``config``, added here.

**Fingerprints.** ``fingerprint = {"config": config_fingerprint(cfg), "base": params_fingerprint(
frozen_base)}``, optionally with ``"data": data_fingerprint(...)`` (compared when the stored
checkpoint has one too; see :mod:`adapt.fingerprint`). Constructing a :class:`Checkpointer` on a workdir
whose latest checkpoint carries a different fingerprint raises :class:`WorkdirMismatchError`
naming the part that differs, *before* anything is created, cleaned or deleted: the check reads
the stored meta through a read-only manager.

**When it saves.** :meth:`Checkpointer.save` writes when ``step % every == 0`` (step 0, the
untrained state, only when forced) or with ``force=True`` (end of run, SIGTERM); a step already on
disk is skipped (returns ``False``), so a forced save at the end after an interval save is
harmless. The ``keep`` newest checkpoints are kept.

**Atomic and async.** Orbax writes a step into ``<step>.orbax-checkpoint-tmp-<n>`` and renames it
to ``<step>`` only after every item is written and committed; only renamed directories are
listed or restored, and leftover tmp directories of a killed save are removed when the next
(matching) :class:`Checkpointer` opens the workdir. Saves are asynchronous: ``save`` returns once
the arrays are copied to host memory (so the caller may donate them to the next step right
away) and the files are written in a background thread; the next ``save``, :meth:`wait` and
:meth:`close` wait for it. A process killed at any point leaves the previous checkpoint as the
latest restorable one (tested by SIGKILL in ``tests/test_checkpoint.py``).

**Damage.** After a save has been written, a manifest of its files (size and sha256) is
added to the step's folder. When a run resumes, :meth:`Checkpointer.resume_step` checks the
newest checkpoints against their manifests (and that their meta JSON reads): a damaged one is
named (folder and file), moved to ``<workdir>/damaged_checkpoints/`` (never deleted), and the
run resumes from the newest intact one. Damage that a manifest cannot show (a checkpoint
written before manifests) surfaces when restoring, as :class:`CheckpointDamagedError` naming
the folder.

**Preemption.** :class:`PreemptionFlag` (``install_sigterm_handler()``) turns SIGTERM into a flag
the loop polls after each step; the loop then saves with ``force=True`` and exits cleanly. A second
SIGTERM falls through to the previous handler (by default: terminate now).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from adapt.errors import AdaptError
from adapt.fingerprint import config_fingerprint, jsonable, params_fingerprint

MANIFEST = "adapt_manifest.json"  # in each step folder: {relative path: [size, sha256]}
DAMAGED_DIR = "damaged_checkpoints"

__all__ = [
    "CheckpointDamagedError",
    "Checkpointer",
    "PreemptionFlag",
    "WorkdirMismatchError",
    "abstract_of",
    "config_fingerprint",
    "install_sigterm_handler",
    "params_fingerprint",
]

log = logging.getLogger(__name__)
PyTree = Any
_ITEMS = ("state", "meta")


class WorkdirMismatchError(AdaptError, RuntimeError):
    """The workdir holds checkpoints of a different run (config or base weights differ)."""


class CheckpointDamagedError(AdaptError, RuntimeError):
    """A checkpoint's files are truncated, garbled or missing."""


def _sha256(path: Path) -> str:
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def write_manifest(step_dir: Path) -> None:
    """Record the size and sha256 of every file of a finished checkpoint."""
    files = {
        str(p.relative_to(step_dir)): [p.stat().st_size, _sha256(p)]
        for p in sorted(step_dir.rglob("*"))
        if p.is_file() and p.name != MANIFEST
    }
    tmp = step_dir / f".{MANIFEST}.tmp"
    tmp.write_text(json.dumps(files, indent=1, sort_keys=True))
    os.replace(tmp, step_dir / MANIFEST)


def damage(step_dir: Path) -> str | None:
    """Why the checkpoint in ``step_dir`` is damaged (naming the file), or None if its files
    match its manifest and its meta reads (a folder without a manifest is checked for its meta
    only)."""
    meta = step_dir / "meta" / "metadata"
    if not meta.is_file():
        return f"{meta} is missing"
    try:
        json.loads(meta.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        return f"{meta} is not valid JSON ({e})"
    manifest = step_dir / MANIFEST
    if not manifest.exists():
        return None
    try:
        files = json.loads(manifest.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        return f"{manifest} is not valid JSON ({e})"
    for name, (size, digest) in sorted(files.items()):
        path = step_dir / name
        if not path.is_file():
            return f"{path} is missing"
        if path.stat().st_size != size:
            return f"{path} has {path.stat().st_size} bytes, {size} were written (truncated?)"
        if _sha256(path) != digest:
            return f"{path} does not hold the bytes that were written (sha256 differs)"
    return None


def abstract_of(tree: PyTree) -> PyTree:
    """``jax.ShapeDtypeStruct`` (with the array's sharding) for every leaf of a concrete tree."""
    return jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None)),
        tree,
    )


def config_diff(stored: Mapping | None, current: Mapping | None) -> list[str]:
    """Dotted keys whose values differ between two canonical configs (for the error message)."""
    if stored is None or current is None:
        return []
    diffs = []

    def walk(a, b, prefix):
        if isinstance(a, dict) and isinstance(b, dict):
            for key in sorted(set(a) | set(b)):
                walk(a.get(key, "<absent>"), b.get(key, "<absent>"), f"{prefix}{key}.")
        elif a != b:
            diffs.append(f"{prefix[:-1]}: {a!r} -> {b!r}")

    walk(stored, current, "")
    return diffs


class Checkpointer:
    """Orbax checkpoints of one run in ``<workdir>/checkpoints`` (see the module docstring).

    Args:
      workdir: the run's directory.
      every: save when ``step % every == 0`` (and on ``force``).
      keep: how many of the newest checkpoints to keep.
      fingerprint: ``{"config": sha256, "base": sha256}`` of this run.
      config: optional canonical config (JSON) stored alongside, so that a mismatch error can
        name the keys that changed.
      async_save: write in a background thread (default) or block in ``save``.
    """

    def __init__(
        self,
        workdir: str | os.PathLike,
        *,
        every: int,
        keep: int,
        fingerprint: Mapping[str, str],
        config: Mapping[str, Any] | None = None,
        async_save: bool = True,
        create: bool = True,
    ):
        if every < 1 or keep < 1:
            raise ValueError(f"every and keep must be >= 1, got every={every}, keep={keep}")
        if not {"config", "base"} <= set(fingerprint) <= {"config", "base", "data"}:
            raise ValueError(
                f"fingerprint needs keys 'config' and 'base' (and optionally 'data'), got "
                f"{sorted(fingerprint)}"
            )
        self.workdir = Path(workdir).absolute()  # orbax requires absolute paths
        self.directory = self.workdir / "checkpoints"
        self.every = every
        self.fingerprint = dict(fingerprint)
        self.config = jsonable(dict(config), where="config") if config is not None else None
        self._check_existing()  # reads only; raises before anything below writes
        if jax.process_count() > 1:
            # Every process must finish looking before any creates the directory, or a slow
            # process would see another's fresh directory and take a different code path.
            from jax.experimental import multihost_utils

            multihost_utils.sync_global_devices("adapt.Checkpointer:checked")
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep,
            create=create,
            cleanup_tmp_directories=create,
            enable_async_checkpointing=async_save,
        )
        self._manager = ocp.CheckpointManager(self.directory, item_names=_ITEMS, options=options)
        self._unmanifested: list[int] = []

    @classmethod
    def check_workdir(
        cls,
        workdir: str | os.PathLike,
        *,
        fingerprint: Mapping[str, str],
        config: Mapping[str, Any] | None = None,
        **_: Any,
    ) -> None:
        """Raise :class:`WorkdirMismatchError` if ``workdir`` holds checkpoints of another run;
        reads only (nothing is created)."""
        probe = cls.__new__(cls)
        probe.workdir = Path(workdir).absolute()
        probe.directory = probe.workdir / "checkpoints"
        probe.fingerprint = dict(fingerprint)
        probe.config = jsonable(dict(config), where="config") if config is not None else None
        probe._check_existing()

    # ------------------------------------------------------------------------------ checks
    def _check_existing(self) -> None:
        """Compare this run's fingerprint with the newest readable checkpoint's (reads only)."""
        if not self.directory.is_dir():
            return
        reader = ocp.CheckpointManager(
            self.directory,
            item_names=_ITEMS,
            options=ocp.CheckpointManagerOptions(read_only=True, create=False),
        )
        try:
            steps = sorted(reader.all_steps(), reverse=True)
        finally:
            reader.close()
        problems = []
        for step in steps:
            problem = damage(self.directory / str(step))
            if problem:
                problems.append(problem)
                continue
            meta = json.loads((self.directory / str(step) / "meta" / "metadata").read_text())
            stored = meta.get("fingerprint") if isinstance(meta, Mapping) else None
            self._compare(stored, meta.get("config") if isinstance(meta, Mapping) else None, step)
            return
        if problems:
            raise CheckpointDamagedError(
                f"every checkpoint in {self.directory} is damaged: {'; '.join(problems)}. Move "
                f"the folder away (mv {self.directory} {self.workdir / DAMAGED_DIR}) to start "
                "the run over; nothing was changed."
            )

    def _compare(self, stored: Mapping | None, stored_config: Mapping | None, step: int) -> None:
        fix = (
            f"Use a new workdir for this run, or delete the old one (rm -r {self.workdir}) to "
            "start over. Nothing in the workdir was changed."
        )
        if not isinstance(stored, Mapping):
            raise WorkdirMismatchError(
                f"{self.directory} holds a checkpoint (step {step}) without a run fingerprint, so "
                f"it cannot be checked against this run. {fix}"
            )
        problems = []
        parts = [("config", "run config differs"), ("base", "base parameters differ")]
        if "data" in stored and "data" in self.fingerprint:  # older checkpoints have none
            parts.append(("data", "training data differs (its size or labels changed)"))
        for part, what in parts:
            if stored.get(part) != self.fingerprint[part]:
                problems.append(
                    f"the {what} (stored {part} fingerprint "
                    f"{str(stored.get(part))[:12]}…, this run {self.fingerprint[part][:12]}…)"
                )
        if not problems:
            return
        changed = config_diff(stored_config, self.config)
        detail = "\nchanged config keys:\n  " + "\n  ".join(changed) if changed else ""
        raise WorkdirMismatchError(
            f"{self.directory} holds checkpoints of a different run (latest step {step}): "
            f"{'; '.join(problems)}. Resuming would mix two runs. {fix}{detail}"
        )

    # ---------------------------------------------------------------------------- save/restore
    def should_save(self, step: int, force: bool = False) -> bool:
        return force or (step > 0 and step % self.every == 0)

    def save(
        self, step: int, state: PyTree, meta: Mapping[str, Any] | None = None, force: bool = False
    ) -> bool:
        """Save ``state`` and ``meta`` at ``step`` if due (or forced); ``True`` if a save started.

        Must be called by every process (orbax synchronises them). Returns once the arrays are
        on the host; the files are written asynchronously.
        """
        step = int(step)
        if not self.should_save(step, force):
            return False
        if step in self._manager.all_steps():
            return False
        self._finish_manifests()
        record = dict(jsonable(dict(meta or {}), where="meta"))
        record.update(step=step, fingerprint=self.fingerprint)
        if self.config is not None:
            record["config"] = self.config
        args = ocp.args.Composite(
            state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(record)
        )
        started = bool(self._manager.save(step, args=args, force=True))
        if started:
            self._unmanifested.append(step)
        return started

    def _finish_manifests(self) -> None:
        """Wait for pending saves, then write the manifests of the checkpoints they finished."""
        self._manager.wait_until_finished()
        pending, self._unmanifested = self._unmanifested, []
        if jax.process_index() != 0:
            return
        for step in pending:
            step_dir = self.directory / str(step)
            if step_dir.is_dir():  # not already removed by max_to_keep
                write_manifest(step_dir)

    def resume_step(self) -> int | None:
        """The newest intact checkpoint's step (None if there is none). Damaged newer ones are
        named in a warning and moved to ``<workdir>/damaged_checkpoints/`` (never deleted), so
        that new checkpoints of the resumed run do not collide with them."""
        for step in sorted(self._manager.all_steps(), reverse=True):
            problem = damage(self.directory / str(step))
            if problem is None:
                return step
            moved = self._quarantine(step)
            log.warning(
                "checkpoint step %d is damaged (%s); moved it to %s and resuming from the newest "
                "intact checkpoint", step, problem, moved,
            )  # fmt: skip
            print(
                f"warning: checkpoint step {step} is damaged ({problem}); moved it to {moved}",
                file=sys.stderr,
            )
        return None

    def _quarantine(self, step: int) -> Path:
        target = self.workdir / DAMAGED_DIR / str(step)
        n = 1
        while target.exists():
            target = self.workdir / DAMAGED_DIR / f"{step}.{n}"
            n += 1
        if jax.process_index() == 0:
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(str(self.directory / str(step)), str(target))
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            multihost_utils.sync_global_devices(f"adapt.Checkpointer:quarantine{step}")
        self._manager.reload()
        return target

    def all_steps(self) -> list[int]:
        return sorted(self._manager.all_steps())

    def latest_step(self) -> int | None:
        """The newest step that was completely written (``None`` if there is none)."""
        return self._manager.latest_step()

    def restore(self, abstract_state: PyTree, step: int | None = None) -> tuple[PyTree, dict]:
        """``(state, meta)`` of ``step`` (default: the latest), with ``abstract_state``'s shardings.

        ``abstract_state`` is a pytree of ``jax.ShapeDtypeStruct`` with ``.sharding`` (from
        ``jax.eval_shape`` plus the run's shardings, or :func:`abstract_of`).
        """
        step = self.latest_step() if step is None else int(step)
        if step is None:
            raise FileNotFoundError(f"no complete checkpoint in {self.directory}")
        try:
            restored = self._manager.restore(
                step,
                args=ocp.args.Composite(
                    state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore()
                ),
            )
        except Exception as e:  # noqa: BLE001 - orbax/TensorStore raise many kinds for bad files
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise CheckpointDamagedError(
                f"cannot restore the checkpoint in {self.directory / str(step)} ({first[:300]}); "
                f"it is damaged or was written for another model. Move that folder to "
                f"{self.workdir / DAMAGED_DIR} to resume from an older checkpoint; nothing was "
                "changed."
            ) from e
        meta = dict(restored.meta)
        self._compare(meta.get("fingerprint"), meta.get("config"), step)
        return restored.state, meta

    def wait(self) -> None:
        """Block until the pending asynchronous save (if any) is on disk, with its manifest."""
        self._finish_manifests()

    def close(self) -> None:
        """Wait for pending saves and release orbax's threads."""
        self._finish_manifests()
        self._manager.close()

    def __enter__(self) -> Checkpointer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# ------------------------------------------------------------------------------------ preemption
class PreemptionFlag:
    """A flag set by SIGTERM (or :meth:`set`) that the train loop polls after each step.

    Use as a context manager (``with install_sigterm_handler() as flag:``) so the previous
    handler comes back when the loop exits. The first signal only sets the flag; a second one
    restores the previous handler and re-raises, so an impatient second ``kill`` still kills.
    Installing must happen in the main thread (a Python rule for signal handlers).
    """

    def __init__(self, signals: tuple[int, ...] = (signal.SIGTERM,)):
        self.signals = tuple(signals)
        self._set = False
        self._previous: dict[int, Any] = {}

    def install(self) -> PreemptionFlag:
        for sig in self.signals:
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def uninstall(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
        self._previous.clear()

    def _handle(self, signum: int, frame: Any) -> None:
        if self._set:
            self.uninstall()
            signal.raise_signal(signum)
            return
        self._set = True
        log.warning("received %s: will save a checkpoint and stop", signal.Signals(signum).name)

    def set(self) -> None:
        self._set = True

    def is_set(self) -> bool:
        """This process's flag (no communication)."""
        return self._set

    def should_stop(self) -> bool:
        """Whether any process was signalled. With several processes this is a collective (a tiny
        all-gather): every process must call it at the same steps, e.g. every N steps."""
        if jax.process_count() == 1:
            return self._set
        from jax.experimental import multihost_utils

        flags = multihost_utils.process_allgather(np.asarray(self._set, np.int32))
        return bool(np.any(flags))

    def __enter__(self) -> PreemptionFlag:
        return self if self._previous else self.install()

    def __exit__(self, *exc) -> None:
        self.uninstall()


def install_sigterm_handler() -> PreemptionFlag:
    """Install a SIGTERM handler that sets and returns a :class:`PreemptionFlag`."""
    return PreemptionFlag().install()
