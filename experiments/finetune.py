r"""Fine-tune / adapt a pretrained model as a config says.

  python -m experiments.finetune --config=configs/glue/sst2_minilm.py:method=lora \
      --workdir=workdirs/sst2_lora [--config.train.steps=400] [--config.optim.groups.lora.lr=3e-4]

Re-running with the same workdir resumes from its newest checkpoint; a workdir of another
experiment is refused. Multi-process: pass --coordinator=host:port --num_processes=N
--process_id=i (CPU collectives use gloo).
"""

from __future__ import annotations

import json

from absl import app, flags, logging
from ml_collections import config_flags

from adapt import xla_defaults

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Config file (path[:arg]).", lock_config=True
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Where checkpoints, logs and results go.")
_COORD = flags.DEFINE_string("coordinator", None, "host:port of process 0 (multi-process runs).")
_NPROC = flags.DEFINE_integer("num_processes", 1, "Number of processes.")
_PID = flags.DEFINE_integer("process_id", 0, "This process's index.")
_CPU_DEVICES = flags.DEFINE_integer("cpu_devices", 0, "Fake this many CPU devices per process.")


def main(argv):
    del argv
    xla_defaults.apply()
    import jax

    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO

    if _CPU_DEVICES.value:
        jax.config.update("jax_num_cpu_devices", _CPU_DEVICES.value)
    if _COORD.value:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(
            coordinator_address=_COORD.value, num_processes=_NPROC.value, process_id=_PID.value
        )
    from adapt.harness.loop import run

    results = run(_CONFIG.value, _WORKDIR.value)
    if jax.process_index() == 0:
        print(json.dumps(results, indent=2))


if __name__ == "__main__":
    flags.mark_flags_as_required(["config", "workdir"])
    app.run(main)
