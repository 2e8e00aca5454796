"""adapt vs transformers + PEFT (eager PyTorch) on the same CPU, in one run.

    python -m benchmarks.vs_pytorch [--steps 10] [--warmup 2] [--modes forward,full,lora]

The same model (all-MiniLM-L6-v2 with a 2-way classification head, from the same local
safetensors), the same random-but-fixed batch (32 x 128 token ids, every position real, fixed
labels) and AdamW (lr 1e-4, weight decay 0.01, not on biases/LayerNorms, as HF's Trainer) in
both frameworks, three modes:

- ``forward``: inference logits (eval mode: no dropout, no gradients; ``torch.inference_mode``);
- ``full``: one full fine-tuning step (forward, backward, AdamW over all 22.7 M weights);
- ``lora``: one LoRA step, r=8, alpha=16 on query/value plus the trained classifier (PEFT:
  ``LoraConfig(target_modules=["query", "value"], modules_to_save=["classifier"])``).

Training steps run in train mode *with dropout* (0.1 on hidden states and attention weights) in
both frameworks, as a real fine-tune does (``--no-dropout``: eval mode in both). Each
(framework, mode) runs in its own subprocess, so the peak RSS (VmHWM) is that mode's alone; the
parent interleaves frameworks mode by mode and prints the ratios. Step time is the median of
``--steps`` after ``--warmup`` steps; adapt's compile time (``lower().compile()``) is reported
separately (torch is eager: its first step is in the JSON). adapt uses its real train step
(:func:`adapt.step.jit_train_step`, donated state); torch gets ``torch.set_num_threads`` equal to
the cores JAX uses. Achieved FLOP/s: XLA's cost analysis of adapt's compiled step divided by the
median step time; the torch rows use the *same* FLOP count (the same arithmetic; torch has no
cost model). Both are compared with a peak measured in the same run: the best of 20
2048 x 2048 fp32 matmuls, timed in JAX and in torch. Both classifier heads start from the same
fixed weights, so the forward logits of the two frameworks are compared too.

Writes benchmarks/results/vs_pytorch.json. Timings on a shared machine swing; compare the ratios
of one run, and read the load average the output reports. ``--rounds N`` runs each
(framework, mode) in N processes, alternating with the other framework, and pools their steps;
the CPU seconds per step (all threads) are reported beside wall time because they suffer less
from other jobs on the machine.

adapt runs with the XLA flags of :mod:`adapt.xla_defaults` (YNNPACK fusions off), as its
experiments do; ``ADAPT_XLA_DEFAULTS=0`` measures XLA's own defaults instead. The flags in force
are recorded in the JSON (``machine.xla_flags``). ``--profile N`` also profiles N more steps of
each (framework, mode) and records milliseconds per step by op and by kind of op
(:mod:`benchmarks.op_profile`): where the time goes, not guesses.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from adapt import xla_defaults
from benchmarks.op_profile import jax_op_times, torch_op_times
from benchmarks.step_timing import (
    BATCH,
    LABELS,
    LENGTH,
    LR,
    MODES,
    PEAK_N,
    WEIGHT_DECAY,
    best_time,
    cpu_kind,
    cpu_name,
    head_weights,
    make_batch,
    num_threads,
    peak_rss_mb,
    time_calls,
)  # fmt: skip


# ------------------------------------------------------------------------------------ adapt
def adapt_worker(
    mode: str, warmup: int, steps: int, dropout: bool = True, profile: int = 0
) -> dict[str, Any]:
    import jax
    import jax.numpy as jnp

    if mode == "peak":
        a = jax.random.normal(jax.random.key(0), (PEAK_N, PEAK_N), jnp.float32)
        mm = jax.jit(lambda x, y: x @ y)
        sec = best_time(lambda: mm(a, a).block_until_ready(), 20)
        return {"peak_flops": 2 * PEAK_N**3 / sec}

    from adapt import optim, partition, paths, weights
    from adapt.convert.hf import load_pretrained
    from adapt.methods import base, build
    from adapt.step import jit_train_step
    from adapt.tasks.classification import cross_entropy

    model, params, config = load_pretrained(
        weights.resolve("all-MiniLM-L6-v2"),
        architecture="BertForSequenceClassification",
        num_labels=LABELS,
        pooling="pooler",  # HF's head; adapt's default here is the checkpoint's mean pooling
    )
    kernel, bias = head_weights(config.hidden_size)
    flat = paths.flatten(params)
    flat["classifier/kernel"], flat["classifier/bias"] = jnp.asarray(kernel), jnp.asarray(bias)
    params = paths.unflatten(flat)
    batch = {k: jnp.asarray(v) for k, v in make_batch().items()}
    out: dict[str, Any] = {}

    if mode == "forward":
        fn = jax.jit(lambda p, b: model.apply({"params": p}, b["ids"], b["mask"])["logits"])
        t0 = time.perf_counter()
        compiled = fn.lower(params, batch).compile()
        out["compile_s"] = time.perf_counter() - t0
        out["logits"] = np.asarray(compiled(params, batch)).tolist()
        forward = lambda: compiled(params, batch).block_until_ready()
        timing = time_calls(forward, warmup, steps)
        out["profile"] = (
            jax_op_times(forward, profile, hlo_text=compiled.as_text()) if profile else None
        )
    else:
        methods: list = []
        rules = [(".*", "all")]
        if mode == "lora":
            methods = [build("lora", "bert", rank=8, alpha=16)]
            extra = base.init(
                model, params, methods, jax.random.key(1), batch["ids"][:2], batch["mask"][:2]
            )
            params = partition.merge(params, extra)
            rules = [(r"classifier/.*", "head"), *methods[0].rules(), (".*", None)]
        labels = partition.label(params, rules)
        trainable, frozen = partition.split(params, labels)
        tl = partition.trainable_labels(labels)
        groups = {
            lab: {"lr": LR, "weight_decay": WEIGHT_DECAY} for lab in set(paths.flatten(tl).values())
        }
        tx = optim.build(tl, groups, total_steps=1000)
        state = {"trainable": trainable, "opt": tx.init(trainable)}

        def loss_fn(p, b, rng):
            logits = base.apply(
                model,
                p,
                methods,
                b["ids"],
                b["mask"],
                deterministic=not dropout,
                rngs={"dropout": rng},
            )["logits"]
            return cross_entropy(logits, b["labels"]), {}

        step = jit_train_step(loss_fn, tx)
        key = jax.random.key(0)
        t0 = time.perf_counter()
        compiled = step.lower(state["trainable"], frozen, state["opt"], batch, key).compile()
        out["compile_s"] = time.perf_counter() - t0
        out["trainable_params"] = partition.count(trainable)
        keys = iter(list(jax.random.split(key, warmup + steps + profile + 1)))  # before timing

        def call() -> None:
            state["trainable"], state["opt"], loss, _ = compiled(
                state["trainable"], frozen, state["opt"], batch, next(keys)
            )
            state["loss"] = float(loss)

        timing = time_calls(call, warmup, steps)
        out["loss"] = state["loss"]
        out["profile"] = (
            jax_op_times(call, profile, hlo_text=compiled.as_text()) if profile else None
        )
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list | tuple) else cost
    out["flops"] = float(cost["flops"])
    return {**out, **timing}


# ------------------------------------------------------------------------------------ torch
def torch_worker(
    mode: str, warmup: int, steps: int, dropout: bool = True, profile: int = 0
) -> dict[str, Any]:
    import torch

    torch.set_num_threads(num_threads())
    if mode == "peak":
        torch.manual_seed(0)
        a = torch.randn(PEAK_N, PEAK_N)
        sec = best_time(lambda: a @ a, 20)
        return {"peak_flops": 2 * PEAK_N**3 / sec, "torch_threads": torch.get_num_threads()}

    import transformers
    from transformers import BertForSequenceClassification

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()

    from adapt import weights

    torch.manual_seed(0)
    model = BertForSequenceClassification.from_pretrained(
        weights.resolve("all-MiniLM-L6-v2"), num_labels=LABELS
    )
    kernel, bias = head_weights(model.config.hidden_size)
    with torch.no_grad():
        model.classifier.weight.copy_(torch.from_numpy(kernel.T.copy()))
        model.classifier.bias.copy_(torch.from_numpy(bias))
    batch = {k: torch.from_numpy(v).long() for k, v in make_batch().items()}
    out: dict[str, Any] = {
        "torch_threads": torch.get_num_threads(),
        "attn_implementation": model.config._attn_implementation,
    }
    if mode == "forward":
        model.eval()

        def forward() -> torch.Tensor:
            with torch.inference_mode():
                return model(input_ids=batch["ids"], attention_mask=batch["mask"]).logits

        out["logits"] = forward().numpy().tolist()
        timing = time_calls(forward, warmup, steps)
        return {**out, **timing, "profile": torch_op_times(forward, profile) if profile else None}

    if mode == "lora":
        from peft import LoraConfig, get_peft_model

        config = LoraConfig(
            r=8,
            lora_alpha=16,
            target_modules=["query", "value"],
            lora_dropout=0.0,
            modules_to_save=["classifier"],
        )
        model = get_peft_model(model, config)
    model.train(dropout)  # eval mode switches dropout off, nothing else in BERT
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    no_decay = [p for n, p in named if "bias" in n or "LayerNorm" in n]
    decay = [p for n, p in named if not ("bias" in n or "LayerNorm" in n)]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": WEIGHT_DECAY}, {"params": no_decay, "weight_decay": 0}],
        lr=LR,
    )
    out["trainable_params"] = sum(p.numel() for _, p in named)
    losses = []

    def call() -> None:
        opt.zero_grad(set_to_none=True)
        logits = model(input_ids=batch["ids"], attention_mask=batch["mask"]).logits
        loss = torch.nn.functional.cross_entropy(logits, batch["labels"])
        loss.backward()
        opt.step()
        losses.append(loss.item())

    timing = time_calls(call, warmup, steps)
    loss = losses[-1]
    return {
        **out,
        **timing,
        "loss": loss,
        "profile": torch_op_times(call, profile) if profile else None,
    }


# ----------------------------------------------------------------------------------- parent
def run_worker(framework: str, mode: str, args: argparse.Namespace) -> dict[str, Any]:
    """One (framework, mode) in a fresh process; returns its JSON result plus its peak RSS."""
    with tempfile.NamedTemporaryFile(suffix=".json") as f:
        cmd = [sys.executable, "-m", "benchmarks.vs_pytorch", "--worker", f"{framework}:{mode}"]
        cmd += ["--steps", str(args.steps), "--warmup", str(args.warmup), "--result", f.name]
        cmd += ["--no-dropout"] if args.no_dropout else []
        cmd += ["--profile", str(args.profile)]
        subprocess.run(cmd, check=True)
        result = json.loads(Path(f.name).read_text())
    if "peak_flops" in result:
        shown = f"{result['peak_flops'] / 1e9:.1f} GFLOP/s"
    else:
        shown = f"{result['median_s']:.3f} s"
    print(f"  {framework:<5} {mode:<8} {shown}", flush=True)
    return result


def pool(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Several processes of one (framework, mode), run in alternation with the other framework:
    medians over all their timed steps, the first process's compile time, the highest RSS."""
    if len(runs) == 1:
        return runs[0]
    times = [t for r in runs for t in r["times_s"]]
    return {
        **runs[0],
        "times_s": times,
        "median_s": statistics.median(times),
        "median_cpu_s": statistics.median(r["median_cpu_s"] for r in runs),
        "peak_rss_mb": max(r["peak_rss_mb"] for r in runs),
        "load_1min": [x for r in runs for x in r["load_1min"]],
        "round_medians_s": [r["median_s"] for r in runs],
    }


def machine() -> dict[str, Any]:
    import jax
    import peft
    import torch
    import transformers

    return {
        "cpu": cpu_name(),
        "cpu_kind": cpu_kind(),
        "machine": platform.machine(),
        "cores_used": num_threads(),
        "jax": jax.__version__,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
    }


def report(results: dict[str, dict[str, dict]], peaks: dict[str, float], info: dict) -> list:
    print(
        f"\nall-MiniLM-L6-v2, batch {BATCH} x {LENGTH}, AdamW; {info['cpu']} "
        f"({info['cores_used']} cores used); load average {info['load_before']} -> "
        f"{info['load_after']}"
    )
    print(
        f"fp32 matmul peak ({PEAK_N}^3): JAX {peaks['adapt'] / 1e9:.1f} GFLOP/s, "
        f"torch {peaks['torch'] / 1e9:.1f} GFLOP/s. FLOPs: XLA cost analysis of adapt's step, "
        "used for the torch rows too."
    )
    head = (
        f"{'mode':<8} {'adapt':>8} {'torch':>8} {'torch/adapt':>11} {'compile':>8} "
        f"{'RSS adapt':>10} {'RSS torch':>10} {'GFLOP':>6} {'adapt GF/s':>13} {'torch GF/s':>13}"
    )
    print(head)
    rows = []
    for mode, res in results.items():
        a, t = res["adapt"], res["torch"]
        flops = a["flops"]
        row = {
            "mode": mode,
            "adapt_median_s": a["median_s"],
            "torch_median_s": t["median_s"],
            "torch_over_adapt": t["median_s"] / a["median_s"],
            "adapt_compile_s": a["compile_s"],
            "adapt_first_s": a["first_s"],
            "torch_first_s": t["first_s"],
            "adapt_peak_rss_mb": a["peak_rss_mb"],
            "torch_peak_rss_mb": t["peak_rss_mb"],
            "flops": flops,
            "adapt_flops_per_s": flops / a["median_s"],
            "torch_flops_per_s": flops / t["median_s"],
            "adapt_pct_of_peak": 100 * flops / a["median_s"] / peaks["adapt"],
            "torch_pct_of_peak": 100 * flops / t["median_s"] / peaks["torch"],
            "adapt_median_cpu_s": a["median_cpu_s"],
            "torch_median_cpu_s": t["median_cpu_s"],
            "adapt_load_1min": a["load_1min"],
            "torch_load_1min": t["load_1min"],
            "cpu_torch_over_adapt": t["median_cpu_s"] / a["median_cpu_s"],
            "adapt_times_s": a["times_s"],
            "torch_times_s": t["times_s"],
        }
        for key in ("trainable_params", "loss", "round_medians_s"):
            if key in a:
                row[f"adapt_{key}"], row[f"torch_{key}"] = a[key], t[key]
        if "logits" in a:
            row["max_abs_logit_diff"] = float(
                np.max(np.abs(np.asarray(a["logits"]) - np.asarray(t["logits"])))
            )
        rows.append(row)
        print(
            f"{mode:<8} {a['median_s']:>7.3f}s {t['median_s']:>7.3f}s "
            f"{row['torch_over_adapt']:>10.2f}x {a['compile_s']:>7.1f}s "
            f"{a['peak_rss_mb']:>8.0f}MB {t['peak_rss_mb']:>8.0f}MB {flops / 1e9:>6.0f} "
            f"{row['adapt_flops_per_s'] / 1e9:>6.1f} ({row['adapt_pct_of_peak']:>3.0f}%) "
            f"{row['torch_flops_per_s'] / 1e9:>6.1f} ({row['torch_pct_of_peak']:>3.0f}%)"
        )
    print(
        "CPU seconds per step (all threads; less sensitive to other jobs), torch/adapt: "
        + ", ".join(f"{r['mode']} {r['cpu_torch_over_adapt']:.2f}x" for r in rows)
    )
    for row in rows:
        if "max_abs_logit_diff" in row:
            print(f"forward logits, adapt vs torch: max |diff| = {row['max_abs_logit_diff']:.1e}")
    print("torch/adapt > 1: adapt's step is faster.")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="processes per (framework, mode), alternating adapt/torch; steps are pooled",
    )
    parser.add_argument(
        "--no-dropout", action="store_true", help="train steps in eval mode (dropout off) in both"
    )
    parser.add_argument(
        "--profile", type=int, default=0,
        help="also profile N steps per (framework, mode): ms per op (benchmarks/op_profile.py)",
    )  # fmt: skip
    parser.add_argument("--out", default="benchmarks/results/vs_pytorch.json")
    parser.add_argument("--worker", help=argparse.SUPPRESS)  # framework:mode, internal
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args()
    xla_defaults.apply()  # before any JAX computation; the worker processes inherit it

    if args.worker:
        framework, mode = args.worker.split(":")
        work = adapt_worker if framework == "adapt" else torch_worker
        load = os.getloadavg()[0]
        if mode == "peak":
            result = work(mode, args.warmup, args.steps)
        else:
            result = work(
                mode, args.warmup, args.steps, dropout=not args.no_dropout, profile=args.profile
            )
        result["peak_rss_mb"] = peak_rss_mb()
        result["load_1min"] = [load, os.getloadavg()[0]]
        Path(args.result).write_text(json.dumps(result))
        return

    load_before = " ".join(f"{x:.2f}" for x in os.getloadavg())
    peaks = {fw: run_worker(fw, "peak", args)["peak_flops"] for fw in ("adapt", "torch")}
    results: dict[str, dict[str, dict]] = {}
    for mode in args.modes.split(","):
        rounds = [{fw: run_worker(fw, mode, args) for fw in ("adapt", "torch")}]
        for _ in range(args.rounds - 1):
            rounds.append({fw: run_worker(fw, mode, args) for fw in ("adapt", "torch")})
        results[mode] = {fw: pool([r[fw] for r in rounds]) for fw in ("adapt", "torch")}
    info = machine()
    info["load_before"] = load_before
    info["load_after"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    rows = report(results, peaks, info)
    for row in rows:  # different models would make every ratio meaningless
        if row.get("max_abs_logit_diff", 0.0) > 1e-4:
            sys.exit(
                f"error: adapt's and torch's forward logits differ by {row['max_abs_logit_diff']:.1e}"
                " (> 1e-4): the two frameworks are not running the same model; nothing written"
            )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "machine": info,
        "peak_flops": peaks,
        "batch": [BATCH, LENGTH],
        "steps": args.steps,
        "rounds": args.rounds,
        "warmup": args.warmup,
        "dropout": (
            "train steps in eval mode (dropout off) in both"
            if args.no_dropout
            else "train steps in train mode, dropout 0.1, in both"
        )
        + "; forward in eval mode",
        "rows": rows,
    }
    if args.profile:
        payload["profile"] = {m: {fw: by[fw]["profile"] for fw in by} for m, by in results.items()}
        for m, by in payload["profile"].items():
            for fw, prof in by.items():
                kinds = ", ".join(f"{k['op']} {k['share']:.0%}" for k in prof["by_kind"][:8])
                print(f"{m:<8} {fw:<5} share of the step's op time by kind: {kinds}")
                for d in prof.get("dots_by_shape", [])[:6]:
                    print(f"{'':<14} {d['share']:>4.0%} {d['count']:>3} x {d['dot']}: "
                          f"{d['gflop_per_thread_s']:.0f} GFLOP/s per thread")  # fmt: skip
    out.write_text(json.dumps(payload, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
