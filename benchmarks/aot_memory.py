"""Per-device memory of the harness's train step, compiled ahead of time on forced CPU devices.

:func:`abstract_step` builds the step exactly as :mod:`adapt.harness.loop` does, but from
abstract values, so nothing is allocated: parameter shapes from ``jax.eval_shape`` of the
model's init, methods attached by :func:`adapt.harness.model_setup.attach_methods` under
``jax.eval_shape`` (QLoRA's ``prepare`` quantises the abstract kernels to NF4 leaves), the
partition and AdamW from :mod:`adapt.partition` / :mod:`adapt.optim`, the state's shardings
from :meth:`adapt.train.Trainer.abstract_state`, the frozen base cast as
:func:`adapt.train.place_frozen` casts it and sharded by :func:`adapt.sharding.param_shardings`,
the batch as ``jax.ShapeDtypeStruct``s sharded over ``data``. :func:`compile_memory` then
lowers and compiles ``Trainer.compile_step`` and reads ``memory_analysis()``: argument, output,
alias (donated state), temporary and generated-code bytes *per device* (an SPMD-partitioned
program is the per-device program).

The device count is fixed when JAX starts, so :func:`run_worker` runs a list of jobs in a fresh
process with ``XLA_FLAGS=--xla_force_host_platform_device_count=N`` and ``JAX_PLATFORMS=cpu``.
LLVM code generation comes after buffer assignment, so by default the worker also passes
:data:`CODEGEN_FLAGS`: a 1-layer LLaMA-2-7B step then compiles in about 3 s instead of 12-20 s,
and its temp bytes differ by 64 of 7.1 GB from XLA's defaults.

The worker always passes :data:`SCHEDULER_FLAGS` (XLA:CPU's memory-optimised instruction
scheduler). XLA:CPU's default schedules for concurrency: it runs the recomputation of every
rematerialised layer before the backward pass starts, so all recomputed activations are live at
once and remat shows no saving at all (an 8-layer MLP with per-layer ``jax.checkpoint``: 554 MB
of temp with or without it; 302 MB with it under the memory-optimised scheduler). An
accelerator's scheduler (XLA:GPU's latency-hiding scheduler) is memory-aware, so this is the
closer model of the program a GPU runs.
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
RANK = 16
STATS = ("argument", "output", "alias", "temp", "generated_code")
ACCOUNTS = ("frozen", "trainable", "opt_state", "batch", "nf4", "nf4_replicated")
SCHEDULER_FLAGS = (
    "--xla_cpu_scheduler_type=CPU_SCHEDULER_TYPE_MEMORY_OPTIMIZED "
    "--xla_disable_hlo_passes=cse_barrier_expander"
)
CODEGEN_FLAGS = (
    "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true "
    "--xla_cpu_use_fusion_emitters=false"
)


def _per_device(x: Any) -> int:
    return math.prod(x.sharding.shard_shape(x.shape)) * x.dtype.itemsize


def _unsharded_dims(flat: dict[str, Any], mesh: Any, rules: list[tuple[str, str]]) -> list[str]:
    """Dimensions the rules map to a mesh axis that stayed replicated, and why (adapt.sharding
    silently replicates a dimension the axis does not divide, and uses an axis once per leaf)."""
    from adapt import sharding

    mapping, found = dict(rules), set()
    for path, x in flat.items():
        spec = sharding.spec_for(path, x.shape, mesh, rules)
        for i, (dim, name) in enumerate(
            zip(x.shape, sharding.logical_axes(path, x.shape), strict=True)
        ):
            axis = mapping.get(name) if name else None
            if not axis or mesh.shape[axis] == 1 or spec[i] is not None:
                continue
            why = "does not divide" if dim % mesh.shape[axis] else f"'{axis}' used by another dim"
            generic = re.sub(r"layers_\d+", "layers_*", path)
            found.add(f"{generic} dim {i} ({dim}) over '{axis}' ({mesh.shape[axis]}): {why}")
    return sorted(found)


def abstract_step(job: dict[str, Any]) -> dict[str, Any]:
    """The harness's jitted train step for one setting and its abstract, sharded arguments.

    ``job``: ``config`` (LlamaConfig fields), ``method`` (lora | qlora), ``preset`` (a key of
    :data:`adapt.sharding.RULE_PRESETS`), ``axes`` (mesh axes), ``seq_len``, ``remat``, optional
    ``rank``. Returns ``{"step", "args": (state, frozen, batch), "mesh", "rules", "config",
    "trainable"}``; nothing is allocated.
    """
    import jax
    import jax.numpy as jnp

    from adapt import optim, partition, paths, sharding
    from adapt.harness.loop import loss_function
    from adapt.harness.model_setup import Model, attach_methods, dummy_inputs, forward_fn
    from adapt.models.llama import LlamaConfig, LlamaForCausalLM
    from adapt.train import Trainer

    config = LlamaConfig(**job["config"], dtype=jnp.bfloat16)
    module = LlamaForCausalLM(config)
    model = Model(module, {}, {}, "llama", config, "LlamaForCausalLM")
    model.params = jax.eval_shape(
        lambda r: module.init(r, *dummy_inputs(model))["params"], jax.random.key(0)
    )
    method_cfg = {
        "name": job["method"],
        "options": {"rank": job.get("rank", RANK), "alpha": 16, "targets": "all_linear"},
    }
    stages: list[Any] = []

    def attach(params, rng):  # the harness's attach_methods, traced: QLoRA quantises shapes
        model.params = params
        stages.append(attach_methods(model, method_cfg, rng))
        return model.params

    model.params = jax.eval_shape(attach, model.params, jax.random.key(1))
    labels = partition.label(model.params, stages[0][0])
    trainable, frozen = partition.split(model.params, labels)
    tl = partition.trainable_labels(labels)
    groups = {lab: {"lr": 2e-4, "weight_decay": 0.0} for lab in set(paths.flatten(tl).values())}
    tx = optim.build(tl, groups, total_steps=1000)

    mesh = sharding.make_mesh([tuple(a) for a in job["axes"]])
    rules = sharding.RULE_PRESETS[job["preset"]]
    trainer = Trainer(
        loss_function("causal_lm", forward_fn(model), None), tx, mesh, rules, remat=job["remat"]
    )
    state = trainer.abstract_state(trainable, {}, jax.ShapeDtypeStruct((2,), jnp.uint32))

    def cast(path, x):  # adapt.train.place_frozen's rule: floats to bf16, NF4 leaves as they are
        floating = jnp.issubdtype(x.dtype, jnp.floating) and "_nf4_" not in path
        return jax.ShapeDtypeStruct(x.shape, jnp.bfloat16 if floating else x.dtype)

    frozen = paths.map_with_path(cast, frozen)
    frozen = jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
        frozen,
        sharding.param_shardings(frozen, mesh, rules),
    )
    rows = mesh.shape["data"]  # one sequence per data-parallel shard
    batch_sh = sharding.batch_sharding(mesh)
    batch = {
        key: jax.ShapeDtypeStruct((rows, job["seq_len"]), jnp.int32, sharding=batch_sh)
        for key in ("input_ids", "attention_mask", "labels", "loss_mask")
    }
    step = trainer.compile_step(state, frozen, batch)
    return {
        "step": step,
        "args": (state, frozen, batch),
        "mesh": mesh,
        "rules": rules,
        "config": config,
        "trainable": trainable,
    }


def compile_memory(job: dict[str, Any]) -> dict[str, Any]:
    """Compile :func:`abstract_step` ahead of time and read XLA's per-device memory analysis.

    Returns the ``memory_analysis`` bytes, the per-device bytes of each input group as sharded
    (frozen base, adapters, AdamW state, batch, NF4 leaves, NF4 leaves left replicated), the dimensions the
    rules map to a mesh axis but that stayed replicated, and timings.
    """
    import jax

    from adapt import partition, paths

    t0 = time.perf_counter()
    built = abstract_step(job)
    state, frozen, batch = built["args"]
    mesh, rules, config, trainable = (built[k] for k in ("mesh", "rules", "config", "trainable"))
    t1 = time.perf_counter()
    compiled = built["step"].lower(state, frozen, batch, None).compile()  # no penalty inputs
    t2 = time.perf_counter()
    mem = compiled.memory_analysis()

    flat_frozen = paths.flatten(frozen)
    accounts = {
        "frozen": sum(_per_device(x) for x in flat_frozen.values()),
        "trainable": sum(_per_device(x) for x in jax.tree.leaves(state["trainable"])),
        "opt_state": sum(_per_device(x) for x in jax.tree.leaves(state["opt_state"])),
        "batch": sum(_per_device(x) for x in batch.values()),
        "nf4": sum(_per_device(x) for p, x in flat_frozen.items() if "_nf4_" in p),
        "nf4_replicated": sum(
            _per_device(x)
            for p, x in flat_frozen.items()
            if "_nf4_" in p and x.sharding.is_fully_replicated
        ),
    }
    return {
        **{k: job[k] for k in ("method", "preset", "axes", "seq_len", "remat")},
        "layers": config.num_hidden_layers,
        "devices": mesh.size,
        "global_batch": mesh.shape["data"],
        "bytes": {s: int(getattr(mem, f"{s}_size_in_bytes")) for s in STATS},
        "accounts": accounts,
        "trainable_params": partition.count(trainable),
        "unsharded_dims": _unsharded_dims(
            {**flat_frozen, **paths.flatten(state["trainable"])}, mesh, rules
        ),
        "setup_s": t1 - t0,
        "compile_s": t2 - t1,
    }


def _worker(jobs_path: str, out_path: str) -> None:
    """The child's side of :func:`run_worker`: compile every job, write the results as JSON."""
    jobs = json.loads(Path(jobs_path).read_text())
    results = []
    for job in jobs:
        r = compile_memory(job)
        tag = job.get("tag") or f"{r['method']} {r['preset']} {r['axes']}"
        results.append({**r, "tag": tag})
        print(
            f"  [{len(jobs)} jobs] {tag} L={r['layers']}: compiled in {r['compile_s']:.1f}s",
            file=sys.stderr,
            flush=True,
        )
    Path(out_path).write_text(json.dumps(results))


def run_worker(
    devices: int, jobs: list[dict[str, Any]], default_codegen: bool = False
) -> list[dict[str, Any]]:
    """Run :func:`compile_memory` for each job in a fresh process with ``devices`` forced CPU
    devices (the device count is fixed when JAX starts, hence one process per count)."""
    inherited = re.sub(
        r"--xla_force_host_platform_device_count=\S+", "", os.environ.get("XLA_FLAGS", "")
    )
    flags = [
        inherited.strip(),
        f"--xla_force_host_platform_device_count={devices}",
        SCHEDULER_FLAGS,
    ]
    if not default_codegen:
        flags.append(CODEGEN_FLAGS)
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": " ".join(f for f in flags if f)}
    with tempfile.TemporaryDirectory(prefix="adapt-scale-plan-") as tmp:
        jobs_path, out_path = Path(tmp) / "jobs.json", Path(tmp) / "out.json"
        jobs_path.write_text(json.dumps(jobs))
        cmd = [sys.executable, "-m", "benchmarks.aot_memory", str(jobs_path)]
        proc = subprocess.run(
            [*cmd, str(out_path)], env=env, cwd=REPO, stdout=subprocess.PIPE, text=True
        )
        if proc.returncode != 0:
            raise RuntimeError(f"worker for {devices} devices failed (exit {proc.returncode})")
        return json.loads(out_path.read_text())


if (
    __name__ == "__main__"
):  # python -m benchmarks.aot_memory JOBS.json OUT.json (run_worker's child)
    _worker(*sys.argv[1:3])
