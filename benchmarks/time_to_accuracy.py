"""Time to a stated test accuracy: adapt against transformers + PEFT, the same recipe and batches.

    python -m benchmarks.time_to_accuracy [--modes lora,full] [--max-epochs 3] [--smoke]

all-MiniLM-L6-v2 with Hugging Face's BertForSequenceClassification head (the pooler: the
architecture both frameworks build the same way) on Banking77, all 10,003 training sentences,
from a fresh head. Both frameworks see the same batches in the same order (32 sentences, padded
to 16, 32 or 64 tokens, the smallest that holds the batch: adapt compiles once per shape, and its
compilation counts in its time, as a researcher waits for it), AdamW (weight decay 0.01, none on biases and
LayerNorm), 10% linear warm-up then linear decay over ``--max-epochs``, dropout on; LoRA: rank 8
on query and value (alpha 16) with the head trained, lr 1e-3; full fine-tuning: lr 5e-5. Every
``--eval-every`` steps each evaluates the 3,080 test sentences (a benchmark measuring when a
target is reached, not a model selection) and stops at the first evaluation at or above the
target (``--target-lora``, ``--target-full``). Reported per framework and mode: steps and
training wall time to the target (evaluation time excluded, reported apart), the accuracy
reached, and the ratio torch / adapt; each (framework, mode) runs in its own process, one after
another, so compare ratios from one run. Writes benchmarks/results/time_to_accuracy.json.
``--smoke`` runs a few steps on a few sentences with a trivial target (the tests' check that
both loops work).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "third_party" / "banking77"
LR = {"lora": 1e-3, "full": 5e-5}
WEIGHT_DECAY = 0.01
BATCH, MAX_LEN = 32, 64


def load(smoke: bool) -> dict[str, Any]:
    """Token ids of the training and test sentences, labels, and the batch order."""
    from tokenizers import Tokenizer

    from adapt import weights
    from adapt.data.text import read_text_classification

    kwargs = dict(text_column="text", label_column="category",
                  label_names_file=DATA / "categories.json")  # fmt: skip
    train = read_text_classification(DATA, split="train", **kwargs)
    test = read_text_classification(DATA, split="test", **kwargs)
    tokenizer = Tokenizer.from_file(str(weights.resolve("all-MiniLM-L6-v2") / "tokenizer.json"))
    tokenizer.no_padding()
    tokenizer.enable_truncation(MAX_LEN)
    encode = lambda texts: [e.ids for e in tokenizer.encode_batch(list(texts))]
    out = {"train_ids": encode(train.inputs["text"]), "train_labels": train.labels,
           "test_ids": encode(test.inputs["text"]), "test_labels": test.labels,
           "classes": len(train.label_names)}  # fmt: skip
    if smoke:
        out["train_ids"], out["train_labels"] = out["train_ids"][:128], out["train_labels"][:128]
        out["test_ids"], out["test_labels"] = out["test_ids"][:64], out["test_labels"][:64]
    return out


BUCKETS = (16, 32, 64)  # padded widths: adapt compiles once per shape (as the harness buckets)


def padded(rows: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
    width = next(b for b in BUCKETS if b >= max(len(r) for r in rows))
    ids = np.zeros((len(rows), width), np.int32)
    mask = np.zeros((len(rows), width), np.int32)
    for i, r in enumerate(rows):
        ids[i, : len(r)], mask[i, : len(r)] = r, 1
    return ids, mask


def batches(data: dict, epochs: int):
    """The same batches for both frameworks: epoch e shuffles with seed e; the last partial
    batch of an epoch is dropped (every batch has BATCH rows)."""
    n = len(data["train_ids"])
    for epoch in range(epochs):
        order = np.random.default_rng(epoch).permutation(n)
        for start in range(0, n - BATCH + 1, BATCH):
            rows = order[start : start + BATCH]
            ids, mask = padded([data["train_ids"][i] for i in rows])
            yield ids, mask, np.asarray(data["train_labels"])[rows].astype(np.int32)


def eval_batches(data: dict):
    for start in range(0, len(data["test_ids"]), 256):
        ids, mask = padded(data["test_ids"][start : start + 256])
        yield ids, mask, np.asarray(data["test_labels"][start : start + 256])


def schedule(step: int, total: int, lr: float) -> float:
    """10% linear warm-up from 0, then linear decay to 0 at ``total`` (torch's LambdaLR)."""
    warm = max(int(0.1 * total), 1)
    return lr * step / warm if step < warm else lr * max(total - step, 0) / max(total - warm, 1)


# ------------------------------------------------------------------------------------ adapt
def adapt_loop(mode: str, data: dict, args) -> dict:
    import jax
    import jax.numpy as jnp
    import optax

    from adapt import partition, weights
    from adapt.convert.hf import load_pretrained
    from adapt.methods import LoRA, base
    from adapt.step import init_state, train_step
    from adapt.tasks.classification import cross_entropy

    model, params, _ = load_pretrained(
        weights.resolve("all-MiniLM-L6-v2"), architecture="BertForSequenceClassification",
        num_labels=data["classes"], pooling="pooler",
    )  # fmt: skip
    methods = [LoRA(r".*attention/self/(query|value)", rank=8, alpha=16)] if mode == "lora" else []
    example = jnp.ones((1, 8), jnp.int32)
    if methods:
        params = partition.merge(params, base.init(model, params, methods, jax.random.key(1),
                                                   example, example))  # fmt: skip
        rules = [(r"classifier/.*", "train"), *[(p, "train") for p, _ in methods[0].rules()],
                 (".*", None)]  # fmt: skip
    else:
        rules = [(".*", "train")]
    labels = partition.label(params, rules)
    trainable, frozen = partition.split(params, labels)
    total = args.max_epochs * (len(data["train_ids"]) // BATCH)
    decay = lambda tree: jax.tree_util.tree_map_with_path(
        lambda path, _: not any("bias" in str(k) or "LayerNorm" in str(k) for k in path), tree
    )
    warm = max(int(0.1 * total), 1)  # schedule() as optax schedules (traceable)
    lr = optax.join_schedules([optax.linear_schedule(0.0, LR[mode], warm),
                               optax.linear_schedule(LR[mode], 0.0, max(total - warm, 1))], [warm])  # fmt: skip
    tx = optax.adamw(lr, weight_decay=WEIGHT_DECAY, mask=decay)

    def loss_fn(p, model_state, batch, rng):
        logits = base.apply(model, p, methods, batch["ids"], batch["mask"], deterministic=False,
                            rngs={"dropout": rng})["logits"]  # fmt: skip
        return cross_entropy(logits, batch["labels"]), ({}, model_state)

    step = jax.jit(train_step(loss_fn, tx), donate_argnums=0)
    predict = jax.jit(lambda p, ids, mask: jnp.argmax(
        base.apply(model, partition.merge(p, frozen), methods, ids, mask)["logits"], -1))  # fmt: skip
    state = init_state(trainable, tx, rng=jax.random.key(0))

    def accuracy() -> float:
        hits = sum(int((np.asarray(predict(state["trainable"], i, m)) == y).sum())
                   for i, m, y in eval_batches(data))  # fmt: skip
        return hits / len(data["test_ids"])

    def train(ids, mask, y):
        nonlocal state
        state, metrics = step(state, frozen, {"ids": ids, "mask": mask, "labels": y})
        metrics["loss"].block_until_ready()

    return _race(train, accuracy, data, args, mode)


# ------------------------------------------------------------------------------------ torch
def torch_loop(mode: str, data: dict, args) -> dict:
    import torch
    import transformers
    from transformers import BertForSequenceClassification

    from adapt import weights

    transformers.logging.set_verbosity_error()
    torch.manual_seed(0)
    model = BertForSequenceClassification.from_pretrained(
        weights.resolve("all-MiniLM-L6-v2"), num_labels=data["classes"]
    )
    if mode == "lora":
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0,
                                                 target_modules=["query", "value"],
                                                 modules_to_save=["classifier"]))  # fmt: skip
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    plain = lambda n: "bias" in n or "LayerNorm" in n
    opt = torch.optim.AdamW([{"params": [p for n, p in named if not plain(n)],
                              "weight_decay": WEIGHT_DECAY},
                             {"params": [p for n, p in named if plain(n)], "weight_decay": 0.0}],
                            lr=LR[mode])  # fmt: skip
    total = args.max_epochs * (len(data["train_ids"]) // BATCH)
    lr_at = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: schedule(s, total, 1.0))
    as_t = lambda a: torch.from_numpy(np.asarray(a)).long()

    def accuracy() -> float:
        model.eval()
        hits = 0
        with torch.inference_mode():
            for ids, mask, y in eval_batches(data):
                logits = model(input_ids=as_t(ids), attention_mask=as_t(mask)).logits
                hits += int((logits.argmax(-1).numpy() == y).sum())
        model.train()
        return hits / len(data["test_ids"])

    def train(ids, mask, y):
        opt.zero_grad(set_to_none=True)
        logits = model(input_ids=as_t(ids), attention_mask=as_t(mask)).logits
        torch.nn.functional.cross_entropy(logits, as_t(y)).backward()
        opt.step()
        lr_at.step()

    model.train()
    return _race(train, accuracy, data, args, mode)


def _race(train, accuracy, data: dict, args, mode: str) -> dict:
    target = args.target_lora if mode == "lora" else args.target_full
    train_s = eval_s = 0.0
    history = []
    for step, (ids, mask, y) in enumerate(batches(data, args.max_epochs), start=1):
        start = time.perf_counter()
        train(ids, mask, y)
        train_s += time.perf_counter() - start
        if step % args.eval_every == 0:
            start = time.perf_counter()
            acc = accuracy()
            eval_s += time.perf_counter() - start
            history.append({"step": step, "train_s": train_s, "accuracy": acc})
            print(f"  step {step}: test accuracy {acc:.4f} after {train_s:.0f} s", flush=True)
            if acc >= target:
                return {"reached": True, "target": target, "steps": step, "train_s": train_s,
                        "eval_s": eval_s, "accuracy": acc, "history": history}  # fmt: skip
    return {"reached": False, "target": target, "steps": None, "train_s": train_s,
            "eval_s": eval_s, "accuracy": history[-1]["accuracy"] if history else None,
            "history": history}  # fmt: skip


def worker(framework: str, mode: str, args) -> dict:
    data = load(args.smoke)
    loop = adapt_loop if framework == "adapt" else torch_loop
    return loop(mode, data, args)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--modes", default="lora,full")
    parser.add_argument("--max-epochs", type=int, default=3)
    parser.add_argument("--eval-every", type=int, default=100)
    parser.add_argument("--target-lora", type=float, default=0.90)
    parser.add_argument("--target-full", type=float, default=0.92)
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--out", default="benchmarks/results/time_to_accuracy.json")
    parser.add_argument("--worker", default="", help=argparse.SUPPRESS)  # framework:mode
    args = parser.parse_args()
    if args.smoke:
        args.max_epochs, args.eval_every = 1, 2
        args.target_lora = args.target_full = 0.0
    from adapt import xla_defaults

    xla_defaults.apply()
    if args.worker:
        framework, mode = args.worker.split(":")
        print("RESULT " + json.dumps(worker(framework, mode, args)), flush=True)
        return
    results: dict[str, dict] = {}
    for mode in args.modes.split(","):
        for framework in ("adapt", "torch"):
            print(f"{framework} {mode}", flush=True)
            cmd = [sys.executable, "-m", "benchmarks.time_to_accuracy", *sys.argv[1:],
                   f"--worker={framework}:{mode}"]  # fmt: skip
            out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, check=False,
                                 env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})  # fmt: skip
            line = next((ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")), None)
            if out.returncode != 0 or line is None:
                raise RuntimeError(f"{framework} {mode} failed:\n{out.stderr[-3000:]}")
            results.setdefault(mode, {})[framework] = json.loads(line[len("RESULT ") :])
    print(f"\nall-MiniLM-L6-v2 on Banking77, batch {BATCH}, up to {args.max_epochs} epochs")
    print(f"{'mode':<6} {'framework':<9} {'target':>7} {'steps':>6} {'train s':>8} {'eval s':>7}")
    for mode, by in results.items():
        for framework, r in by.items():
            steps = r["steps"] if r["reached"] else "-"
            print(f"{mode:<6} {framework:<9} {r['target']:>7.3f} {steps!s:>6} "
                  f"{r['train_s']:>8.1f} {r['eval_s']:>7.1f}")  # fmt: skip
        if by["adapt"]["reached"] and by["torch"]["reached"]:
            ratio = by["torch"]["train_s"] / by["adapt"]["train_s"]
            by["torch_over_adapt"] = ratio if math.isfinite(ratio) else None
            print(f"{mode}: torch / adapt time to target = {ratio:.2f}x")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"args": vars(args), "results": results}, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
