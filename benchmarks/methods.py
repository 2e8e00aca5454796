"""Per-method cost on all-MiniLM-L6-v2 sequence classification, batch 32 x 128 tokens, AdamW.

    python -m benchmarks.methods [--steps 10] [--methods lora,full] [--dtype bfloat16]

Prints trainable parameters, optimizer-state bytes, compile time and the median step time of
each method, measured in one process with the methods' steps interleaved (one step of each in
turn: a slow spell of a shared machine then slows every method, not the one timed during it, so
the ratios of one run hold even when absolute times swing), and writes
benchmarks/results/methods.json (with the CPU, XLA_FLAGS and compute dtype it ran under).
Targets: the LoRA step at least 1.4x faster than full fine-tuning (issue 20's gate; it has 0.68x
the FLOPs), its optimizer state at most 2% of full fine-tuning's.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from adapt import optim, partition, paths, weights, xla_defaults
from adapt.convert.hf import load_pretrained
from adapt.methods import base, build, recipes
from adapt.step import jit_train_step
from adapt.tasks.classification import cross_entropy
from benchmarks.step_timing import cpu_kind, cpu_name, num_threads

HEAD = r"classifier/.*"
CHOICES = ("full", "linear_probe", "bitfit", "lora", "dora", "ia3", "houlsby", "prefix", "prompt")


def setup(name: str, model, params, ids, mask):
    if name in ("full", "linear_probe", "bitfit"):
        rules = {
            "full": recipes.full_finetune,
            "linear_probe": recipes.linear_probe,
            "bitfit": recipes.bitfit,
        }[name](HEAD)
        return [], params, rules
    method = build(name, "bert")
    extra = base.init(model, params, [method], jax.random.key(1), ids[:2], mask[:2])
    return [method], partition.merge(params, extra), [(HEAD, "head"), *method.rules(), (".*", None)]


def prepare(name: str, model, params, batch) -> dict:
    """Compile ``name``'s step and run it once; returns its sizes and a ``step()`` to time."""
    methods, full, rules = setup(name, model, params, batch["ids"], batch["mask"])
    labels = partition.label(full, rules)
    trainable, frozen = partition.split(full, labels)
    trainable = jax.tree.map(jnp.copy, trainable)  # the step donates it; params are reused
    tl = partition.trainable_labels(labels)
    groups = {lab: {"lr": 1e-4, "weight_decay": 0.01} for lab in set(paths.flatten(tl).values())}
    tx = optim.build(tl, groups, total_steps=1000)
    opt_state = tx.init(trainable)
    state_bytes = sum(x.nbytes for x in jax.tree.leaves(opt_state) if hasattr(x, "nbytes"))

    def loss_fn(p, b, rng):
        logits = base.apply(model, p, methods, b["ids"], b["mask"])["logits"]
        return cross_entropy(logits, b["labels"]), {}

    train_step = jit_train_step(loss_fn, tx)
    state = {"trainable": trainable, "opt_state": opt_state, "i": 0, "loss": None}

    def step() -> float:
        """One step, blocked on; returns its wall seconds."""
        t0 = time.perf_counter()
        state["trainable"], state["opt_state"], loss, _ = train_step(
            state["trainable"], frozen, state["opt_state"], batch, jax.random.key(state["i"])
        )
        loss.block_until_ready()
        state["i"] += 1
        state["loss"] = loss
        return time.perf_counter() - t0

    first = step()  # compiles
    return {
        "method": name,
        "trainable_params": partition.count(trainable),
        "trainable_pct": 100 * partition.count(trainable) / partition.count(full),
        "opt_state_bytes": int(state_bytes),
        "first_step_s": first,
        "step": step,
        "state": state,
    }


def measure(runs: list[dict], steps: int) -> list[dict]:
    """Time the prepared methods' steps in turn (one step of each, ``steps`` times), so a slow
    spell of a shared machine falls on every method alike; rows with the median step time."""
    times: dict[str, list[float]] = {r["method"]: [] for r in runs}
    for _ in range(steps):
        for r in runs:
            times[r["method"]].append(r["step"]())
    return [
        {
            **{k: v for k, v in r.items() if k not in ("step", "state")},
            "median_step_s": statistics.median(times[r["method"]]),
            "step_times_s": times[r["method"]],
            "loss": float(r["state"]["loss"]),
        }
        for r in runs
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--methods", default=",".join(CHOICES))
    parser.add_argument(
        "--dtype", default="float32", choices=("float32", "bfloat16"),
        help="compute dtype (weights and optimizer stay float32): bfloat16 where the CPU has "
        "bf16 matrix units",
    )  # fmt: skip
    parser.add_argument("--out", default="benchmarks/results/methods.json")
    args = parser.parse_args()
    xla_defaults.apply()  # adapt's CPU flags, as the experiments run
    model, params, _ = load_pretrained(
        weights.resolve("all-MiniLM-L6-v2"),
        architecture="BertForSequenceClassification",
        num_labels=2,
        dtype=jnp.dtype(args.dtype),
    )
    rng = np.random.default_rng(0)
    batch = {
        "ids": jnp.asarray(rng.integers(1000, 30000, size=(32, 128))),
        "mask": jnp.ones((32, 128), jnp.int32),
        "labels": jnp.asarray(rng.integers(0, 2, size=32)),
    }
    rows = measure([prepare(m, model, params, batch) for m in args.methods.split(",")], args.steps)
    full = next((r for r in rows if r["method"] == "full"), None)
    print(
        f"\nall-MiniLM-L6-v2, batch 32 x 128, AdamW, {args.dtype} compute, "
        f"{jax.device_count()} {jax.default_backend()} device(s)"
    )
    print(
        f"{'method':<13} {'trainable':>11} {'%':>7} {'opt state':>12} {'compile+1st':>12} {'step (med)':>11} {'vs full':>8}"
    )
    for r in rows:
        ratio = f"{full['median_step_s'] / r['median_step_s']:.2f}x" if full else "-"
        print(
            f"{r['method']:<13} {r['trainable_params']:>11,} {r['trainable_pct']:>6.2f}% "
            f"{r['opt_state_bytes']:>12,} {r['first_step_s']:>11.1f}s {r['median_step_s']:>10.2f}s {ratio:>8}"
        )
    lora = next((r for r in rows if r["method"] == "lora"), None)
    if full and lora:
        speedup = full["median_step_s"] / lora["median_step_s"]
        state = lora["opt_state_bytes"] / full["opt_state_bytes"]
        print(
            f"\nLoRA vs full: step {speedup:.2f}x faster (target >= 1.4x), "
            f"optimizer state {100 * state:.2f}% of full (target <= 2%)"
        )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    machine = {"cpu": cpu_name(), "cpu_kind": cpu_kind(), "cores_used": num_threads(),
               "jax": jax.__version__, "xla_flags": os.environ.get("XLA_FLAGS", "")}  # fmt: skip
    payload = {
        "device": jax.default_backend(),
        "machine": machine,
        "dtype": args.dtype,
        "rows": rows,
    }
    out.write_text(json.dumps(payload, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
