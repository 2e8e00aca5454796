"""Will it fit? Per-device memory of LoRA and QLoRA train steps of LLaMA-2-7B and -70B shapes on
8 and 64 devices, from ahead-of-time compilation: nothing is allocated.

    python -m benchmarks.scale_plan                  # table + benchmarks/results/scale_plan.json
    python -m benchmarks.scale_plan --devices 8 --models 7b --validate-layers 32   # ~10 min

Why ahead-of-time: which accelerator a setting needs is answered by XLA's buffer assignment of
the real sharded step, not by a hand count of weights and activations. Every setting is the
harness's step built from abstract values and compiled by :mod:`benchmarks.aot_memory` (how,
and which codegen flags speed it up), one subprocess per device count; ``memory_analysis()``
gives argument, output, alias (donated state), temp and generated-code bytes per device.

Choices (also printed with the table):

- LLaMA-2 shapes: 7B = dim 4096, 32 layers, 32 heads, 32 KV heads, FFN 11008, vocab 32000;
  70B = dim 8192, 80 layers, 64 heads, 8 KV heads, FFN 28672, vocab 32000; untied head.
- Sequence length 2048; micro-batch of one sequence per data-parallel shard (global batch =
  size of the ``data`` axis), no gradient accumulation.
- bfloat16 compute; LoRA rank 16 (alpha 16, no dropout) on every linear layer of the blocks
  (``ALL_LINEAR``, QLoRA's recipe), adapters float32; AdamW (lr 2e-4, no weight decay) with state
  for the trainable leaves only.
- Frozen base: ``lora`` holds it in bfloat16 (the harness's ``frozen_dtype``); ``qlora`` holds
  the linear layers in NF4 with double quantisation (blocksize 64) and the embeddings, norms and
  head in bfloat16.
- Rematerialisation on: ``Trainer(remat="full")`` as the harness builds it from
  ``train.remat``, which checkpoints every decoder layer (``nn.remat``, ``nothing_saveable``;
  :mod:`adapt.remat`).
- Meshes: FSDP = ``("data", N)`` with preset ``fsdp``; FSDP+TP = ``("data", N/4) x ("model",
  4)`` on 8 devices and ``("data", N/8) x ("model", 8)`` on 64, preset ``fsdp_tp``. Each device
  count runs in its own subprocess with ``XLA_FLAGS=--xla_force_host_platform_device_count=N``.
- Peak per device = argument + output - alias + temp + generated code; "fits" compares it with
  24/40/80/141 GB (10^9 bytes) and keeps no headroom for the runtime, allocator fragmentation
  or the CUDA context.

Depth extrapolation: compiling 32 or 80 unrolled layers is too slow for the budget (the 7B step
at 32 layers on 8 devices took 511 s to compile here), so every setting is compiled at 1 and 2
layers and each byte count extrapolated as ``fixed + L * per_layer``. The run checks this once
against a deeper compile (``--validate-layers``, default 8: 7B, LoRA, FSDP on 8 devices) and
prints the error (2026-11-23, 8 layers: peak +0.28%, temp +0.31%, arguments exact). Before
per-layer remat it was also checked once at full depth (``--validate-layers 32``): the
extrapolated peak was within 0.08% of the 32-layer compile.

What the numbers are not: XLA:CPU's buffer assignment of this program, not a GPU's. A GPU build
fuses differently and keeps collectives in bfloat16 (XLA:CPU promotes some to float32), so
treat the verdicts as the plan for *this* step function on an accelerator with the same
program, and read the columns for where the bytes go. The worker compiles with XLA:CPU's
memory-optimised scheduler and keeps remat's optimisation barriers until the end, as XLA:GPU
does (:data:`benchmarks.aot_memory.SCHEDULER_FLAGS`); even so, XLA:CPU's top-down scheduler
starts recomputing earlier layers before the backward pass reaches them, so with remat a layer
still costs 0.37 GB of temp (7B; 0.78 GB for 70B) where its saved input is 17 MB: ``temp/L``
is an upper bound.

The first run (2026-11-23) found three defects in the library, since fixed; the numbers after
the fix are in benchmarks/results/scale_plan.json:

- QLoRA's NF4 leaves (1-D) had no logical axis and were replicated on every device (35.3 GB for
  70B). They are now ``("quantized",)``, sharded over ``data`` by the ``fsdp`` / ``fsdp_tp``
  presets: 70B's quantised base is 0.55 GB per device under FSDP on 64 devices. Under FSDP+TP
  they shard over ``data`` only (their flat order mixes the kernel's dimensions), so there
  QLoRA's base per device (4.4 GB on 8x8) exceeds bfloat16 LoRA's (2.2 GB).
- ``Trainer(remat="full")`` checkpointed the whole loss and saved nothing (+3% at 2 layers); it
  now checkpoints each decoder layer: at 2 layers of 7B on 8 devices the peak is 2.73 GB
  instead of 5.40 GB without remat, temp per layer 0.37 instead of 2.18 GB.
- Nothing pinned the activations, and under FSDP GSPMD computed the MLP and LM-head projections
  for the *global* batch on every device: the depth-independent temp of 7B grew from 1.0 GB on
  1 device to 4.6 on 8 and 33.9 on 64. With logical constraints on LLaMA's activations it is
  1.84, 1.80 and 1.80 GB (70B: 5.50, 6.11, 6.11).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.aot_memory import CODEGEN_FLAGS, RANK, SCHEDULER_FLAGS, STATS, run_worker

RESULTS = Path(__file__).resolve().parent / "results" / "scale_plan.json"
GB = 1e9
SEQ_LEN = 2048
DEPTHS = (1, 2)  # compiled depths for the per-layer fit
ACCELERATORS_GB = (24, 40, 80, 141)
MODELS: dict[str, dict[str, int]] = {
    "7b": dict(
        hidden_size=4096,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=32,
        intermediate_size=11008,
        vocab_size=32000,
    ),
    "70b": dict(
        hidden_size=8192,
        num_hidden_layers=80,
        num_attention_heads=64,
        num_key_value_heads=8,
        intermediate_size=28672,
        vocab_size=32000,
    ),
}
METHODS = ("lora", "qlora")
PRESETS = ("fsdp", "fsdp_tp")


def mesh_axes(preset: str, devices: int) -> list[tuple[str, int]]:
    """FSDP: every device on ``data``; FSDP+TP: tensor parallelism of 4 (8 devices) or 8 (64+)
    within ``model`` and the rest on ``data`` (the axis names :mod:`adapt.sharding` expects)."""
    if preset == "fsdp":
        return [("data", devices)]
    tp = 4 if devices <= 8 else 8
    if devices % tp:
        raise ValueError(f"{devices} devices do not split into tensor parallelism of {tp}")
    return [("data", devices // tp), ("model", tp)]


# ------------------------------------------------------------------------------ the plan itself
def job_for(
    model: str,
    method: str,
    preset: str,
    axes: list[tuple[str, int]],
    layers: int,
    remat: str = "full",
) -> dict[str, Any]:
    """One compile: ``model``'s shapes cut to ``layers`` layers (the rest as in :data:`MODELS`)."""
    mesh = "x".join(f"{n}={s}" for n, s in axes)
    return {
        "config": {**MODELS[model], "num_hidden_layers": layers},
        "method": method,
        "preset": preset,
        "axes": [list(a) for a in axes],
        "seq_len": SEQ_LEN,
        "remat": remat,
        "tag": f"{model} {method} {preset} {mesh} remat={remat}",
        "model": model,
    }


def extrapolate(low: dict[str, Any], high: dict[str, Any], layers: int) -> dict[str, Any]:
    """Every byte count as ``fixed + L * per_layer`` through the two compiled depths."""
    la, lb = low["layers"], high["layers"]

    def fit(a: float, b: float) -> tuple[float, float]:
        per_layer = (b - a) / (lb - la)
        return a - la * per_layer, per_layer

    out: dict[str, Any] = {"layers": layers, "bytes": {}, "accounts": {}}
    out.update(fixed={}, per_layer={})
    for group in ("bytes", "accounts"):
        for key in low[group]:
            fixed, per = fit(low[group][key], high[group][key])
            out[group][key] = fixed + layers * per
            out["fixed"][key], out["per_layer"][key] = fixed, per
    fixed, per = fit(low["trainable_params"], high["trainable_params"])
    out["trainable_params"] = round(fixed + layers * per)
    return out


def peak(b: dict[str, float]) -> float:
    """Bytes live at once on a device: inputs, outputs not aliased to donated inputs, temps."""
    return b["argument"] + b["output"] - b["alias"] + b["temp"] + b["generated_code"]


def fits(peak_bytes: float) -> dict[str, bool]:
    return {f"{gb}GB": peak_bytes <= gb * GB for gb in ACCELERATORS_GB}


def plan_row(model: str, pair: list[dict[str, Any]]) -> dict[str, Any]:
    """A table row: the setting at the model's full depth, from its two compiled depths."""
    low, high = sorted(pair, key=lambda r: r["layers"])
    full = extrapolate(low, high, MODELS[model]["num_hidden_layers"])
    p = peak(full["bytes"])
    return {
        "model": f"llama2-{model}",
        "method": low["method"],
        "preset": low["preset"],
        "mesh": low["axes"],
        "devices": low["devices"],
        "global_batch": low["global_batch"],
        "seq_len": low["seq_len"],
        "layers": full["layers"],
        "extrapolated_from_layers": [low["layers"], high["layers"]],
        "trainable_params": full["trainable_params"],
        "bytes_per_device": {k: round(v) for k, v in full["bytes"].items()},
        "accounts_per_device": {k: round(v) for k, v in full["accounts"].items()},
        "fixed_bytes": {k: round(v) for k, v in full["fixed"].items()},
        "per_layer_bytes": {k: round(v) for k, v in full["per_layer"].items()},
        "peak_bytes_per_device": round(p),
        "fits": fits(p),
        "unsharded_dims": sorted(set(low["unsharded_dims"]) | set(high["unsharded_dims"])),
        "compile_s": [low["compile_s"], high["compile_s"]],
    }


def _per_layer_temp(pair: list[dict[str, Any]]) -> float:
    low, high = sorted(pair, key=lambda r: r["layers"])
    return extrapolate(low, high, 1)["per_layer"]["temp"]


def validate(pair: list[dict[str, Any]], deep: dict[str, Any]) -> dict[str, Any]:
    """Extrapolation from ``pair`` against a compile of the same setting at ``deep``'s depth."""
    low, high = sorted(pair, key=lambda r: r["layers"])
    pred = extrapolate(low, high, deep["layers"])["bytes"]
    err = {s: (pred[s] - deep["bytes"][s]) / max(deep["bytes"][s], 1) for s in STATS}
    return {
        "setting": deep["tag"],
        "layers": deep["layers"],
        "measured": deep["bytes"],
        "extrapolated": {k: round(v) for k, v in pred.items()},
        "relative_error": err,
        "peak_relative_error": (peak(pred) - peak(deep["bytes"])) / peak(deep["bytes"]),
        "compile_s": deep["compile_s"],
    }


def _gb(x: float) -> str:
    return f"{x / GB:7.2f}"


def print_table(rows: list[dict[str, Any]]) -> None:
    head = (
        f"{'model':<10} {'method':<6} {'rules':<7} {'mesh':<15} {'batch':>5} {'frozen':>7} "
        f"{'tr+opt':>7} {'args':>7} {'temp0':>7} {'temp/L':>7} {'temp':>7} {'peak':>7}  "
        + " ".join(f"{gb:>4}" for gb in ACCELERATORS_GB)
    )
    print(head)
    print("-" * len(head))
    for r in rows:
        b, a = r["bytes_per_device"], r["accounts_per_device"]
        mesh = "x".join(f"{n}={s}" for n, s in r["mesh"])
        verdict = " ".join(f"{'yes' if r['fits'][f'{gb}GB'] else '-':>4}" for gb in ACCELERATORS_GB)
        print(
            f"{r['model'][7:]:<10} {r['method']:<6} {r['preset']:<7} {mesh:<15} "
            f"{r['global_batch']:>5} {_gb(a['frozen'])} {_gb(a['trainable'] + a['opt_state'])} "
            f"{_gb(b['argument'])} {_gb(r['fixed_bytes']['temp'])} "
            f"{_gb(r['per_layer_bytes']['temp'])} {_gb(b['temp'])} "
            f"{_gb(r['peak_bytes_per_device'])}  {verdict}"
        )


def print_notes(rows: list[dict[str, Any]], remat: dict | None, check: dict | None) -> None:
    print(
        "\nper device, GB: frozen = frozen base as sharded; tr+opt = adapters + AdamW state; args ="
        " every step input;\ntemp0 + L x temp/L = temp (XLA temporaries; activations saved for"
        " the backward pass grow with L);\npeak = args + outputs - donated + temp; 24..141: fits"
        " an accelerator of that many GB (no headroom)."
    )
    for r in rows:
        a = r["accounts_per_device"]
        if a["nf4_replicated"] > 0.5 * a["frozen"] and r["devices"] > 1:
            print(
                f"  {r['model']} {r['method']} {r['preset']} on {r['devices']} devices: "
                f"{_gb(a['nf4_replicated']).strip()} GB of NF4 leaves replicated on every device "
                "(adapt.sharding gives 1-D leaves no logical axis)"
            )
    for model in sorted({r["model"] for r in rows}):
        fsdp = sorted(
            (r for r in rows if (r["model"], r["method"], r["preset"]) == (model, "lora", "fsdp")),
            key=lambda r: r["devices"],
        )
        if len(fsdp) > 1:
            temps = [r["fixed_bytes"]["temp"] for r in fsdp]
            listed = ", ".join(
                f"{_gb(t).strip()} GB on {r['devices']}" for t, r in zip(temps, fsdp, strict=True)
            )
            why = (
                "grows with the device count: work done for the whole global batch"
                if max(temps) > 1.2 * min(temps)
                else "flat: each device computes on its own sequence"
            )
            print(f"  {model} lora fsdp temp0: {listed} devices (one sequence per device; {why})")
    dims = sorted({d for r in rows for d in r["unsharded_dims"]})
    print(
        "dimensions the rules map to a mesh axis but left replicated: "
        + ("none" if not dims else "\n  " + "\n  ".join(dims))
    )
    if remat:
        print(
            f"remat check ({remat['setting']}): peak {_gb(remat['peak_remat_full']).strip()} GB "
            f"with remat='full', {_gb(remat['peak_remat_none']).strip()} GB with remat='none'; "
            f"temp per layer {_gb(remat['temp_per_layer_remat_full']).strip()} vs "
            f"{_gb(remat['temp_per_layer_remat_none']).strip()} GB"
        )
    if check:
        err = check["relative_error"]
        print(
            f"extrapolation check ({check['setting']}, {check['layers']} layers compiled in "
            f"{check['compile_s']:.0f}s): peak {100 * check['peak_relative_error']:+.3f}%, "
            f"temp {100 * err['temp']:+.3f}%, arguments {100 * err['argument']:+.3f}%"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", default="8,64", help="comma-separated device counts")
    parser.add_argument("--models", default="7b,70b")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--presets", default=",".join(PRESETS))
    parser.add_argument(
        "--validate-layers",
        type=int,
        default=8,
        help="depth of the one deeper compile that checks the extrapolation (0: skip)",
    )
    parser.add_argument("--default-codegen", action="store_true", help="keep XLA's CPU codegen")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    t_start = time.perf_counter()
    models, methods = args.models.split(","), args.methods.split(",")
    presets, device_counts = args.presets.split(","), [int(d) for d in args.devices.split(",")]
    rows, check, remat = [], None, None
    for devices in device_counts:
        settings = [
            (model, method, preset, mesh_axes(preset, devices))
            for model in models
            for method in methods
            for preset in presets
        ]
        first = devices == device_counts[0]
        if first:  # the unsharded reference: one device, one sequence
            settings = [(model, "lora", "fsdp", [("data", 1)]) for model in models] + settings
        jobs = [job_for(*s, layers) for s in settings for layers in DEPTHS]
        ref = ("7b", "lora", "fsdp", mesh_axes("fsdp", devices))
        if first and "7b" in models:  # what does remat="full" save? the step without it
            jobs += [job_for(*ref, layers, remat="none") for layers in DEPTHS]
            if args.validate_layers and args.validate_layers not in DEPTHS:
                jobs.append(job_for(*ref, args.validate_layers))
        print(f"compiling {len(jobs)} steps on {devices} forced CPU devices ...", flush=True)
        results = run_worker(devices, jobs, args.default_codegen)
        by_tag: dict[str, list[dict[str, Any]]] = {}
        for r in results:
            by_tag.setdefault(r["tag"], []).append(r)
        for s in settings:
            pair = [r for r in by_tag[job_for(*s, 1)["tag"]] if r["layers"] in DEPTHS]
            rows.append(plan_row(s[0], pair))
        if first and "7b" in models:
            ref_runs = by_tag[job_for(*ref, 1)["tag"]]
            pair = [r for r in ref_runs if r["layers"] in DEPTHS]
            nones = by_tag[job_for(*ref, 1, remat="none")["tag"]]
            none = max(nones, key=lambda r: r["layers"])
            full = next(r for r in pair if r["layers"] == none["layers"])
            remat = {
                "setting": f"{none['tag'].rsplit(' ', 1)[0]}, {none['layers']} layers",
                "peak_remat_full": peak(full["bytes"]),
                "peak_remat_none": peak(none["bytes"]),
                "temp_per_layer_remat_full": _per_layer_temp(pair),
                "temp_per_layer_remat_none": _per_layer_temp(nones),
            }
            deep = [r for r in ref_runs if r["layers"] == args.validate_layers]
            if deep and args.validate_layers not in DEPTHS:
                check = validate(pair, deep[0])

    print(
        f"\nLLaMA-2 LoRA/QLoRA train step: bytes per device from XLA:CPU memory_analysis "
        f"(GB = 1e9 bytes, {jax_version()})\n"
        f"sequence {SEQ_LEN}, one sequence per data shard (batch = global batch), bf16 compute, "
        f"LoRA r={RANK} on all linear layers,\nAdamW state for trainable leaves only, "
        f"remat='full' per layer; frozen base bf16 (lora) or NF4 + double quant (qlora);\ndepth "
        f"extrapolated as fixed + L x per-layer from compiles at L={DEPTHS[0]} and L={DEPTHS[1]}\n"
    )
    print_table(rows)
    print_notes(rows, remat, check)
    wall = time.perf_counter() - t_start
    print(f"wall time {wall:.0f}s")
    report = {
        "device": "cpu (forced host devices)",
        "choices": {
            "seq_len": SEQ_LEN,
            "micro_batch_per_data_shard": 1,
            "compute_dtype": "bfloat16",
            "lora": {"rank": RANK, "alpha": 16, "dropout": 0.0, "targets": "all_linear"},
            "optimizer": "adamw lr 2e-4, weight decay 0, state for trainable leaves only",
            "frozen": {"lora": "bfloat16", "qlora": "NF4 + double quant, blocksize 64"},
            "remat": "full (per decoder layer, nothing_saveable)",
            "extrapolated_from_layers": list(DEPTHS),
            "codegen_flags": None if args.default_codegen else CODEGEN_FLAGS,
            "scheduler_flags": SCHEDULER_FLAGS,
            "accelerators_gb": list(ACCELERATORS_GB),
        },
        "models": MODELS,
        "rows": rows,
        "remat_check": remat,
        "validation": check,
        "wall_s": wall,
        "machine": {
            "python": platform.python_version(),
            "jax": jax_version(),
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
        },
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


def jax_version() -> str:
    import jax

    return f"jax {jax.__version__}"


if __name__ == "__main__":
    sys.exit(main())
