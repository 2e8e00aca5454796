r"""Forgetting: MiniLM fine-tuned on SST-2, then on Banking77 with a separate head; how much SST-2
dev accuracy survives the second task, for plain fine-tuning, EWC, L2-SP and LoRA.

First the source run, which exports the SST-2 model (full fine-tuning, 1,000 steps):

  python -m experiments.finetune --config=configs/glue/sst2_minilm.py:method=full,export=True \
      --workdir=workdirs/sst2_full
  python -m experiments.finetune --config=configs/glue/forgetting_minilm.py:method=ewc,\
strength=1e6,source=workdirs/sst2_full/export_hf --workdir=workdirs/forget_ewc_1e6

The second run starts from that export with a new 77-way head (methods full | lora | ewc | l2sp;
ewc and l2sp are full fine-tuning plus the penalty of adapt/harness/regularize.py, `strength`
being EWC's lambda or L2-SP's alpha) and evaluates the SST-2 dev set (872) with the current
encoder and the frozen exported SST-2 head at step 0, every steps/5 steps and at the end:
results.json holds "source_eval" (after the second task) and "source_curve"; metrics.jsonl the
same rows under split "source". EWC's Fisher comes from 256 SST-2 training sentences.
Banking77 accuracy is on its full test set, as in banking77_minilm.py, once, at the end. The backbone of full,
ewc and l2sp is not gradient-clipped (a strong penalty would dominate the clipped norm; see
adapt/harness/regularize.py); with Adam, strengths beyond the point where the penalty dominates
the task gradient all behave alike, so sweep strength over decades (e.g. ewc 1e2..1e8).
Expected result (configs/sweeps/forgetting.py, the source run at 300 steps, 100 Banking77 steps at
10 per intent, 2 seeds): SST-2 dev 0.843 before; after, 0.813 plain, 0.820 L2-SP (0.1), 0.822 LoRA,
0.830 / 0.838 / 0.843 EWC 1e4 / 1e6 / 1e8, at Banking77 test accuracy 0.48, 0.46, 0.38,
0.47 / 0.42 / 0.37. About 5 min per plain run and 8 min per EWC run on the project's 2-core CPU.
Arguments: method, strength (0 = the method's default), per_class, steps, source, seed, smoke.
"""

from adapt.harness.config import parse_arg
from configs.glue import banking77_minilm, sst2_minilm

METHODS = {"full": "full", "lora": "lora", "ewc": "full", "l2sp": "full"}  # -> the harness method
DEFAULT_STRENGTH = {"ewc": 1e6, "l2sp": 0.1}  # untuned starting points: sweep them


def get_config(arg=None):
    arg = parse_arg(
        arg, method="full", strength=0.0, per_class=30, steps=600, source="", seed=0, smoke=False
    )
    if arg.method not in METHODS:
        raise ValueError(f"unknown method {arg.method!r}; choose from {sorted(METHODS)}")
    if not arg.source:
        raise ValueError(
            "forgetting_minilm needs source=<export_hf dir of an SST-2 run>; make one with "
            "configs/glue/sst2_minilm.py:method=full,export=True (see this file's docstring)"
        )
    c = banking77_minilm.get_config(
        f"method={METHODS[arg.method]},per_class={arg.per_class},steps={arg.steps},"
        f"seed={arg.seed},smoke={arg.smoke}"
    )
    steps = c.train.steps
    if METHODS[arg.method] == "full":  # no backbone clipping: it defeats a strong penalty
        c.optim.groups.backbone.clip_norm = 0.0  # (adapt/harness/regularize.py); same for all
    c.train.eval_every = 0  # the target once, at the end: the source curve is the point here
    c.model.path = arg.source  # the SST-2 export; its 2-way head is replaced by a 77-way one
    c.data.tokenizer = "all-MiniLM-L6-v2"  # an export holds weights and config only
    source_data = dict(sst2_minilm.DATA)
    c.source_task = dict(
        path=arg.source,
        data=source_data,
        eval_every=max(steps // 5, 1),
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
        raise ValueError(f"strength applies to ewc and l2sp, not {arg.method!r}")
    if arg.smoke:
        c.source_task.data.update(eval_max_examples=32, max_length=32, bucket_boundaries=(32,))
        c.source_task.eval_every = 2
        if arg.method == "ewc":
            c.regularizer.fisher_examples = 8
            c.regularizer.fisher_batch_size = 4
            c.regularizer.fisher_data.update(max_length=32, bucket_boundaries=(32,))
    return c
