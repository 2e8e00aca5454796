r"""Forgetting: SST-2 accuracy after fine-tuning the same MiniLM on Banking77 (separate heads).

  python -m experiments.sweep --config=configs/sweeps/forgetting.py

Setup: all-MiniLM-L6-v2 fully fine-tuned on SST-2 (configs/glue/sst2_minilm.py, 300 steps) and
exported. Grid (configs/glue/forgetting_minilm.py): starting from that export with a new 77-way
head, 100 steps on Banking77 with 10 labelled examples per intent, by plain fine-tuning, LoRA
(the encoder stays frozen, so only the adapters can move SST-2's features), L2-SP (alpha 0.1)
and EWC at three strengths (1e4, 1e6, 1e8: with Adam, strengths past the point where the penalty
dominates behave alike, so they span decades); 2 seeds each (12 runs). Reported: SST-2 dev accuracy after
the second task with the frozen SST-2 head (``source_eval.accuracy``), Banking77 test accuracy,
and the curve of SST-2 accuracy during the second task, every 20 steps (source_curve.csv /
source_curve.png). Writes results/forgetting/.
Cost: 43 min on the project's 2-core CPU (setup 392 s; plain/LoRA/L2-SP runs 220-300 s, EWC runs
450-475 s with the Fisher pass, two at a time).
Measured (2026-11-23): SST-2 dev accuracy 0.843 after the setup falls to 0.813 with plain fine-tuning,
0.820 with L2-SP, 0.822 with LoRA, 0.830 / 0.838 / 0.843 with EWC 1e4 / 1e6 / 1e8, while Banking77
accuracy goes 0.476 (plain), 0.465, 0.379, 0.468 / 0.417 / 0.366: the penalties trade the new
task for the old one, EWC 1e4 keeps more SST-2 at the same Banking77 accuracy as plain.
``smoke=True`` runs everything at 4 steps (wiring only).
"""

import ml_collections

SEEDS = [0, 1]


def get_config(arg=None):
    smoke = arg == "smoke"
    extra = {"smoke": True} if smoke else {}
    common = {"source": "{setup.sst2}/export_hf", "per_class": 10, "steps": 100, **extra}
    c = ml_collections.ConfigDict()
    c.name = "forgetting" + ("_smoke" if smoke else "")
    c.setup = {
        "sst2": dict(
            base="configs/glue/sst2_minilm.py",
            args={"method": "full", "export": True, "steps": 300, **extra},
        )
    }
    c.parts = [
        dict(
            name="plain",
            base="configs/glue/forgetting_minilm.py",
            grid={"method": ["full", "lora", "l2sp"], "seed": SEEDS},
            fixed=common,
        ),
        dict(
            name="ewc",
            base="configs/glue/forgetting_minilm.py",
            grid={"strength": [1e4, 1e6, 1e8], "seed": SEEDS},
            fixed={"method": "ewc", **common},
        ),
    ]
    c.group_by = ["method", "strength"]
    c.metrics = ["source_eval.accuracy", "accuracy"]
    c.curves = [{"key": "source_curve", "x": "step", "y": "accuracy"}]
    c.parallel = 2
    return c
