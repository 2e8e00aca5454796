r"""Run a grid of experiments and summarise them (resumable: finished runs are skipped).

  python -m experiments.sweep --config=configs/sweeps/transfer_vs_scratch.py \
      [--workdirs=workdirs/sweeps] [--out=results/transfer_vs_scratch]

Writes runs.csv (one row per run), summary.csv and summary.md (mean ± std over seeds) and
plot.png; see adapt/harness/sweep.py for the sweep config format.
"""

from __future__ import annotations

from pathlib import Path

from absl import app, flags
from ml_collections import config_flags

from adapt import xla_defaults

_CONFIG = config_flags.DEFINE_config_file("config", None, "Sweep config file.", lock_config=True)
_WORKDIRS = flags.DEFINE_string("workdirs", "workdirs/sweeps", "Root of the runs' workdirs.")
_OUT = flags.DEFINE_string("out", None, "Where tables and plots go (default results/<name>).")
_FLAGS = flags.DEFINE_multi_string("run_flag", [], "Extra flags for every run (e.g. --config.x=y).")


def main(argv):
    del argv
    xla_defaults.apply()
    from adapt.harness.sweep import run_sweep

    sweep = _CONFIG.value
    out = Path(_OUT.value or f"results/{sweep.name}")
    summary = run_sweep(sweep, Path(_WORKDIRS.value) / sweep.name, out, _FLAGS.value)
    print((out / "summary.md").read_text())
    del summary


if __name__ == "__main__":
    flags.mark_flags_as_required(["config"])
    app.run(main)
