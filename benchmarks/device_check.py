"""One short check of the machine's accelerator (or its CPU): does adapt run there, and how fast.

    bash benchmarks/device_check.sh            # or: python -m benchmarks.device_check [--out F]

In order, each part recorded whether it passes or not (a failing part does not stop the rest):
1. the machine: JAX backend, devices, their kind;
2. the parity tests (BERT, ViT, LLaMA against transformers; the fused attention) on the default
   backend, with float32 matmuls at full precision (GPUs otherwise use TF32 for them);
3. a short LoRA run and a short QLoRA run through the command line (the smoke configs of
   all-MiniLM-L6-v2 on SST-2 and of stories260K), end to end;
4. step timings: LoRA and full fine-tuning of all-MiniLM-L6-v2 (float32; and LoRA with bfloat16
   compute on an accelerator), QLoRA of a 2-layer TinyLlama-shaped decoder (NF4 base, bfloat16
   compute): median step time, examples and tokens per second, the step's FLOPs and the model
   FLOP utilisation against the device's peak (a table of published peaks for GPUs and TPUs; on
   a CPU, a float32 matmul peak measured here).

The FLOPs are XLA's cost analysis of the step *before* optimisation, lowered for the host's CPU
from the inputs' shapes: the same count on every backend. The compiled executable's count is
recorded beside it but not used: on a GPU it leaves out the matmuls handed to cuBLAS (two H200
runs counted 123 and 220 of LoRA's 1,521 GFLOP, so MFU read 7-12x low). This CPU-lowered count
has not run on a GPU yet: the H200 figures in the README were counted with it on the CPU, at the
same shapes, after the run. float32 matmuls on an NVIDIA GPU run as TF32 under JAX's default
precision, so their MFU is against the TF32 peak; the row records the precision.

Writes benchmarks/results/device_check.json (``--out``). On 2 CPU cores the whole check takes
under 5 minutes (small batches); on an accelerator the batches grow to keep it busy.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
PARITY_TESTS = ["tests/test_bert.py", "tests/test_vit.py", "tests/test_llama.py",
                "tests/test_attention_impl.py"]  # fmt: skip
# Dense peak FLOP/s per device by jax's device_kind (vendor data sheets; bf16 and TF32 tensor
# cores and plain fp32), for MFU. Unknown kinds report no MFU rather than a guess.
PEAKS = {
    "NVIDIA H100 80GB HBM3": {"bfloat16": 989e12, "tfloat32": 494e12, "float32": 67e12},
    "NVIDIA H200": {"bfloat16": 989e12, "tfloat32": 494e12, "float32": 67e12},
    "NVIDIA A100-SXM4-80GB": {"bfloat16": 312e12, "tfloat32": 156e12, "float32": 19.5e12},
    "NVIDIA A100-SXM4-40GB": {"bfloat16": 312e12, "tfloat32": 156e12, "float32": 19.5e12},
    "NVIDIA L4": {"bfloat16": 121e12, "tfloat32": 60e12, "float32": 30.3e12},
    "TPU v4": {"bfloat16": 275e12, "float32": 275e12 / 4},
    "TPU v5 lite": {"bfloat16": 197e12, "float32": 197e12 / 4},
    "TPU v5": {"bfloat16": 459e12, "float32": 459e12 / 4},
    "TPU v6 lite": {"bfloat16": 918e12, "float32": 918e12 / 4},
}


def _part(name: str, fn, report: dict) -> Any:
    start = time.perf_counter()
    try:
        out = fn()
        report[name] = {"ok": True, **(out or {})}
    except Exception as e:  # noqa: BLE001 - a device check records what broke and goes on
        report[name] = {"ok": False, "error": f"{type(e).__name__}: {e}"[:2000]}
    report[name]["seconds"] = round(time.perf_counter() - start, 1)
    state = "ok" if report[name]["ok"] else f"FAILED ({report[name]['error'][:200]})"
    print(f"[{name}] {state} in {report[name]['seconds']} s", flush=True)
    return report[name]


def machine() -> dict:
    import jax

    from benchmarks.step_timing import cpu_kind, cpu_name

    devices = jax.devices()
    return {
        "backend": jax.default_backend(),
        "devices": len(devices),
        "device_kind": devices[0].device_kind,
        "cpu": cpu_name(),
        "cpu_kind": cpu_kind(),
        "cpu_cores": os.cpu_count(),
        "jax": jax.__version__,
    }


def _env() -> dict:
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env["JAX_DEFAULT_MATMUL_PRECISION"] = "highest"  # parity at float32, not TF32
    return env


def parity() -> dict:
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "not slow",
           *PARITY_TESTS]  # fmt: skip
    out = subprocess.run(cmd, cwd=REPO, env=_env(), capture_output=True, text=True, check=False)
    summary = next((ln for ln in reversed(out.stdout.splitlines()) if " passed" in ln
                    or " failed" in ln), out.stdout[-300:])  # fmt: skip
    if out.returncode != 0:
        raise RuntimeError(f"parity tests: {summary}\n{out.stdout[-1500:]}")
    return {"summary": summary.strip("= ")}


def smoke_run(config: str) -> dict:
    import tempfile

    with tempfile.TemporaryDirectory() as workdir:
        cmd = [sys.executable, "-m", "adapt.cli.finetune", f"--config={config}",
               f"--workdir={workdir}/w"]  # fmt: skip
        env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
        out = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, check=False)
        if out.returncode != 0:
            raise RuntimeError(f"{config}: exit {out.returncode}: {out.stderr[-1500:]}")
        results = json.loads((Path(workdir) / "w" / "results.json").read_text())
    return {"config": config, "steps": results.get("steps"), "eval": results.get("eval")}


def _time(compiled, state, frozen, batch, steps: int) -> tuple[float, Any]:
    state, metrics = compiled(state, frozen, batch)  # warm
    metrics["loss"].block_until_ready()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        state, metrics = compiled(state, frozen, batch)
        metrics["loss"].block_until_ready()
        times.append(time.perf_counter() - start)
    return statistics.median(times), metrics


def _flops(stage) -> float:
    """FLOPs by XLA's cost analysis of a ``Lowered`` or ``Compiled`` step (0 where there is none)."""
    cost = stage.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    return float(cost.get("flops", 0.0)) if cost else 0.0


def _model_flops(step, *args) -> float:
    """The step's FLOPs before optimisation, from a lowering of its input shapes placed on the
    host's CPU: the same count whatever the device. A GPU's own ``Lowered`` has no cost analysis
    (its PJRT plugin raises, and jax 0.11.2 on an H200 returned nothing, also when lowered with
    ``lowering_platforms=("cpu",)``, since the backend follows the inputs' devices)."""
    import jax

    cpu = jax.sharding.SingleDeviceSharding(jax.devices("cpu")[0])
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=cpu), args)
    try:
        return _flops(step.lower(*abstract))
    except NotImplementedError:
        return 0.0


def step_timing(label: str, model, params, methods, rules, batch, loss, dtype: str, steps: int,
                peak: dict) -> dict:  # fmt: skip
    """Median time of adapt's jitted train step (the one the runs use) and its utilisation."""
    import jax
    import jax.numpy as jnp
    import optax

    from adapt import partition
    from adapt.methods import base
    from adapt.step import init_state, train_step

    first = next(iter(batch.values()))
    if methods:
        extra = base.init(model, params, methods, jax.random.key(1), first[:1, :8])
        params = partition.merge(params, extra)
    labels = partition.label(params, rules)
    trainable, frozen = partition.split(params, labels)
    trainable = jax.tree.map(jnp.copy, trainable)
    tx = optax.adamw(1e-4)

    def loss_fn(p, model_state, b, rng):
        return loss(p, b), ({}, model_state)

    step = jax.jit(train_step(loss_fn, tx), donate_argnums=0)
    state = init_state(trainable, tx)
    start = time.perf_counter()
    compiled = step.lower(state, frozen, batch).compile()
    compile_s = time.perf_counter() - start
    flops, xla_flops = _model_flops(step, state, frozen, batch), _flops(compiled)
    seconds, metrics = _time(compiled, state, frozen, batch, steps)
    rows, tokens = first.shape[0], first.size
    precision = jax.config.jax_default_matmul_precision
    tf32 = dtype == "float32" and jax.default_backend() == "gpu" and precision in (None, "default")
    peak_flops = peak.get("tfloat32" if tf32 else dtype)
    return {
        "label": label,
        "dtype": dtype,
        "matmul_precision": "tf32 (JAX's default on GPUs)" if tf32 else (precision or "default"),
        "batch": list(first.shape),
        "compile_s": round(compile_s, 2),
        "step_s": seconds,
        "examples_per_s": rows / seconds,
        "tokens_per_s": tokens / seconds,
        "gflop_per_step": flops / 1e9,
        "xla_compiled_gflop_per_step": xla_flops / 1e9,
        "achieved_tflops": flops / seconds / 1e12,
        "mfu": (flops / seconds / peak_flops) if peak_flops and flops else None,
        "loss": float(metrics["loss"]),
    }


def cpu_peak() -> dict:
    """Float32 matmul FLOP/s measured here (best of 10): a CPU's 'peak' for MFU."""
    import jax
    import jax.numpy as jnp

    n = 2048
    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
    mm = jax.jit(lambda x, y: x @ y)
    mm(a, a).block_until_ready()
    best = float("inf")
    for _ in range(10):
        start = time.perf_counter()
        mm(a, a).block_until_ready()
        best = min(best, time.perf_counter() - start)
    return {"float32": 2 * n**3 / best, "bfloat16": None}


def timings(accelerator: bool, steps: int, peak: dict) -> dict:
    import jax.numpy as jnp
    import numpy as np

    from adapt import weights
    from adapt.convert.hf import load_pretrained
    from adapt.methods import ALL_LINEAR, LoRA, base
    from adapt.methods.qlora import QLoRA
    from adapt.models.llama import LlamaConfig, LlamaForCausalLM
    from adapt.quant import nf4
    from adapt.tasks.causal_lm import causal_lm_loss
    from adapt.tasks.classification import cross_entropy
    from benchmarks.qlora import TINYLLAMA

    rows = []
    rng = np.random.default_rng(0)
    size = 256 if accelerator else 16
    batch = {"ids": jnp.asarray(rng.integers(1000, 30000, (size, 128)), jnp.int32),
             "mask": jnp.ones((size, 128), jnp.int32),
             "labels": jnp.asarray(rng.integers(0, 2, size), jnp.int32)}  # fmt: skip
    for dtype in ("float32", "bfloat16") if accelerator else ("float32",):
        model, params, _ = load_pretrained(
            weights.resolve("all-MiniLM-L6-v2"), architecture="BertForSequenceClassification",
            num_labels=2, dtype=getattr(jnp, dtype),
        )  # fmt: skip
        lora = LoRA(r".*attention/self/(query|value)", rank=8, alpha=16)

        def loss(p, b, model=model, methods=(lora,)):
            logits = base.apply(model, p, list(methods), b["ids"], b["mask"])["logits"]
            return cross_entropy(logits.astype(jnp.float32), b["labels"])

        head = (r"classifier/.*", "head")
        rows.append(step_timing(f"minilm_lora_{dtype}", model, params, [lora],
                                [head, *lora.rules(), (".*", None)], batch, loss, dtype, steps,
                                peak))  # fmt: skip
        if dtype == "float32":
            full_loss = lambda p, b, model=model: loss(p, b, model, ())
            rows.append(step_timing("minilm_full_float32", model, params, [],
                                    [head, (".*", "backbone")], batch, full_loss, dtype, steps,
                                    peak))  # fmt: skip
    config = LlamaConfig(num_hidden_layers=2, dtype=jnp.bfloat16, **TINYLLAMA)
    decoder = LlamaForCausalLM(config)
    import jax

    dparams = jax.jit(decoder.init)(jax.random.key(0), jnp.ones((1, 8), jnp.int32))["params"]
    qlora = QLoRA(ALL_LINEAR["llama"], rank=8, alpha=16)
    keep = lambda p: p.endswith("/scale") or nf4.TAG in p
    from adapt import paths

    dparams = paths.map_with_path(lambda p, x: x if keep(p) else x.astype(jnp.bfloat16),
                                  qlora.prepare(dparams))  # fmt: skip
    seq = 512 if accelerator else 128
    tokens = {"ids": jnp.asarray(rng.integers(3, 32000, (8 if accelerator else 1, seq + 1)),
                                 jnp.int32)}  # fmt: skip

    def lm_loss(p, b):
        logits = base.apply(decoder, p, [qlora], b["ids"][:, :-1])["logits"]
        return causal_lm_loss(logits, b["ids"][:, 1:])[0]

    rows.append(step_timing("tinyllama2l_qlora_bfloat16", decoder, dparams, [qlora],
                            [*qlora.rules(), (".*", None)], tokens, lm_loss, "bfloat16", steps,
                            peak))  # fmt: skip
    return {"steps": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="benchmarks/results/device_check.json")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per measurement")
    parser.add_argument("--skip", default="", help="parts to skip: parity,runs,timings")
    args = parser.parse_args()
    from adapt import xla_defaults

    xla_defaults.apply()
    skip = set(filter(None, args.skip.split(",")))
    report: dict[str, Any] = {"date": time.strftime("%Y-%m-%d %H:%M:%S")}
    info = _part("machine", machine, report)
    accelerator = info.get("backend") not in (None, "cpu")
    if "parity" not in skip:
        _part("parity", parity, report)
    if "runs" not in skip:
        _part("lora_run", lambda: smoke_run("configs/text/minilm.py:dataset=sst2,method=lora,smoke"),
              report)  # fmt: skip
        _part("qlora_run", lambda: smoke_run("configs/llm/stories_sst2_qlora.py:smoke"), report)
    if "timings" not in skip:
        peak = PEAKS.get(info.get("device_kind", ""), {}) if accelerator else {}
        if not accelerator:
            peak = _part("cpu_peak", cpu_peak, report)
        _part("timings", lambda: timings(accelerator, args.steps, peak), report)
        for row in report["timings"].get("steps", []):
            mfu = f"{100 * row['mfu']:.1f}%" if row["mfu"] is not None else "n/a"
            print(f"  {row['label']:<28} {row['step_s'] * 1e3:9.1f} ms/step "
                  f"{row['tokens_per_s']:12,.0f} tokens/s {row['achieved_tflops']:8.3f} TFLOP/s "
                  f"MFU {mfu}")  # fmt: skip
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2))
    failed = [k for k, v in report.items() if isinstance(v, dict) and not v.get("ok", True)]
    print(f"wrote {args.out}; " + (f"FAILED: {', '.join(failed)}" if failed else "all parts ok"))
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
