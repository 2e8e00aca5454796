r"""Export the model a finished run reports, from its workdir, without training again.

  adapt-export --workdir=workdirs/sst2_lora --peft
  adapt-export --workdir=workdirs/sst2_full --hf --native --out=exports/sst2

Writes ``export_peft`` (a PEFT adapter directory that ``peft.PeftModel.from_pretrained`` loads
over the base checkpoint, tokenizer files included), ``export_hf`` (a Hugging Face folder, the
methods folded in) and/or ``export_native`` (adapt's own format) into ``--out`` (default: the
workdir), from the weights the run's results.json reports (its refit, its best validation
weights, or its final checkpoint). What cannot be exported is refused before anything is
written, and an existing export folder is never overwritten.
"""

from __future__ import annotations

import json

from absl import flags, logging

from adapt import xla_defaults
from adapt.config import ConfigError
from adapt.harness import command_line

_WORKDIR = flags.DEFINE_string("workdir", None, "A finished run's workdir.")
_OUT = flags.DEFINE_string("out", None, "Where the export_* folders go (default: the workdir).")
_HF = flags.DEFINE_bool("hf", False, "A Hugging Face folder, methods folded into the weights.")
_NATIVE = flags.DEFINE_bool("native", False, "adapt's native folder (keeps any pooling).")
_PEFT = flags.DEFINE_bool("peft", False, "A PEFT adapter directory (LoRA, DoRA, IA3, prompts).")


def main(argv):
    del argv
    if not _WORKDIR.value:
        raise ConfigError("--workdir is required: the workdir of a finished run")
    kinds = [k for k, flag in (("hf", _HF), ("native", _NATIVE), ("peft", _PEFT)) if flag.value]
    if not kinds:
        raise ConfigError("say what to export: --peft, --hf and/or --native")
    xla_defaults.apply()
    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)
    from adapt.harness.workdir_export import export_workdir

    written = export_workdir(_WORKDIR.value, kinds, _OUT.value)
    print(json.dumps({k: str(v) for k, v in written.items()}, indent=2))


def run() -> None:
    """The ``adapt-export`` console script."""
    command_line.main(main, doc=__doc__)


if __name__ == "__main__":
    run()
