r"""Transfer vs training from scratch with few labels: all-MiniLM-L6-v2 on Banking77 and SST-2.

  python -m experiments.sweep --config=configs/sweeps/transfer_vs_scratch.py

Every run is configs/glue/few_labels.py (one process each): 8 methods (scratch = the same
architecture from random init; linear probe; full fine-tuning; LoRA r=8 on query/value; Houlsby
adapters; prefix tuning; IA3; BitFit) x budgets (Banking77: 10 labelled examples per intent and
all 10,003; SST-2: 10 and 50 per class) x 3 seeds (each seed draws its own labelled sample) =
96 runs, reported as mean +- std of accuracy and macro-F1 on the full held-out sets,
trainable-parameter percentage and wall time. Writes results/transfer_vs_scratch/ (summary.md,
summary.csv, runs.csv, plot.png). Resumable: rerunning skips finished runs.

Cost: about 3.5 hours on the project's 2-core CPU (two runs at a time), over the one-hour target:
96 separate processes, each with about a minute of start-up, compilation and evaluation on the full
held-out set besides its training steps. Measured so far, two runs sharing the 2 cores: Banking77
at 10 per intent 1-4 minutes per run; all of Banking77 (300 steps of 32 sentences) about 9.5
minutes for full fine-tuning and 5 for LoRA. The exact total and the results go here once the sweep
has completed on a quiet machine.
``smoke=True`` runs the whole grid at 4 steps on 64 examples (for checking the wiring).
"""

import ml_collections

METHODS = ["scratch", "linear_probe", "full", "lora", "houlsby", "prefix", "ia3", "bitfit"]
SEEDS = [0, 1, 2]


def get_config(arg=None):
    smoke = arg == "smoke"
    fixed = {"smoke": True} if smoke else {}
    c = ml_collections.ConfigDict()
    c.name = "transfer_vs_scratch" + ("_smoke" if smoke else "")
    c.parts = [
        dict(
            name="banking77",
            base="configs/glue/few_labels.py",
            grid={"per_class": [10, 0], "method": METHODS, "seed": SEEDS},
            fixed={"dataset": "banking77", **fixed},
        ),
        dict(
            name="sst2",
            base="configs/glue/few_labels.py",
            grid={"per_class": [10, 50], "method": METHODS, "seed": SEEDS},
            fixed={"dataset": "sst2", **fixed},
        ),
    ]
    c.group_by = ["per_class", "method"]
    c.metrics = ["accuracy", "macro_f1"]
    c.baseline = {"method": "scratch"}  # summary.md: accuracy minus scratch's, per budget
    c.plot = {"x": "per_class", "series": "method", "y": "accuracy"}
    c.parallel = 2
    return c
