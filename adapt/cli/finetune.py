r"""Fine-tune / adapt a pretrained model as a config says.

  adapt-finetune --config=configs/text/minilm.py:dataset=sst2,method=lora \
      --workdir=workdirs/sst2_lora [--config.train.steps=400] [--config.optim.groups.lora.lr=3e-4]

Any key of the run config can be set with --config.<key path>=<value> (adapt/config/schema.py
lists them with their defaults). Re-running with the same workdir resumes from its newest
checkpoint; a finished run is left as it is; a workdir of another experiment is refused.
Multi-process: --coordinator=host:port --num_processes=N --process_id=i (CPU collectives use
gloo); processes wait at most --coordinator_timeout seconds for each other. In a SLURM
multi-task job (or a TPU pod), --distributed_auto reads all three from the environment.

Exit status: 0 done (or already finished); 2 a bad config, data file, checkpoint or flag (one
line on stderr, --verbose for the traceback); 75 preempted by SIGTERM after saving a checkpoint
(run the same command to resume).
"""

from __future__ import annotations

import json
import sys

from absl import flags, logging

from adapt import xla_defaults
from adapt.errors import PREEMPTED_EXIT_CODE
from adapt.harness import command_line

_CONFIG = flags.DEFINE_string("config", None, "Config file and argument: path[:arg].")
_WORKDIR = flags.DEFINE_string("workdir", None, "Where checkpoints, logs and results go.")
_COORD = flags.DEFINE_string("coordinator", None, "host:port of process 0 (multi-process runs).")
_NPROC = flags.DEFINE_integer("num_processes", 1, "Number of processes.")
_PID = flags.DEFINE_integer("process_id", 0, "This process's index.")
_TIMEOUT = flags.DEFINE_integer(
    "coordinator_timeout", 300, "Seconds the processes of a multi-process run wait for each other."
)
_CPU_DEVICES = flags.DEFINE_integer("cpu_devices", 0, "Fake this many CPU devices per process.")
_AUTO = flags.DEFINE_bool(
    "distributed_auto",
    False,
    "Initialise jax.distributed from the cluster's environment (a SLURM multi-task job, a TPU "
    "pod): what the sweep's submitit launcher passes to the tasks of a multi-process point.",
)


def main(argv):
    del argv
    from adapt.harness import processes

    processes.check_flags(_COORD.value, _NPROC.value, _PID.value, _TIMEOUT.value)
    if not _WORKDIR.value:
        raise command_line.ConfigError("--workdir is required: where the run's files go")
    config = command_line.config_from_flag(_CONFIG.value)
    xla_defaults.apply()
    import jax

    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO
    if _CPU_DEVICES.value:
        jax.config.update("jax_num_cpu_devices", _CPU_DEVICES.value)
    if _COORD.value and _AUTO.value:
        raise command_line.ConfigError("give --coordinator or --distributed_auto, not both")
    if _COORD.value:
        processes.initialize(_COORD.value, _NPROC.value, _PID.value, _TIMEOUT.value)
    elif _AUTO.value:
        jax.distributed.initialize()  # coordinator, count and index from the job environment
    from adapt.harness.loop import run

    results = run(config, _WORKDIR.value)
    if jax.process_index() == 0:
        print(json.dumps({k: v for k, v in results.items() if k != "fingerprint"}, indent=2))
    if results.get("preempted"):
        print(
            f"preempted at step {results['stopped_at']}: checkpoint saved; run the same command "
            "to resume",
            file=sys.stderr,
        )
        sys.exit(PREEMPTED_EXIT_CODE)


def run() -> None:
    """The ``adapt-finetune`` console script."""
    command_line.main(main, doc=__doc__)


if __name__ == "__main__":
    run()
