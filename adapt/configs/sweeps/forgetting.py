r"""Forgetting: SST-2 accuracy after adapting the same MiniLM to Banking77 (separate heads).

  python -m experiments.sweep --config=configs/sweeps/forgetting.py

Setup: all-MiniLM-L6-v2 fully fine-tuned on 5,000 SST-2 sentences (configs/text/minilm.py's
all-data recipe) and exported. Grid (configs/text/forgetting.py): starting from that export with
a new 77-way head, Banking77 with 10 labelled examples per intent by plain fine-tuning, LoRA (the
encoder stays frozen, so only the adapters can move SST-2's features), L2-SP (alpha 0.1) and EWC
at three strengths (1e4, 1e6, 1e8: with Adam, strengths past the point where the penalty
dominates behave alike, so they span decades), and the logistic regression on the frozen SST-2
encoder (the target task's baseline, which forgets nothing); 2 seeds each (14 runs), the
recipe's learning rates. Reported: SST-2 dev accuracy after the second task with the frozen SST-2 head
(``source_eval.accuracy``), Banking77 test accuracy, and the curve of SST-2 accuracy during the
second task (source_curve.csv / source_curve.png). Writes results/forgetting/.

Result (2026-12-04, AMD EPYC, 2 cores, 73 minutes two at a time, with other jobs on the machine;
results/forgetting/): the SST-2 model has 0.837 dev accuracy. After the Banking77 task, SST-2 dev
accuracy (mean of 2 seeds) is 0.833 for full fine-tuning and L2-SP, 0.835 for LoRA and 0.837 for
EWC at each strength; Banking77 test accuracy is 0.839 (full), 0.840 (L2-SP), 0.845 (LoRA), 0.846 /
0.841 / 0.840 (EWC 1e4 / 1e6 / 1e8), against 0.841 for the logistic regression on the frozen SST-2
encoder. The recipe's validation selection keeps 0-5 epochs of the 616 training examples, and in
5 of the 12 trained runs the probed head alone (refit.selected_epochs 0 in results.json: the
encoder is unchanged), so no run loses more than 0.9 points of SST-2 accuracy: at this budget
the regularisers have little to prevent.
``smoke=True`` runs everything at a few steps (wiring only).
"""

import ml_collections

SEEDS = [0, 1]


def get_config(arg=None):
    smoke = arg == "smoke"
    extra = {"smoke": True} if smoke else {}
    common = {"source": "{setup.sst2}/export_native", "per_class": 10, **extra}
    c = ml_collections.ConfigDict()
    c.name = "forgetting" + ("_smoke" if smoke else "")
    c.setup = {
        "sst2": dict(
            base="configs/text/minilm.py",
            args={
                "dataset": "sst2",
                "method": "full",
                "per_class": 0,
                "train_examples": 5000,
                "export": True,
                **extra,
            },
        )  # fmt: skip
    }
    c.parts = [
        dict(
            name="plain",
            base="configs/text/forgetting.py",
            grid={"method": ["logistic_regression", "full", "lora", "l2sp"], "seed": SEEDS},
            fixed=common,
        ),
        dict(
            name="ewc",
            base="configs/text/forgetting.py",
            grid={"strength": [1e4, 1e6, 1e8], "seed": SEEDS},
            fixed={"method": "ewc", **common},
        ),
    ]
    c.group_by = ["method", "strength"]
    c.metrics = ["source_eval.accuracy", "accuracy"]
    c.curves = [{"key": "source_curve", "x": "step", "y": "accuracy"}]
    c.parallel = 2
    return c
