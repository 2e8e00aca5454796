"""The per-device step (``mesh.mode="per_device"``: adapt's one train step under ``jax.shard_map``
or ``jax.pmap``, gradients all-reduced with explicit collectives) gives the losses of the jitted
global-batch step: on 8 fake CPU devices, with token-weighted losses whose weight differs from
device to device, with accumulation, and for LoRA and full fine-tuning through the harness."""

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from adapt import partition, sharding
from adapt.config import load_config_file
from adapt.step import LOSS_WEIGHT, init_state, train_step
from adapt.train import Trainer, place_frozen

REPO = Path(__file__).resolve().parents[1]
TOL = 1e-6


def _params():
    rng = np.random.default_rng(0)
    return {
        "embed": jnp.asarray(rng.normal(0, 0.5, (32, 8)), jnp.float32),
        "dense": {"kernel": jnp.asarray(rng.normal(0, 0.3, (8, 8)), jnp.float32)},
        "head": {"kernel": jnp.asarray(rng.normal(0, 0.3, (8, 32)), jnp.float32)},
    }


def token_loss(p, model_state, batch, rng):
    """A next-token loss averaged over the target tokens of the batch (its LOSS_WEIGHT)."""
    h = jnp.tanh(p["embed"][batch["ids"]] @ p["dense"]["kernel"])
    logp = jax.nn.log_softmax(h @ p["head"]["kernel"])
    nll = -jnp.take_along_axis(logp, batch["labels"][..., None], -1)[..., 0]
    weight = batch["mask"].sum()
    loss = (nll * batch["mask"]).sum() / jnp.maximum(weight, 1.0)
    return loss, ({LOSS_WEIGHT: weight, "tokens": weight}, model_state)


def _batches(n=3, rows=16, length=6):
    rng = np.random.default_rng(1)
    out = []
    for _ in range(n):
        ids = rng.integers(0, 32, (rows, length)).astype(np.int32)
        mask = np.zeros((rows, length), np.float32)
        for r in range(rows):  # 1 to 6 target tokens: each device's share of the loss differs
            mask[r, length - 1 - r % length :] = 1.0
        out.append({"ids": ids, "labels": np.roll(ids, -1, 1), "mask": mask})
    return out


def _run(per_device: bool, grad_accum: int = 1, trainable=r"(dense|head)/.*"):
    params = _params()
    labels = partition.label(params, [(trainable, "train"), (".*", None)])
    tx = optax.adamw(1e-2, eps=1e-3)  # eps: Adam's first step divides g by |g|
    mesh = sharding.make_mesh([("data", -1)])
    trainer = Trainer(token_loss, tx, mesh, per_device=per_device, grad_accum=grad_accum)
    train, frozen = partition.split(params, labels)
    frozen = place_frozen(frozen, mesh, [])
    state = trainer.init_state(train, {}, jax.random.key_data(jax.random.key(0)))
    losses = []
    for batch in _batches():
        state, metrics = trainer.step(state, frozen, batch)
        losses.append(float(metrics["loss"]))
    return losses, jax.tree.map(np.asarray, state["trainable"])


@pytest.mark.parametrize("grad_accum", [1, 2])
def test_per_device_equals_the_jitted_step_on_8_devices(grad_accum):
    assert jax.device_count() == 8
    (a, pa), (b, pb) = _run(False, grad_accum), _run(True, grad_accum)
    assert max(abs(x - y) for x, y in zip(a, b, strict=True)) < TOL
    assert a[0] != a[-1]  # it trained
    for x, y in zip(jax.tree.leaves(pa), jax.tree.leaves(pb), strict=True):
        np.testing.assert_allclose(x, y, atol=TOL, rtol=0)


def test_an_unweighted_mean_of_device_losses_would_differ():
    """The check above can fail: the devices' plain mean of their own losses is another number."""
    batch = _batches(1)[0]
    shards = [{k: v[i * 2 : i * 2 + 2] for k, v in batch.items()} for i in range(8)]
    p = _params()
    whole = float(token_loss(p, {}, batch, None)[0])
    plain = np.mean([float(token_loss(p, {}, s, None)[0]) for s in shards])
    assert abs(whole - plain) > 1e-3


def test_the_same_step_runs_under_pmap():
    """A legacy pmap loop: replicate the state, shard the batch by device, call the step."""
    params = _params()
    labels = partition.label(params, [(r"head/.*", "train"), (".*", None)])
    train, frozen = partition.split(params, labels)
    tx = optax.sgd(0.5)
    state = init_state(train, tx, rng=jax.random.key_data(jax.random.key(0)))
    n = jax.local_device_count()
    step = jax.pmap(train_step(token_loss, tx, reduce_axis="batch"), axis_name="batch")
    replicate = lambda tree: jax.tree.map(lambda x: jnp.stack([x] * n), tree)
    global_step = jax.jit(train_step(token_loss, tx))
    pstate, gstate = replicate(state), state
    for batch in _batches():
        per_device = {k: v.reshape(n, -1, *v.shape[1:]) for k, v in batch.items()}
        pstate, pm = step(pstate, replicate(frozen), per_device)
        gstate, gm = global_step(gstate, frozen, batch)
        assert abs(float(pm["loss"][0]) - float(gm["loss"])) < TOL
        assert float(pm["tokens"][0]) == pytest.approx(float(batch["mask"].sum()) / n)
    pairs = zip(
        jax.tree.leaves(pstate["trainable"]), jax.tree.leaves(gstate["trainable"]), strict=True
    )
    for x, y in pairs:
        np.testing.assert_allclose(np.asarray(x[0]), np.asarray(y), atol=TOL, rtol=0)


def test_per_device_refuses_model_parallel_meshes():
    mesh = sharding.make_mesh([("data", 4), ("model", 2)])
    with pytest.raises(ValueError, match="per-device step is data parallel"):
        Trainer(token_loss, optax.sgd(0.1), mesh, per_device=True)
    with pytest.raises(ValueError, match="per-device step is data parallel"):
        Trainer(token_loss, optax.sgd(0.1), sharding.make_mesh([("data", -1)]),
                sharding.RULE_PRESETS["fsdp"], per_device=True)  # fmt: skip


def _train_losses(workdir: Path) -> list[float]:
    rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in rows if r["split"] == "train"]


@pytest.mark.slow
@pytest.mark.parametrize("method", ["lora", "full"])
def test_the_harness_per_device_run_matches_the_jitted_run(tmp_path, method):
    from adapt.harness.loop import run

    losses = {}
    for mode in ("jit", "per_device"):
        config = load_config_file(
            str(REPO / "configs/text/minilm.py"), f"dataset=sst2,method={method},smoke"
        )
        config.mesh.mode = mode
        config.model.config = {"hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}
        run(config, tmp_path / mode)
        losses[mode] = _train_losses(tmp_path / mode)
    assert len(losses["jit"]) >= 4
    assert max(abs(a - b) for a, b in zip(*losses.values(), strict=True)) < TOL
