"""The Trainer on a toy model: sharding rules, gradient accumulation, remat, the NaN guard."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from adapt import optim, partition, sharding
from adapt.train import NonFiniteLossError, Trainer, check_finite, place_frozen

PARAMS = {
    "enc": {
        "layer_0": {
            "dense": {"kernel": jnp.full((8, 16), 0.1), "bias": jnp.zeros(16)},
            "output": {"dense": {"kernel": jnp.full((16, 8), 0.05), "bias": jnp.zeros(8)}},
        },
        "embeddings": {"word": {"embedding": jnp.full((32, 8), 0.02)}},
    },
    "head": {"kernel": jnp.full((8, 4), 0.1), "bias": jnp.zeros(4)},
}


def loss_fn(p, model_state, batch, rng):
    layer = p["enc"]["layer_0"]
    x = p["enc"]["embeddings"]["word"]["embedding"][batch["ids"]].mean(1)
    h = jnp.tanh(x @ layer["dense"]["kernel"] + layer["dense"]["bias"])
    h = h @ layer["output"]["dense"]["kernel"] + layer["output"]["dense"]["bias"] + x
    logits = h @ p["head"]["kernel"] + p["head"]["bias"]
    logp = jax.nn.log_softmax(logits)
    loss = -jnp.mean(jnp.take_along_axis(logp, batch["y"][:, None], 1)) * batch["scale"][0]
    return loss, ({}, model_state)


def _setup(mesh_axes=(("data", -1),), rules=(), **kwargs):
    mesh = sharding.make_mesh(list(mesh_axes))
    labels = partition.label(PARAMS, [("head/.*", "head"), (".*", "backbone")])
    tl = partition.trainable_labels(labels)
    # eps well above the gradient noise of different reduction orders: Adam's first steps divide
    # g by |g|, which would amplify 1e-10 differences in near-zero gradients into 1e-3 updates.
    groups = {
        "head": {"lr": 0.1, "eps": 1e-3},
        "backbone": {"lr": 0.05, "weight_decay": 0.01, "eps": 1e-3},
    }
    tx = optim.build(tl, groups, 100)
    trainer = Trainer(loss_fn, tx, mesh, list(rules), **kwargs)
    trainable, frozen = partition.split(PARAMS, labels)
    state = trainer.init_state(
        jax.tree.map(jnp.copy, trainable), {}, jax.random.key_data(jax.random.key(0))
    )
    return trainer, state, frozen


def _batches(n=4, size=16):
    rng = np.random.default_rng(0)
    return [
        {
            "ids": rng.integers(0, 32, (size, 5)),
            "y": rng.integers(0, 4, size),
            "scale": np.ones(size, np.float32),
        }
        for _ in range(n)
    ]


def _losses(trainer, state, frozen, batches):
    out = []
    for b in batches:
        state, m = trainer.step(state, frozen, b)
        out.append(float(m["loss"]))
    return out, state


def test_logical_axis_rules_shard_as_documented():
    mesh = sharding.make_mesh([("data", 4), ("model", 2)])
    specs = {
        p: s.spec
        for p, s in partition.paths.flatten(
            sharding.param_shardings(PARAMS, mesh, sharding.RULE_PRESETS["fsdp_tp"])
        ).items()
    }
    assert specs["enc/layer_0/dense/kernel"] == jax.sharding.PartitionSpec("data", "model")
    assert specs["enc/layer_0/output/dense/kernel"] == jax.sharding.PartitionSpec("model", "data")
    assert specs["enc/embeddings/word/embedding"] == jax.sharding.PartitionSpec("model", "data")
    assert specs["enc/layer_0/dense/bias"] == jax.sharding.PartitionSpec(None)
    with pytest.raises(ValueError, match="not in"):
        sharding.param_shardings(PARAMS, mesh, [("embed", "fsdp")])
    with pytest.raises(ValueError, match="needs 16 devices"):
        sharding.make_mesh([("data", 8), ("model", 2)])


@pytest.mark.slow
def test_sharded_training_matches_single_device():
    base, _ = _losses(*_setup(mesh_axes=(("data", 1),)), _batches())
    for axes, rules in [((("data", 8),), "fsdp"), ((("data", 4), ("model", 2)), "fsdp_tp")]:
        trainer, state, frozen = _setup(mesh_axes=axes, rules=sharding.RULE_PRESETS[rules])
        losses, state = _losses(trainer, state, frozen, _batches())
        np.testing.assert_allclose(losses, base, atol=1e-6)
        kernel = state["trainable"]["enc"]["layer_0"]["dense"]["kernel"]
        assert kernel.sharding.spec[0] == "data"  # born and kept sharded
        mu = [
            x for x in jax.tree.leaves(state["opt_state"]) if getattr(x, "shape", None) == (8, 16)
        ]
        assert mu and all(m.sharding.spec[0] == "data" for m in mu)  # moments sharded like params


@pytest.mark.slow
def test_gradient_accumulation_equals_the_full_batch():
    full, _ = _losses(*_setup(), _batches())
    accum, _ = _losses(*_setup(grad_accum=4), _batches())
    np.testing.assert_allclose(accum, full, atol=1e-6)


def test_remat_without_a_per_layer_hook_is_refused():
    # The toy loss has no layers to checkpoint; checkpointing the whole loss would lower nothing
    # (adapt.remat), so the option is an error rather than a silent no-op. LLaMA's per-layer
    # remat is tested in tests/test_layer_remat.py.
    with pytest.raises(ValueError, match="no per-layer rematerialisation hook"):
        _losses(*_setup(remat="full"), _batches(1))
    with pytest.raises(ValueError, match="remat must be one of"):
        _setup(remat="everything")


def test_a_non_finite_step_changes_nothing_and_is_reported():
    trainer, state, frozen = _setup()
    good = _batches(1)[0]
    state, _ = trainer.step(state, frozen, good)
    before = jax.tree.map(np.asarray, state)
    bad = {**good, "scale": np.full(16, np.nan, np.float32)}
    state, metrics = trainer.step(state, frozen, bad)
    with pytest.raises(NonFiniteLossError, match="step 2"):
        check_finite(metrics, 2)
    for a, b in zip(
        jax.tree.leaves(before), jax.tree.leaves(jax.tree.map(np.asarray, state)), strict=True
    ):
        np.testing.assert_array_equal(a, b)


@pytest.mark.slow
def test_accumulation_weights_a_prompt_masked_batch_by_its_tokens():
    """grad_accum=4 over a batch whose rows have very different numbers of target tokens (a
    prompt-masked SFT batch) gives the loss and gradients of the whole batch at once; a mean of
    per-micro-batch means would weight a 2-token row like a 30-token one."""
    import optax

    from adapt.harness.loop import loss_function
    from adapt.models.llama import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1,
                         initializer_range=0.1)  # fmt: skip
    module = LlamaForCausalLM(config)
    rng = np.random.default_rng(0)
    ids = rng.integers(3, 64, (8, 32)).astype(np.int32)
    params = module.init(jax.random.key(0), jnp.asarray(ids[:1]))["params"]
    targets = [30, 29, 1, 1, 2, 1, 1, 2]  # response tokens at the end of each row
    loss_mask = np.zeros((8, 32), np.float32)
    attention = np.ones((8, 32), np.int32)
    for row, n in enumerate(targets):
        loss_mask[row, 32 - n :] = 1.0
    batch = {
        "input_ids": ids,
        "labels": np.roll(ids, -1, 1),
        "loss_mask": loss_mask,
        "attention_mask": attention,
    }

    def forward(p, model_state, b, train, rng_):
        out = module.apply({"params": p}, b["input_ids"], attention_mask=b["attention_mask"])
        return out, model_state

    loss = loss_function("causal_lm", forward, None)
    mesh = sharding.make_mesh([("data", 1)])
    results = {}
    for accum in (1, 4):
        trainer = Trainer(loss, optax.sgd(1.0), mesh, grad_accum=accum)  # update = -gradient
        state = trainer.init_state(
            jax.tree.map(jnp.copy, params), {}, jax.random.key_data(jax.random.key(0))
        )
        state, metrics = trainer.step(state, {}, batch)
        results[accum] = (float(metrics["loss"]), jax.tree.map(np.asarray, state["trainable"]))
    (loss1, p1), (loss4, p4) = results[1], results[4]
    assert abs(loss1 - loss4) < 1e-6
    for a, b in zip(jax.tree.leaves(p1), jax.tree.leaves(p4), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-6, rtol=0)
    # the unweighted mean of the micro-batch means (59, 2, 3 and 3 tokens) is another number
    per_micro = [float(loss_mask[i : i + 2].sum()) for i in range(0, 8, 2)]
    assert per_micro == [59.0, 2.0, 3.0, 3.0]


def test_a_nan_learning_rate_never_reaches_the_weights():
    """A NaN learning rate gives a finite loss and finite gradients but NaN updates: the step
    must be refused, not taken (a checkpoint of it would hold NaN weights)."""
    import optax

    trainer, state, frozen = _setup()
    mesh = trainer.mesh
    labels = partition.label(PARAMS, [("head/.*", "head"), (".*", "backbone")])
    tx = optim.build(
        partition.trainable_labels(labels),
        {"head": {"lr": float("nan")}, "backbone": {"lr": 0.1}},
        100,
    )
    nan_trainer = Trainer(loss_fn, tx, mesh)
    trainable, frozen = partition.split(PARAMS, labels)
    state = nan_trainer.init_state(
        jax.tree.map(jnp.copy, trainable), {}, jax.random.key_data(jax.random.key(0))
    )
    before = jax.tree.map(np.asarray, state["trainable"])
    state, metrics = nan_trainer.step(state, frozen, _batches(1)[0])
    assert np.isfinite(float(metrics["loss"])) and not bool(metrics["finite"])
    for a, b in zip(
        jax.tree.leaves(before),
        jax.tree.leaves(jax.tree.map(np.asarray, state["trainable"])),
        strict=True,
    ):
        np.testing.assert_array_equal(a, b)
    del optax


@pytest.mark.slow
def test_the_trainer_runs_the_one_public_step_and_a_penalty_is_its_own_input():
    """adapt.step.train_step jitted by hand gives the Trainer's states on one device, and a
    penalty's inputs are an argument of the step (not entries of ``frozen``): the penalty
    changes the loss by its value and pulls the weights towards its anchor."""
    from adapt import step as step_lib

    trainer, state, frozen = _setup()
    mesh = sharding.make_mesh([("data", 1)])
    lone = Trainer(trainer.loss_fn, trainer.tx, mesh)
    rng = np.asarray(jax.random.key_data(jax.random.key(0)))
    ours = step_lib.init_state(jax.tree.map(jnp.copy, state["trainable"]), trainer.tx, {}, rng)
    step = jax.jit(step_lib.train_step(trainer.loss_fn, trainer.tx), donate_argnums=0)
    theirs = lone.init_state(jax.tree.map(jnp.copy, state["trainable"]), {}, rng)
    for batch in _batches(3):
        ours, m1 = step(ours, frozen, batch)
        theirs, m2 = lone.step(theirs, jax.device_put(frozen), batch)
        assert float(m1["loss"]) == pytest.approx(float(m2["loss"]), rel=1e-6)
    pairs = zip(
        jax.tree.leaves(ours["trainable"]), jax.tree.leaves(theirs["trainable"]), strict=True
    )
    for a, b in pairs:
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-7)

    zeros = jax.tree.map(lambda x: np.zeros(x.shape, x.dtype), state["trainable"])
    anchor = place_frozen(zeros, mesh, [])  # on the mesh, as with_penalty expects

    def penalty(params, inputs):  # params: the merged tree, as the loss sees it
        target = inputs["anchor"]["head"]
        return 10.0 * sum(jnp.sum((params["head"][k] - target[k]) ** 2) for k in target)

    pulled = lone.with_penalty(penalty, {"anchor": anchor})
    free = lone.init_state(jax.tree.map(jnp.copy, state["trainable"]), {}, rng)
    tied = pulled.init_state(jax.tree.map(jnp.copy, state["trainable"]), {}, rng)
    for batch in _batches(3):
        free, mf = lone.step(free, jax.device_put(frozen), batch)
        tied, mt = pulled.step(tied, jax.device_put(frozen), batch)
    assert float(mt["penalty"]) > 0 and "penalty" not in mf
    norm = lambda s: float(jnp.sum(s["trainable"]["head"]["kernel"] ** 2))  # noqa: E731
    assert norm(tied) < norm(free)
    assert "anchor" not in frozen and set(frozen) <= set(PARAMS)
