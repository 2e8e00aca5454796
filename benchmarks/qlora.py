"""Base-weight storage and step time of QLoRA against bfloat16 LoRA on LLaMA.

    python -m benchmarks.qlora [--steps 5] [--layers 2]

Storage: bytes per weight of the linear layers QLoRA quantises (every projection of the
blocks), held in float32, bfloat16, NF4 with float32 block scales, and NF4 with double
quantisation (what QLoRA stores), measured from the arrays themselves, on stories260K and on a
synthetic stack of TinyLlama-1.1B-shaped layers (hidden 2048, MLP 5632, 32 heads, 4 KV heads).

Step time: one jitted AdamW step of LoRA (rank 8 on every linear layer, bfloat16 base and
compute) and of QLoRA (the same adapters; linear layers in NF4, dequantised to bfloat16 inside
the step; norms float32; embeddings and head bfloat16), median of ``--steps`` after the
compiling one, measured one after the other in one process; with the frozen bytes each holds.
Writes benchmarks/results/qlora.json.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

from adapt import partition, paths, xla_defaults
from adapt.convert.llama2c import load_llama2c
from adapt.methods import ALL_LINEAR, LoRA, base
from adapt.methods.qlora import QLoRA, quantize_base
from adapt.models.llama import LlamaConfig, LlamaForCausalLM
from adapt.quant import nf4
from adapt.step import jit_train_step
from adapt.tasks.causal_lm import causal_lm_loss

TARGETS = ALL_LINEAR["llama"]
TINYLLAMA = dict(
    vocab_size=32000,
    hidden_size=2048,
    intermediate_size=5632,
    num_attention_heads=32,
    num_key_value_heads=4,
)


def storage(params: dict) -> dict:
    """Bytes per quantised weight in each storage format."""
    kernels = {
        p: v for p, v in paths.flatten(params).items() if p.endswith("/kernel") and _target(p)
    }
    n = sum(v.size for v in kernels.values())
    out: dict = {"weights": n}
    for dtype in ("float32", "bfloat16"):
        out[dtype] = (
            sum(np.asarray(v).astype(jnp.dtype(dtype)).nbytes for v in kernels.values()) / n
        )
    for name, dq in (("nf4", False), ("nf4_dq", True)):
        q = quantize_base(params, TARGETS, double_quant=dq)
        report = nf4.storage(q)
        assert report["params"] == n
        out[name] = report["bytes_per_param"]
    return out


def _target(path: str) -> bool:
    return bool(re.fullmatch(TARGETS, path[: -len("/kernel")]))


def step_time(model, params, method, batch, steps: int) -> dict:
    if isinstance(method, QLoRA):  # linear layers NF4, norms float32, the rest bfloat16
        keep = lambda p: p.endswith("/scale") or nf4.TAG in p
        params = paths.map_with_path(
            lambda p, x: x if keep(p) else x.astype(jnp.bfloat16), method.prepare(params)
        )
    else:  # bfloat16 LoRA: the frozen base held in bfloat16
        params = jax.tree.map(lambda x: x.astype(jnp.bfloat16), params)
    extra = base.init(model, params, [method], jax.random.key(1), batch[:1, :8])
    full = partition.merge(params, extra)
    labels = partition.label(full, [*method.rules(), (".*", None)])
    trainable, frozen = partition.split(full, labels)
    trainable = jax.tree.map(jnp.copy, trainable)
    frozen_bytes = sum(x.nbytes for x in jax.tree.leaves(frozen))
    tx = optax.adamw(1e-4)
    opt_state = tx.init(trainable)

    def loss_fn(p, ids, rng):
        logits = base.apply(model, p, [method], ids[:, :-1])["logits"]
        return causal_lm_loss(logits, ids[:, 1:])[0], {}

    step = jit_train_step(loss_fn, tx)
    t0 = time.perf_counter()
    trainable, opt_state, loss, _ = step(trainable, frozen, opt_state, batch, jax.random.key(0))
    loss.block_until_ready()
    first = time.perf_counter() - t0
    times = []
    for i in range(steps):
        t0 = time.perf_counter()
        trainable, opt_state, loss, _ = step(trainable, frozen, opt_state, batch, jax.random.key(i))
        loss.block_until_ready()
        times.append(time.perf_counter() - t0)
    return {
        "first_step_s": first,
        "median_step_s": statistics.median(times),
        "frozen_bytes": int(frozen_bytes),
        "loss": float(loss),
    }


def compare(name: str, model, params, batch, steps: int) -> dict:
    row = {"model": name, "batch": list(batch.shape)}
    for label, method in (
        ("lora_bf16", LoRA(TARGETS, rank=8, alpha=16)),
        ("qlora", QLoRA(TARGETS, rank=8, alpha=16)),
    ):
        row[label] = step_time(model, params, method, batch, steps)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--layers", type=int, default=2, help="TinyLlama-shaped layers")
    parser.add_argument("--seq", type=int, default=128, help="tokens per row (TinyLlama stack)")
    parser.add_argument("--out", default="benchmarks/results/qlora.json")
    args = parser.parse_args()
    xla_defaults.apply()  # adapt's CPU flags, as the experiments run
    rng = np.random.default_rng(0)

    model, params, config = load_llama2c(
        "third_party/stories260K/stories260K.bin", dtype=jnp.bfloat16
    )
    synth_config = LlamaConfig(num_hidden_layers=args.layers, dtype=jnp.bfloat16, **TINYLLAMA)
    synth = LlamaForCausalLM(synth_config)
    synth_params = jax.jit(synth.init)(jax.random.key(0), jnp.ones((1, 8), jnp.int32))["params"]

    sizes = {
        "stories260K": storage(params),
        f"tinyllama_shaped_{args.layers}_layers": storage(synth_params),
    }
    print("bytes per weight of the quantised linear layers")
    print(f"{'model':<28} {'weights':>12} {'float32':>8} {'bf16':>6} {'NF4':>7} {'NF4+DQ':>7}")
    for name, s in sizes.items():
        print(
            f"{name:<28} {s['weights']:>12,} {s['float32']:>8.3f} {s['bfloat16']:>6.3f} "
            f"{s['nf4']:>7.4f} {s['nf4_dq']:>7.4f}"
        )

    stories_batch = jnp.asarray(rng.integers(3, config.vocab_size, (8, 129)), jnp.int32)
    synth_batch = jnp.asarray(rng.integers(3, 32000, (1, args.seq + 1)), jnp.int32)
    rows = [
        compare("stories260K", model, params, stories_batch, args.steps),
        compare(
            f"tinyllama_shaped_{args.layers}_layers",
            synth,
            synth_params,
            synth_batch,
            args.steps,
        ),
    ]
    print(f"\nAdamW step, LoRA r=8 on every linear layer, {jax.default_backend()} device")
    print(
        f"{'model':<28} {'method':<10} {'frozen bytes':>14} {'compile+1st':>12} {'step (med)':>11}"
    )
    for row in rows:
        for label in ("lora_bf16", "qlora"):
            r = row[label]
            print(
                f"{row['model']:<28} {label:<10} {r['frozen_bytes']:>14,} "
                f"{r['first_step_s']:>11.1f}s {r['median_step_s']:>10.3f}s"
            )
        ratio = row["qlora"]["median_step_s"] / row["lora_bf16"]["median_step_s"]
        print(f"{'':<28} QLoRA / LoRA step time: {ratio:.2f}x")
        row["qlora_over_lora_step"] = ratio
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps({"device": jax.default_backend(), "storage": sizes, "steps": rows}, indent=2)
    )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
