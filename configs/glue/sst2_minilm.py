r"""SST-2 sentiment (GLUE) on all-MiniLM-L6-v2 with any adaptation method.

  python -m experiments.finetune --config=configs/glue/sst2_minilm.py:method=lora \
      --workdir=workdirs/sst2_lora

Trains on `train_examples` sentences of the vendored GLUE train set (default 20,000; all 67,349
with train_examples=0) and evaluates on the full dev set (872). Expected with the defaults
(2 CPU cores, measured 2026-11-23): LoRA dev accuracy 0.866 in 500 s; linear probe 0.570 in 211 s.
LP-FT vs fine-tuning with the WiSE-FT curve over alpha (results.json "wise_ft"):

  python -m experiments.finetune --config=configs/glue/sst2_minilm.py:method=lp_ft,wise=True \
      --workdir=workdirs/sst2_lp_ft_wise
  python -m experiments.finetune --config=configs/glue/sst2_minilm.py:method=full,wise=True \
      --workdir=workdirs/sst2_full_wise

export=True writes the trained model to <workdir>/export_hf: the source model of
configs/glue/forgetting_minilm.py.
Arguments: method (see configs/glue/text_classification.py), steps, train_examples, wise, export,
seed, smoke.
"""

from adapt.harness.config import parse_arg
from configs.glue.text_classification import base_config

DATA = dict(  # the vendored GLUE SST-2 (also the source task of forgetting_minilm.py)
    kind="text",
    source="third_party/sst2",
    train_split="train",
    eval_split="dev",
    text_column="sentence",
    label_column="label",
    label_names=["negative", "positive"],
    delimiter="\t",
    max_length=64,
    bucket_boundaries=(16, 32, 64),
)


def get_config(arg=None):
    arg = parse_arg(
        arg,
        method="lora",
        steps=1000,
        train_examples=20000,
        wise=False,
        export=False,
        seed=0,
        smoke=False,
    )
    data = dict(DATA)
    if arg.train_examples:
        data["max_examples"] = arg.train_examples
    return base_config(arg, data=data, steps=arg.steps, head_lr=1e-3)
