r"""Forgetting: all-MiniLM-L6-v2 fine-tuned on SST-2, then adapted to Banking77 with a separate
head; how much SST-2 dev accuracy survives the second task, for plain fine-tuning, EWC, L2-SP and
LoRA.

First the source run, which exports the SST-2 model in adapt's native format (it keeps the mean
pooling):

  python -m experiments.finetune \
      --config=configs/text/minilm.py:dataset=sst2,method=full,train_examples=5000,export=True \
      --workdir=workdirs/sst2_full
  python -m experiments.finetune --config=configs/text/forgetting.py:method=ewc,strength=1e6,\
source=workdirs/sst2_full/export_native --workdir=workdirs/forget_ewc_1e6

The second run is configs/text/minilm.py's Banking77 recipe (``per_class`` labelled examples per
intent, the new 77-way head fitted on the frozen features first, validation, early stopping,
refit) starting from that export (methods full | lora | ewc | l2sp; ewc and l2sp are full
fine-tuning plus the penalty of adapt/harness/regularize.py, ``strength`` being EWC's lambda or
L2-SP's alpha). It evaluates the SST-2 dev set (872) with the current encoder and the frozen
exported SST-2 head at step 0, every epoch and at the end: results.json holds "source_eval"
(after the second task) and "source_curve"; metrics.jsonl the same rows under split "source".
EWC's Fisher comes from 256 SST-2 training sentences. The backbone of full, ewc and l2sp is not
gradient-clipped (a strong penalty would dominate the clipped norm; see
adapt/harness/regularize.py); with Adam, strengths beyond the point where the penalty dominates
the task gradient all behave alike, so sweep strength over decades (configs/sweeps/forgetting.py).
Arguments: method, strength (0 = the method's default), per_class, source, seed, smoke.
"""

from adapt.config import ConfigError, parse_arg
from adapt.configs.text import minilm

# -> minilm method; logistic_regression: the head fitted on the frozen source encoder (no
# forgetting at all: the baseline row of the target task)
METHODS = {"full": "full", "lora": "lora", "ewc": "full", "l2sp": "full",
           "logistic_regression": "logistic_regression"}  # fmt: skip
DEFAULT_STRENGTH = {"ewc": 1e6, "l2sp": 0.1}  # untuned starting points: sweep them


def get_config(arg=None):
    arg = parse_arg(arg, method="full", strength=0.0, per_class=10, source="", seed=0, smoke=False)
    if arg.method not in METHODS:
        raise ConfigError(f"unknown method {arg.method!r}; choose from {sorted(METHODS)}")
    if not arg.source:
        raise ConfigError(
            "forgetting needs source=<export_native dir of an SST-2 run>; make one with "
            "configs/text/minilm.py:dataset=sst2,method=full,export=True (this file's docstring)"
        )
    c = minilm.get_config(
        f"dataset=banking77,method={METHODS[arg.method]},per_class={arg.per_class},"
        f"seed={arg.seed},smoke={arg.smoke}"
    )
    if METHODS[arg.method] == "full":  # no backbone clipping: it defeats a strong penalty
        c.optim.groups.backbone.clip_norm = 0.0  # (adapt/harness/regularize.py); same for all
    c.model.path = arg.source  # the SST-2 export; its 2-way head is replaced by a 77-way one
    c.data.tokenizer = "all-MiniLM-L6-v2"  # an export holds weights and config only
    source_data = dict(minilm.DATASETS["sst2"])
    c.source_task = dict(
        path=arg.source,
        data=source_data,
        eval_every=c.train.eval_every,
        label_names=list(source_data["label_names"]),
    )
    if arg.method in DEFAULT_STRENGTH:
        c.regularizer = dict(
            kind=arg.method, strength=float(arg.strength or DEFAULT_STRENGTH[arg.method])
        )
        if arg.method == "ewc":
            c.regularizer.fisher_examples = 256
            c.regularizer.fisher_data = dict(source_data)  # its train split: SST-2 train
    elif arg.strength:
        raise ConfigError(f"strength applies to ewc and l2sp, not {arg.method!r}")
    if arg.smoke:
        c.source_task.data.update(eval_max_examples=32, max_length=32, bucket_boundaries=(32,))
        c.source_task.eval_every = 2
        if arg.method == "ewc":
            c.regularizer.fisher_examples = 8
            c.regularizer.fisher_batch_size = 4
            c.regularizer.fisher_data.update(max_length=32, bucket_boundaries=(32,))
    return c
