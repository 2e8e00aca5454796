r"""Few-label text classification on all-MiniLM-L6-v2: one recipe across datasets and budgets.

  python -m experiments.finetune \
      --config=configs/glue/few_labels.py:dataset=banking77,method=lora,per_class=10,seed=0 \
      --workdir=workdirs/few_labels_b77_lora_10

The base of the ``transfer_vs_scratch`` sweep (configs/sweeps/transfer_vs_scratch.py, which
quotes the measured results). ``per_class`` labelled examples of every class are drawn with the
run's seed (so seeds vary the sample as well as the initialisation); ``per_class=0`` takes the
whole training set (Banking77: 10,003; SST-2: the config's 20,000 sentences). Evaluation is on the
full held-out set (Banking77 test: 3,080; SST-2 dev: 872). The number of steps follows the budget
(``STEPS``): a fixed small compute budget per run, as few-shot studies use, rather than a number
of epochs, so every method gets the same updates. Methods and learning rates are
configs/glue/text_classification.py's, except the linear probe's head LR (``PROBE_LR``): a probe on
frozen features needs a larger step than a head trained along with the encoder.
``wise=True`` also evaluates the WiSE-FT interpolation between the start of the last training
stage and the final weights at 11 alphas (configs/sweeps/lp_ft_wise.py).
Arguments: dataset (banking77 | sst2), method, per_class, seed, wise, smoke.
"""

from adapt.harness.config import parse_arg
from configs.glue import banking77_minilm, sst2_minilm

DATASETS = {"banking77": banking77_minilm, "sst2": sst2_minilm}
STEPS = {10: 100, 30: 150, 50: 150, 200: 250, 0: 300}  # per_class -> steps
PROBE_LR = 1e-2


def get_config(arg=None):
    arg = parse_arg(
        arg, dataset="banking77", method="lora", per_class=10, seed=0, wise=False, smoke=False
    )
    if arg.dataset not in DATASETS:
        raise ValueError(f"unknown dataset {arg.dataset!r}; choose from {sorted(DATASETS)}")
    if arg.per_class not in STEPS:
        raise ValueError(f"per_class must be one of {sorted(STEPS)} (the budgets STEPS sizes)")
    steps = STEPS[arg.per_class]
    base_arg = f"method={arg.method},steps={steps},seed={arg.seed},smoke={arg.smoke}"
    if arg.dataset == "banking77":
        c = banking77_minilm.get_config(f"{base_arg},per_class={arg.per_class}")
        num_classes = 77
    else:
        c = sst2_minilm.get_config(base_arg)
        if arg.per_class:
            c.data.examples_per_class = arg.per_class
        num_classes = 2
    if arg.method == "linear_probe":
        c.optim.default.lr = PROBE_LR
        c.optim.groups.head.lr = PROBE_LR
    if arg.per_class and not arg.smoke:
        # never a batch larger than half the labelled set (SST-2 at 10 per class has 20)
        c.train.batch_size = min(c.train.batch_size, max(arg.per_class * num_classes // 2, 8))
    if arg.wise:
        c.wise_ft = dict(alphas=[round(0.1 * i, 1) for i in range(11)])
    if not arg.smoke:
        c.checkpoint.every = 0  # short runs: one checkpoint, at the end
    return c
