r"""Run a grid of experiments and summarise them (resumable: finished runs are skipped).

  adapt-sweep --config=configs/sweeps/transfer.py:core \
      [--workdirs=workdirs/sweeps] [--out=results/transfer_core] [--config.parallel=1]

Writes runs.csv (one row per run), summary.csv and summary.md (mean ± std over seeds) and
plot.png (and selection.csv when the sweep chooses a value on validation data); see
adapt/studies/sweep.py for the sweep config format. Exit status as
adapt-finetune: 2 for a bad sweep config or a run that stopped on bad input, 75 when a
run was preempted (run the same command to continue).
"""

from __future__ import annotations

from pathlib import Path

from absl import flags

from adapt import xla_defaults
from adapt.harness import command_line

_CONFIG = flags.DEFINE_string("config", None, "Sweep config file and argument: path[:arg].")
_WORKDIRS = flags.DEFINE_string("workdirs", "workdirs/sweeps", "Root of the runs' workdirs.")
_OUT = flags.DEFINE_string("out", None, "Where tables and plots go (default results/<name>).")
_FLAGS = flags.DEFINE_multi_string("run_flag", [], "Extra flags for every run (e.g. --config.x=y).")


def main(argv):
    del argv
    from adapt.studies.sweep import load_sweep, run_sweep

    sweep = load_sweep(_CONFIG.value, command_line.overrides())
    xla_defaults.apply()
    out = Path(_OUT.value or f"results/{sweep.name}")
    run_sweep(sweep, Path(_WORKDIRS.value) / sweep.name, out, _FLAGS.value)
    print((out / "summary.md").read_text())


def run() -> None:
    """The ``adapt-sweep`` console script."""
    command_line.main(main, doc=__doc__)


if __name__ == "__main__":
    run()
