"""Checkpointer: sharded round trip, keep-N, meta, fingerprint refusal, SIGKILL safety, SIGTERM,
exact resume; and the fingerprints themselves."""

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from adapt import step as step_lib
from adapt.checkpoint import (
    Checkpointer,
    PreemptionFlag,
    WorkdirMismatchError,
    abstract_of,
    install_sigterm_handler,
)
from adapt.fingerprint import canonical_json, config_fingerprint, params_fingerprint

REPO = Path(__file__).resolve().parents[1]
FP = {"config": "c" * 64, "base": "b" * 64}


def _mesh():
    return jax.make_mesh((4, 2), ("data", "model"))


def _state(mesh, scale=1.0):
    w = jax.device_put(
        jnp.arange(64, dtype=jnp.float32).reshape(8, 8) * scale,
        NamedSharding(mesh, P("data", "model")),
    )
    b = jax.device_put(jnp.full((6,), scale, jnp.bfloat16), NamedSharding(mesh, P()))
    trainable = {"dense": {"kernel": w, "bias": b}}
    opt_state = optax.adamw(1e-3).init(trainable)
    # make the optimizer moments non-trivial so a restore of zeros would be caught
    opt_state = jax.tree.map(
        lambda x: x + 0.5 if jnp.issubdtype(x.dtype, jnp.floating) else x, opt_state
    )
    return {
        "trainable": trainable,
        "opt_state": opt_state,
        "step": jnp.asarray(7, jnp.int32),
        "rng": jax.random.key(42),
    }


def _host(tree):
    return jax.tree.map(
        lambda x: np.asarray(
            jax.random.key_data(x) if jnp.issubdtype(x.dtype, jax.dtypes.prng_key) else x
        ),
        tree,
    )


def _assert_tree_equal(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(_host(a)), jax.tree.leaves(_host(b)), strict=True):
        assert x.dtype == y.dtype and x.shape == y.shape
        np.testing.assert_array_equal(x, y)


def _snapshot(root: Path) -> dict:
    return {
        str(p.relative_to(root)): (p.stat().st_mtime_ns, p.stat().st_size)
        for p in sorted(root.rglob("*"))
    }


# ----------------------------------------------------------------------------- round trip
def test_sharded_round_trip_meta_and_donation_safety(tmp_path):
    mesh = _mesh()
    state = _state(mesh)
    expected = _host(state)
    abstract = abstract_of(state)
    meta = {
        "data_position": 10,
        "metrics": {"train": [{"step": 10, "loss": 0.25}]},
        "lr": np.float32(0.5),
    }
    ckpt = Checkpointer(tmp_path, every=5, keep=3, fingerprint=FP)
    assert ckpt.save(10, state, meta)
    # save returned: the arrays are on the host, so the loop may donate (here: delete) them now
    for leaf in jax.tree.leaves(state):
        leaf.delete()
    ckpt.close()

    ckpt = Checkpointer(tmp_path, every=5, keep=3, fingerprint=FP)
    assert ckpt.latest_step() == 10
    restored, got_meta = ckpt.restore(abstract)
    _assert_tree_equal(restored, expected)
    kernel = restored["trainable"]["dense"]["kernel"]
    assert kernel.sharding == abstract["trainable"]["dense"]["kernel"].sharding
    assert len(kernel.addressable_shards) == 8
    assert kernel.addressable_shards[0].data.shape == (2, 4)
    assert jnp.issubdtype(restored["rng"].dtype, jax.dtypes.prng_key)
    assert got_meta["data_position"] == 10 and got_meta["step"] == 10
    assert got_meta["metrics"] == meta["metrics"] and got_meta["lr"] == 0.5
    assert got_meta["fingerprint"] == FP

    # the same checkpoint restores onto a different layout (e.g. a resumed run on another mesh)
    other = jax.tree.map(
        lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=NamedSharding(mesh, P())),
        abstract,
    )
    other["trainable"]["dense"]["kernel"] = jax.ShapeDtypeStruct(
        (8, 8), jnp.float32, sharding=NamedSharding(mesh, P(None, "data"))
    )
    restored2, _ = ckpt.restore(other)
    _assert_tree_equal(restored2, expected)
    assert restored2["trainable"]["dense"]["kernel"].sharding.spec == P(None, "data")
    ckpt.close()


def test_every_keep_and_force(tmp_path):
    state = {"w": jnp.zeros(3)}
    with Checkpointer(tmp_path, every=2, keep=2, fingerprint=FP) as ckpt:
        saved = [s for s in range(10) if ckpt.save(s, jax.tree.map(lambda x, s=s: x + s, state))]
        assert saved == [2, 4, 6, 8]  # step 0 (untrained) only when forced
        ckpt.wait()
        assert ckpt.all_steps() == [6, 8]
        assert ckpt.save(9, state, force=True)  # end of run / SIGTERM
        assert not ckpt.save(9, state, force=True)  # already on disk: skipped, not an error
        ckpt.wait()
        assert ckpt.all_steps() == [8, 9]
        restored, meta = ckpt.restore(abstract_of(state), step=8)
        np.testing.assert_array_equal(restored["w"], np.full(3, 8.0))
        assert meta["step"] == 8
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["8", "9"]


# ----------------------------------------------------------------------------- fingerprints
def test_mismatch_refused_without_touching_the_workdir(tmp_path):
    config = {"model": {"rank": 8}, "lr": 1e-3, "workdir": str(tmp_path)}
    fp = {"config": config_fingerprint(config), "base": FP["base"]}
    with Checkpointer(tmp_path, every=1, keep=5, fingerprint=fp, config=config) as ckpt:
        for s in (1, 2):
            ckpt.save(s, {"w": jnp.ones(4) * s})
    # leftover of a killed save: only a *matching* Checkpointer may clean it up
    leftover = tmp_path / "checkpoints" / "3.orbax-checkpoint-tmp-1234567890"
    leftover.mkdir()
    (tmp_path / "metrics.jsonl").write_text('{"step": 1}\n')
    before = _snapshot(tmp_path)
    time.sleep(0.01)

    changed = {**config, "lr": 2e-3}
    with pytest.raises(WorkdirMismatchError) as err:
        Checkpointer(
            tmp_path,
            every=1,
            keep=1,
            fingerprint={"config": config_fingerprint(changed), "base": fp["base"]},
            config=changed,
        )
    msg = str(err.value)
    assert "config differs" in msg and "base" not in msg.split("Resuming")[0]
    assert "lr: 0.001 -> 0.002" in msg and "new workdir" in msg and "rm -r" in msg
    with pytest.raises(WorkdirMismatchError, match="base parameters differ"):
        Checkpointer(tmp_path, every=1, keep=1, fingerprint={**fp, "base": "e" * 64})
    assert _snapshot(tmp_path) == before

    # a new workdir path is not part of the run: the matching run resumes and cleans up
    moved = {**config, "workdir": "/elsewhere", "log_every": 7}
    assert config_fingerprint(moved) == fp["config"]
    with Checkpointer(tmp_path, every=1, keep=5, fingerprint=fp) as ckpt:
        assert ckpt.latest_step() == 2
        assert ckpt.save(3, {"w": jnp.ones(4) * 3})  # a save first awaits orbax's tmp cleanup
        assert not leftover.exists()


def test_checkpoint_without_fingerprint_is_refused(tmp_path):
    mgr = ocp.CheckpointManager(tmp_path / "checkpoints", item_names=("state", "meta"))
    mgr.save(
        1,
        args=ocp.args.Composite(
            state=ocp.args.StandardSave({"w": jnp.ones(2)}), meta=ocp.args.JsonSave({"x": 1})
        ),
    )
    mgr.close()
    with pytest.raises(WorkdirMismatchError, match="without a run fingerprint"):
        Checkpointer(tmp_path, every=1, keep=1, fingerprint=FP)


def test_config_fingerprint_canonical():
    a = {"lr": 0.001, "model": {"name": "bert", "dims": (2, 3)}, "workdir": "/a", "log_every": 10}
    b = {"model": {"dims": [2, 3], "name": "bert"}, "lr": 1e-3, "workdir": "/b", "eval_every": 5}
    assert config_fingerprint(a) == config_fingerprint(b)
    assert canonical_json(a) == '{"lr":0.001,"model":{"dims":[2,3],"name":"bert"}}'
    assert config_fingerprint({**a, "lr": 0.002}) != config_fingerprint(a)
    assert config_fingerprint({**a, "total_steps": 100}) != config_fingerprint(
        {**a, "total_steps": 200}
    )
    assert config_fingerprint(a, ignore=("workdir", "log_every", "lr")) == config_fingerprint(
        {**a, "lr": 5.0}, ignore=("workdir", "log_every", "lr")
    )
    # dotted names only ignore that exact path
    nested = {"train": {"seed": 1}, "seed": 1}
    assert config_fingerprint(nested, ignore=("train.seed",)) == config_fingerprint(
        {"train": {"seed": 2}, "seed": 1}, ignore=("train.seed",)
    )
    with pytest.raises(TypeError, match=r"config\.loss"):
        config_fingerprint({"loss": lambda x: x})


def test_params_fingerprint_sensitive_and_sharding_independent():
    rng = np.random.default_rng(0)
    base = {
        "enc": {"kernel": rng.standard_normal((8, 16), np.float32)},
        "emb": rng.standard_normal(32).astype(np.float32),
    }
    ref = params_fingerprint(base)
    sharded = {
        "emb": jnp.asarray(base["emb"]),
        "enc": {
            "kernel": jax.device_put(
                base["enc"]["kernel"], NamedSharding(_mesh(), P("data", "model"))
            )
        },
    }
    assert params_fingerprint(sharded) == ref  # order and sharding do not matter
    bumped = base["enc"]["kernel"].copy()
    bumped[3, 5] = np.nextafter(bumped[3, 5], np.float32(np.inf))  # one ulp of one element
    assert params_fingerprint({**base, "enc": {"kernel": bumped}}) != ref
    assert (
        params_fingerprint({**base, "enc": {"kernel": base["enc"]["kernel"].reshape(16, 8)}}) != ref
    )
    assert (
        params_fingerprint({**base, "enc": {"kernel": base["enc"]["kernel"].view(np.int32)}}) != ref
    )
    assert params_fingerprint({"emb": base["emb"], "enc": {"weight": base["enc"]["kernel"]}}) != ref
    assert (
        params_fingerprint(
            {**base, "enc": {"kernel": jnp.asarray(base["enc"]["kernel"], jnp.bfloat16)}}
        )
        != ref
    )


def test_params_fingerprint_fast_for_25m_params():
    leaves = {f"layer_{i}": {"kernel": jnp.full((500, 500), i, jnp.float32)} for i in range(100)}
    params_fingerprint({"x": jnp.ones(2)})  # warm up imports
    start = time.perf_counter()
    params_fingerprint(leaves)
    elapsed = time.perf_counter() - start
    assert elapsed < 1.5, f"fingerprint of 25M float32 took {elapsed:.2f}s"


# ----------------------------------------------------------------------------- SIGKILL
_CHILD = textwrap.dedent(
    """
    import os, signal, sys
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=1"
    import jax.numpy as jnp
    import orbax.checkpoint as ocp
    from orbax.checkpoint._src.path import atomicity
    from adapt.checkpoint import Checkpointer

    workdir, mode = sys.argv[1], sys.argv[2]
    def die(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGKILL)

    async def die_async(*args, **kwargs):
        die()
    ckpt = Checkpointer(workdir, every=1, keep=100, fingerprint={"config": "c" * 64, "base": "b" * 64})
    n = 1 << 20 if mode == "external" else 1000
    for step in range(1, 10_000):
        if step == 3 and mode == "before_rename":  # every file written, not yet renamed
            atomicity.AtomicRenameTemporaryPath.finalize = die
        if step == 3 and mode == "mid_items":  # items being written in the background
            ocp.JsonCheckpointHandler._save_fn = die_async
        state = {"a": jnp.full((n,), step, jnp.float32), "b": jnp.full((n // 2,), -step, jnp.int32)}
        ckpt.save(step, state, {"data_position": step})
        if step == 2:
            ckpt.wait()
            print("ready", flush=True)
    """
)


def _kill_scenario(tmp_path, mode):
    script = tmp_path / "child.py"
    script.write_text(_CHILD)
    workdir = tmp_path / mode
    env = {**os.environ, "PYTHONPATH": str(REPO), "JAX_PLATFORMS": "cpu"}
    proc = subprocess.Popen(
        [sys.executable, str(script), str(workdir), mode],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env=env,
        text=True,
    )
    try:
        if mode == "external":
            assert proc.stdout.readline().strip() == "ready"
            ckdir = workdir / "checkpoints"
            deadline = time.time() + 600  # a hang guard only: a loaded machine is slow
            while not any(".orbax-checkpoint-tmp" in p.name for p in ckdir.iterdir()):
                assert time.time() < deadline, "child never started another save"
            proc.send_signal(signal.SIGKILL)  # somewhere inside a save
        proc.wait(timeout=600)  # a hang guard only
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    return workdir


@pytest.mark.parametrize("mode", ["before_rename", "mid_items", "external"])
def test_sigkill_during_save_never_yields_a_corrupt_checkpoint(tmp_path, mode):
    workdir = _kill_scenario(tmp_path, mode)
    ckdir = workdir / "checkpoints"
    leftovers = [p for p in ckdir.iterdir() if ".orbax-checkpoint-tmp" in p.name]
    if mode != "external":
        assert leftovers, "the kill should have hit a save in progress"
    ckpt = Checkpointer(workdir, every=1, keep=100, fingerprint=FP)
    latest = ckpt.latest_step()
    assert latest is not None and latest >= 2
    if mode != "external":
        assert latest == 2
    state = {"a": jnp.zeros((1,)), "b": jnp.zeros((1,), jnp.int32)}
    n = (1 << 20) if mode == "external" else 1000
    abstract = {
        "a": jax.ShapeDtypeStruct((n,), jnp.float32, sharding=state["a"].sharding),
        "b": jax.ShapeDtypeStruct((n // 2,), jnp.int32, sharding=state["b"].sharding),
    }
    for s in ckpt.all_steps():  # every listed checkpoint is complete and self-consistent
        restored, meta = ckpt.restore(abstract, step=s)
        assert meta["data_position"] == s
        np.testing.assert_array_equal(restored["a"], np.full(n, s, np.float32))
        np.testing.assert_array_equal(restored["b"], np.full(n // 2, -s, np.int32))
    assert not any(".orbax-checkpoint-tmp" in p.name for p in ckdir.iterdir())
    assert ckpt.save(
        latest + 1, jax.tree.map(lambda a: jax.numpy.zeros(a.shape, a.dtype), abstract)
    )
    ckpt.close()
    assert ckpt.latest_step() == latest + 1


# ----------------------------------------------------------------------------- SIGTERM
def test_sigterm_sets_flag_then_falls_through_and_restores_handler():
    calls = []
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: calls.append(signum))
    try:
        with install_sigterm_handler() as flag:
            assert not flag.is_set() and not flag.should_stop()
            os.kill(os.getpid(), signal.SIGTERM)
            assert flag.is_set() and flag.should_stop() and calls == []
            os.kill(os.getpid(), signal.SIGTERM)  # second signal: the previous handler runs
            assert calls == [signal.SIGTERM]
        flag2 = PreemptionFlag()
        with flag2:
            assert signal.getsignal(signal.SIGTERM) == flag2._handle
        assert signal.getsignal(signal.SIGTERM) is not flag2._handle
        os.kill(os.getpid(), signal.SIGTERM)
        assert calls == [signal.SIGTERM, signal.SIGTERM]  # previous handler is back
    finally:
        signal.signal(signal.SIGTERM, previous)


def _loop_setup():
    """A tiny model trained by the real train step with dropout-like noise from the rng."""
    x = jax.random.normal(jax.random.key(0), (16, 4))
    y = x @ jnp.array([1.0, -2.0, 0.5, 3.0])

    def loss_fn(params, batch, rng):
        noise = jax.random.normal(rng, batch["x"].shape) * 0.1
        pred = (batch["x"] + noise) @ params["w"] + params["b"]
        return jnp.mean((pred - batch["y"]) ** 2), {}

    tx = optax.adamw(0.1)
    step_fn = step_lib.jit_train_step(loss_fn, tx)
    frozen = {"b": jnp.float32(0.3)}

    def init():
        trainable = {"w": jnp.zeros(4)}
        return {
            "trainable": trainable,
            "opt_state": tx.init(trainable),
            "step": jnp.int32(0),
            "rng": jax.random.key(1),
        }

    def run(state, until, ckpt=None, flag=None, signal_at=None):
        while int(state["step"]) < until:
            s = int(state["step"])
            batch = {"x": x[(s % 4) * 4 : (s % 4 + 1) * 4], "y": y[(s % 4) * 4 : (s % 4 + 1) * 4]}
            rng = jax.random.fold_in(state["rng"], s)
            tr, opt, _, _ = step_fn(state["trainable"], frozen, state["opt_state"], batch, rng)
            state = {
                "trainable": tr,
                "opt_state": opt,
                "step": state["step"] + 1,
                "rng": state["rng"],
            }
            if signal_at == s + 1:
                os.kill(os.getpid(), signal.SIGTERM)
            if ckpt is not None:
                ckpt.save(
                    s + 1,
                    state,
                    {"data_position": s + 1},
                    force=flag is not None and flag.should_stop(),
                )
                if flag is not None and flag.should_stop():
                    break
        return state

    return init, run


def test_sigterm_stop_then_exact_resume(tmp_path):
    init, run = _loop_setup()
    straight = run(init(), 10)

    with (
        install_sigterm_handler() as flag,
        Checkpointer(tmp_path, every=100, keep=2, fingerprint=FP) as ckpt,
    ):
        stopped = run(init(), 10, ckpt=ckpt, flag=flag, signal_at=6)
    assert int(stopped["step"]) == 6  # stopped cleanly right after the signal ...

    with Checkpointer(tmp_path, every=100, keep=2, fingerprint=FP) as ckpt:
        assert ckpt.all_steps() == [6]  # ... with a forced save although every=100
        state, meta = ckpt.restore(abstract_of(init()))
    assert meta["data_position"] == 6
    resumed = run(state, 10)
    _assert_tree_equal(resumed, straight)  # bit-identical to the uninterrupted run


# ----------------------------------------------------------------------------- two processes
_MULTIHOST_CHILD = textwrap.dedent(
    """
    import sys
    import jax
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.config.update("jax_num_cpu_devices", 4)
    pid, port, workdir = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    jax.distributed.initialize(f"127.0.0.1:{port}", num_processes=2, process_id=pid)
    import numpy as np
    from jax.sharding import NamedSharding, PartitionSpec as P
    from adapt.checkpoint import Checkpointer, PreemptionFlag, abstract_of
    from adapt.fingerprint import params_fingerprint

    full = np.arange(64 * 3, dtype=np.float32).reshape(64, 3)
    sharding = NamedSharding(jax.make_mesh((8,), ("data",)), P("data"))
    arr = jax.make_array_from_callback(full.shape, sharding, lambda idx: full[idx])
    assert not arr.is_fully_addressable
    fp = params_fingerprint({"w": arr})
    flag = PreemptionFlag()
    if pid == 1:
        flag.set()  # only one process got SIGTERM; all must agree to stop
    with Checkpointer(workdir, every=1, keep=2, fingerprint={"config": "c" * 64, "base": fp}) as ck:
        ck.save(1, {"w": arr}, {"data_position": 1})
    with Checkpointer(workdir, every=1, keep=2, fingerprint={"config": "c" * 64, "base": fp}) as ck:
        state, meta = ck.restore(abstract_of({"w": arr}))
    shards_ok = all(
        np.array_equal(np.asarray(s.data), full[s.index]) for s in state["w"].addressable_shards
    )
    print("RESULT", fp == params_fingerprint({"w": full}), flag.should_stop(), shards_ok,
          meta["data_position"], flush=True)
    """
)


def test_two_processes_fingerprint_preemption_and_checkpoint(tmp_path):
    """Arrays spread over two real processes: the same fingerprint everywhere (equal to the
    host array's), a SIGTERM seen by one process stops both, save/restore of global arrays."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    script = tmp_path / "multihost.py"
    script.write_text(_MULTIHOST_CHILD)
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env.update(PYTHONPATH=str(REPO), JAX_PLATFORMS="cpu")
    procs = [
        subprocess.Popen(
            [sys.executable, str(script), str(i), str(port), str(tmp_path / "run")],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=env,
            text=True,
        )
        for i in range(2)
    ]
    try:
        outputs = [p.communicate(timeout=120)[0] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for p, out in zip(procs, outputs, strict=True):
        assert p.returncode == 0, out[-3000:]
        assert "RESULT True True True 1" in out, out[-3000:]
