r"""LP-FT vs fine-tuning, and the WiSE-FT curve: all-MiniLM-L6-v2 on Banking77 with few labels.

  python -m experiments.sweep --config=configs/sweeps/lp_ft_wise.py

Runs configs/glue/few_labels.py with ``wise=True``: full fine-tuning (random new head) vs LP-FT
(Kumar et al. 2022: a linear probe first, then full fine-tuning from the probed head; the same
total number of steps, 100, split between the two stages) at 10 labelled examples per intent,
3 seeds each. Each run then evaluates WiSE-FT (Wortsman et al. 2022) weight interpolations
``(1 - alpha) * theta_0 + alpha * theta_final`` for alpha = 0, 0.1, ..., 1, where theta_0 is the
start of the last stage (LP-FT: the linear-probed model; fine-tuning: the pretrained encoder with
its freshly initialised head). Writes results/lp_ft_wise/: summary.md/csv (final accuracy,
macro-F1), wise_ft.csv and wise_ft.png (accuracy over alpha, mean +- std over seeds).
Result (results/lp_ft_wise/, 3 seeds, Banking77 test): fine-tuning 0.496 +- 0.013, LP-FT
0.502 +- 0.015 accuracy (a tie within one std at this budget). WiSE-FT adds 4 points to both: the
curve peaks at alpha 0.5 for fine-tuning (0.536) and alpha 0.4 for LP-FT (0.539); alpha 0 is the
random head (0.014) or the linear probe (0.458).
Cost: about 25 minutes on the project's 2-core CPU, two runs at a time: ~8 minutes per run, half
of it the 11 WiSE evaluations of the 3,080 test sentences (measured for 4 of the 6 runs; the
other two ran earlier on a machine loaded with other jobs, so their wall_seconds read ~1,300 s).
``smoke=True`` runs the grid at 4 steps.
"""

import ml_collections


def get_config(arg=None):
    smoke = arg == "smoke"
    c = ml_collections.ConfigDict()
    c.name = "lp_ft_wise" + ("_smoke" if smoke else "")
    c.base = "configs/glue/few_labels.py"
    c.grid = {"per_class": [10], "method": ["full", "lp_ft"], "seed": [0, 1, 2]}
    c.fixed = {"dataset": "banking77", "wise": True, **({"smoke": True} if smoke else {})}
    c.group_by = ["per_class", "method"]
    c.metrics = ["accuracy", "macro_f1"]
    c.baseline = {"method": "full"}  # summary.md: accuracy minus full's, per budget
    c.plot = {"x": "per_class", "series": "method", "y": "accuracy"}
    c.curves = [{"key": "wise_ft", "x": "alpha", "y": "accuracy"}]
    c.parallel = 2
    return c
