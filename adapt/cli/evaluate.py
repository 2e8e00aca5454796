r"""Evaluate a run's newest checkpoint, on its own eval set or another split of the same data.

  adapt-evaluate --workdir=workdirs/sst2_lora
  adapt-evaluate --workdir=workdirs/banking77_lora --data=eval_split=train

Prints the metrics as JSON and writes them to <workdir>/evaluations.jsonl.
"""

from __future__ import annotations

import json
from pathlib import Path

from absl import flags, logging

from adapt import xla_defaults
from adapt.config import ConfigError
from adapt.harness import command_line

_WORKDIR = flags.DEFINE_string("workdir", None, "A run's workdir (holds config.json, checkpoints).")
_DATA = flags.DEFINE_multi_string("data", [], "key=value overrides of the data section.")


def _parse(item: str):
    key, sep, value = item.partition("=")
    if not sep:
        raise ConfigError(f"--data expects key=value, got {item!r}")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def main(argv):
    del argv
    if not _WORKDIR.value:
        raise ConfigError("--workdir is required: the workdir of a finished or running run")
    overrides = dict(_parse(d) for d in _DATA.value)
    xla_defaults.apply()
    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)
    from adapt.harness.loop import evaluate_workdir

    result = evaluate_workdir(_WORKDIR.value, overrides)
    print(json.dumps(result, indent=2))
    with open(Path(_WORKDIR.value) / "evaluations.jsonl", "a") as f:
        f.write(json.dumps(result) + "\n")


def run() -> None:
    """The ``adapt-evaluate`` console script."""
    command_line.main(main, doc=__doc__)


if __name__ == "__main__":
    run()
