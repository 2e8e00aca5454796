r"""Transfer with few and many labels: every adaptation method of all-MiniLM-L6-v2 against the
baseline a reviewer runs first, on Banking77 and SST-2.

  python -m experiments.sweep --config=configs/sweeps/transfer.py        # every method
  python -m experiments.sweep --config=configs/sweeps/transfer.py:core   # the core rows

Every run is configs/text/minilm.py (one process each), the same recipe for every method
(mean pooling, the head started from a converged probe, epochs, validation carved from the
labelled examples, early stopping; see that file). Rows: logistic_regression (scikit-learn's
LogisticRegression, C=10, on the frozen model's mean-pooled features of the same labelled
examples: the baseline), linear_probe (adapt's L-BFGS fit of the same), full fine-tuning, LoRA
r=8 on query/value, Houlsby adapters, prefix tuning, IA3, BitFit, and scratch (the same
architecture from random weights). Budgets: Banking77 10 labelled examples per intent and all
10,003; SST-2 10 and 50 per class. 3 seeds (each seed draws its own labelled sample). The
learning rate of each trainable method is chosen per budget from 0.3x, 1x and 3x the recipe's on
the validation split of seed 0 (selection.csv); the other seeds run at the chosen one. Reported:
mean +- std of accuracy and macro-F1 on the full held-out sets, the difference from the baseline
at the same budget, the chosen learning-rate scale, trainable percentage and wall time. Writes
results/transfer/ (summary.md/csv, runs.csv, selection.csv, plot.png). Resumable.

``core`` is the part of the study that fits a 2-core CPU session (56 runs, 2 hours measured while
a test suite and the demo shared the cores): the baseline, the linear probe, full fine-tuning and
LoRA; Banking77 10 per intent (3 seeds) and all the data (seed 0), SST-2 10 and 50 per class (3
seeds); the same selection of the learning rate.
It writes results/transfer_core/.

``banking77_all`` is Banking77 with all 10,003 training examples, 3 seeds: the baseline, the probe,
full fine-tuning and LoRA (learning rate chosen on seed 0 as above; those seed-0 candidates are the
transfer_core runs, copied into this study's workdir root, so they are not rerun), and Houlsby
adapters, prefix tuning, IA3 and BitFit at the recipe's learning rate, untuned (their selection
would triple the seed-0 cost, which did not fit the session). It writes
results/transfer_banking77_all/.

``few_labels`` is the few-label budgets (Banking77 10 per intent, SST-2 10 and 50 per class, 3 seeds)
for the methods ``core`` leaves out: Houlsby adapters, prefix tuning, IA3 and BitFit, at the
recipe's learning rate, untuned as in ``banking77_all``, with the baseline recomputed beside them
(the same deterministic fit as in transfer_core). It writes results/transfer_few_labels/
(45 runs, about 2 h 15 min two at a time on 2 cores). Result: Banking77 10 per intent, all four
within 0.002 below the baseline (0.843); SST-2, the probed head kept in 19 of 24 runs (the
``refit.selected_epochs`` column: 4 or 20 validation sentences cannot tell training from step 0).

Result and cost: see results/transfer*/summary.md and the README's Results section.
``smoke`` runs the whole grid at a few steps on a few examples (wiring only).
"""

import ml_collections

METHODS = ["logistic_regression", "linear_probe", "full", "lora", "houlsby", "prefix", "ia3",
           "bitfit", "scratch"]  # fmt: skip
SEEDS = [0, 1, 2]
FIXED_RECIPES = ["logistic_regression", "linear_probe", "scratch"]  # no learning rate to choose


CORE_METHODS = ["logistic_regression", "linear_probe", "full", "lora"]
UNTUNED = ["houlsby", "prefix", "ia3", "bitfit"]  # banking77_all: the recipe's learning rate


def get_config(arg=None):
    if arg not in (None, "", "smoke", "core", "banking77_all", "few_labels"):
        raise ValueError(
            "transfer.py takes no argument, 'core', 'banking77_all', 'few_labels' or 'smoke', "
            f"got {arg!r}"
        )
    smoke, core, b77_all = arg == "smoke", arg == "core", arg == "banking77_all"
    few = arg == "few_labels"
    fixed = {"smoke": True} if smoke else {}
    if core:
        methods = CORE_METHODS
    elif b77_all:
        methods = CORE_METHODS + UNTUNED
    elif few:
        methods = ["logistic_regression"] + UNTUNED
    else:
        methods = METHODS
    c = ml_collections.ConfigDict()
    c.name = "transfer" + ("_" + arg if arg else "")

    def part(name, dataset, per_class, seeds):
        return dict(
            name=name,
            base="configs/text/minilm.py",
            grid={"per_class": per_class, "method": methods, "seed": seeds},
            fixed={"dataset": dataset, **fixed},
        )

    if core:  # Banking77's all-data runs are the long ones: one seed
        c.parts = [
            part("banking77", "banking77", [10], SEEDS),
            part("banking77_all", "banking77", [0], [0]),
            part("sst2", "sst2", [10, 50], SEEDS),
        ]
    elif b77_all:
        c.parts = [part("banking77_all", "banking77", [0], SEEDS)]
    elif few:
        c.parts = [
            part("banking77", "banking77", [10], SEEDS),
            part("sst2", "sst2", [10, 50], SEEDS),
        ]
    else:
        c.parts = [
            part("banking77", "banking77", [10, 0], SEEDS),
            part("sst2", "sst2", [10, 50], SEEDS),
        ]
    c.select = dict(
        by="val.accuracy",
        grid={"lr_scale": [0.3, 1.0, 3.0]},
        seeds=[0],
        skip={"method": FIXED_RECIPES + (UNTUNED if b77_all or few else [])},
    )
    c.group_by = ["per_class", "method"]
    c.metrics = ["accuracy", "macro_f1", "val.accuracy", "refit.selected_epochs"]
    c.baseline = {"method": "logistic_regression"}  # summary.md: accuracy minus the baseline's
    c.plot = {
        "x": "per_class",
        "series": "method",
        "y": "accuracy",
        "x_order": [10, 50, 0],  # budgets left to right, the whole training set last
        "x_labels": {"0": "all"},
    }
    c.parallel = 2
    return c
