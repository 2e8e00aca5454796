"""`make demo`: LoRA vs a linear probe on all-MiniLM-L6-v2 for SST-2 sentiment, on 2 CPU cores.

Both runs use configs/text/minilm.py's recipe on SST-2 (``ARGS``): the linear probe fits a
logistic regression to convergence on the frozen model's mean-pooled features; LoRA starts from
that fitted head and trains rank-8 adapters for ``ARGS`` epochs, keeping the weights of its best
evaluation on a validation split carved from the training sentences. Both are evaluated on the
full SST-2 dev set (872 sentences). The measured result and time are in the README ("Set up and
run"). Prints a table and writes a plot of LoRA's learning curve (with the probe for reference)
to workdirs/demo/demo.png. Re-running reuses finished runs (their workdirs hold the results), so
a second `make demo` only prints. ``--smoke`` runs a seconds-long version (used by the tests).
"""

from __future__ import annotations

import time
from pathlib import Path

from absl import flags, logging

from adapt import xla_defaults
from adapt.errors import PREEMPTED_EXIT_CODE
from adapt.harness import command_line
from adapt.harness.command_line import load_config_file
from adapt.harness.loop import run
from adapt.metrics import read_metrics

CONFIG = "configs/text/minilm.py"
ARGS = "dataset=sst2,per_class=0,train_examples=20000,epochs=2"  # see configs/text/minilm.py
_ROOT = flags.DEFINE_string("root", "workdirs/demo", "Where the two runs' workdirs go.")
_SMOKE = flags.DEFINE_bool("smoke", False, "A few steps on a few examples (for tests).")


def plot(lora: Path, lora_dev: float, probe_dev: float, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = read_metrics(lora / "metrics.jsonl")
    train = [r for r in records if r["split"] == "train"]
    val = [r for r in records if r["split"] == "val"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    left.plot([r["step"] for r in train], [r["loss"] for r in train], label="LoRA")
    left.set_xlabel("step")
    left.set_ylabel("training cross-entropy")
    # The curve is on the validation split carved from the training sentences (what selects
    # LoRA's weights); the lines are the dev-set results of both (the probe has no validation
    # split: it fits on every training sentence, with nothing to select).
    right.plot([r["step"] for r in val], [r["accuracy"] for r in val], "o-", label="LoRA, val")
    right.axhline(lora_dev, color="C0", ls=":", label="LoRA (selected), dev")
    right.axhline(probe_dev, color="gray", ls="--", label="linear probe, dev")
    right.set_xlabel("step")
    right.set_ylabel("accuracy")
    for ax in (left, right):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle("SST-2 on all-MiniLM-L6-v2")
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)


def main(argv) -> None:
    del argv
    xla_defaults.apply()
    logging.set_verbosity(logging.WARNING)
    root = Path(_ROOT.value)
    rows = []
    for method in ("lora", "linear_probe"):
        start = time.perf_counter()
        arg = f"{ARGS},method={method}" + (",smoke" if _SMOKE.value else "")
        results = run(load_config_file(CONFIG, arg), root / method)
        if results.get("preempted"):  # SIGTERM: the run checkpointed; `make demo` resumes it
            print(f"stopped at step {results['stopped_at']}; run `make demo` again to resume")
            raise SystemExit(PREEMPTED_EXIT_CODE)
        rows.append((method, results, time.perf_counter() - start))
    (_, lora, _), (_, probe, _) = rows
    plot(root / "lora", lora["eval"]["accuracy"], probe["eval"]["accuracy"], root / "demo.png")
    print(f"\nSST-2 dev set (872 sentences), all-MiniLM-L6-v2, {_cores()} CPU cores\n")
    head = ("method", "steps", "trainable", "%", "accuracy", "macro-F1", "seconds")
    print("{:<14} {:>6} {:>10} {:>7} {:>9} {:>9} {:>8}".format(*head))
    for method, res, seconds in rows:
        ev = res["eval"]
        print(
            f"{method:<14} {res['steps']:>6} {res['trainable_params']:>10,} "
            f"{res['trainable_pct']:>6.2f}% {ev['accuracy']:>9.4f} {ev['macro_f1']:>9.4f} "
            f"{seconds:>8.0f}"
        )
    print(
        f"\nlearning curves: {root / 'demo.png'}; logs, checkpoints, TensorBoard: {root}/<method>/"
    )


def _cores() -> int:
    import os

    return len(os.sched_getaffinity(0))


if __name__ == "__main__":
    command_line.main(main)
