"""Per-layer remat and activation sharding change memory, never values.

LLaMA checkpoints each decoder layer when ``Trainer(remat=...)`` asks (adapt.remat) and pins its
activations to the mesh inside the Trainer's step (adapt.sharding.activation_sharding). The
same LoRA + QLoRA training must give the same losses with and without them, on one device and
on 8 (FSDP, FSDP+TP); parameter paths must not change. That these features actually lower
memory is checked on compiled programs in tests/test_scale_plan.py.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from adapt import optim, partition, paths, remat, sharding
from adapt.methods import LoRA, QLoRA, apply, init
from adapt.models.llama import LlamaConfig, LlamaForCausalLM
from adapt.tasks.causal_lm import causal_lm_loss
from adapt.train import Trainer

CONFIG = LlamaConfig(
    vocab_size=128,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
)
TARGETS = r".*layers_\d+/.*_proj"


def _batches(n: int = 2, rows: int = 8, length: int = 12) -> list[dict]:
    rng = np.random.default_rng(0)
    out = []
    for _ in range(n):
        ids = rng.integers(0, CONFIG.vocab_size, (rows, length)).astype(np.int32)
        mask = np.ones((rows, length), np.int32)
        mask[0, :3] = 0  # one left-padded row
        out.append({"input_ids": ids, "attention_mask": mask, "labels": ids, "loss_mask": mask})
    return out


def _setup(method: str, dropout: float = 0.0):
    module = LlamaForCausalLM(CONFIG)
    ids = jnp.ones((1, 8), jnp.int32)
    params = module.init(jax.random.key(0), ids)["params"]
    if method == "qlora":
        m = QLoRA(TARGETS, rank=4, alpha=8, dropout=dropout)
        params = m.prepare(params)
    else:
        m = LoRA(TARGETS, rank=4, alpha=8, dropout=dropout)
    params = partition.merge(params, init(module, params, [m], jax.random.key(1), ids))
    # LoRA B starts at zero: move it so the adapters matter in the first step's loss
    params = paths.map_with_path(lambda p, x: x + 0.05 if p.endswith("lora_b") else x, params)
    return module, m, params


def _losses(method: str, axes, rules, remat_policy: str, dropout: float = 0.0) -> list[float]:
    module, m, params = _setup(method, dropout)

    def loss_fn(p, model_state, batch, rng):
        out = apply(
            module,
            p,
            [m],
            batch["input_ids"],
            attention_mask=batch["attention_mask"],
            deterministic=False,
            rngs={"dropout": rng},
        )
        loss, _ = causal_lm_loss(out["logits"], batch["labels"], batch["loss_mask"])
        return loss, ({}, model_state)

    labels = partition.label(params, [*m.rules(), (".*", None)])
    tl = partition.trainable_labels(labels)
    tx = optim.build(tl, {"lora": {"lr": 1e-2}}, 100)
    mesh = sharding.make_mesh(axes)
    trainer = Trainer(loss_fn, tx, mesh, rules, remat=remat_policy)
    trainable, frozen = partition.split(params, labels)
    state = trainer.init_state(trainable, {}, jax.random.key_data(jax.random.key(2)))
    frozen = jax.device_put(frozen, sharding.param_shardings(frozen, mesh, rules))
    out = []
    for batch in _batches():
        state, metrics = trainer.step(state, frozen, batch)
        out.append(float(metrics["loss"]))
    return out


@pytest.mark.slow
def test_remat_keeps_parameter_paths():
    ids = jnp.ones((1, 8), jnp.int32)
    plain = LlamaForCausalLM(CONFIG).init(jax.random.key(0), ids)["params"]
    for policy in ("full", "dots"):
        wrapped = LlamaForCausalLM(CONFIG, remat=policy).init(jax.random.key(0), ids)["params"]
        assert sorted(paths.flatten(wrapped)) == sorted(paths.flatten(plain))
    with pytest.raises(ValueError, match="remat must be one of"):
        LlamaForCausalLM(CONFIG, remat="layers").init(jax.random.key(0), ids)


@pytest.mark.slow
def test_the_trainer_scope_reaches_the_layers():
    module, m, params = _setup("lora")
    ids = jnp.ones((2, 8), jnp.int32)

    def grads(p):
        return jax.grad(lambda q: jnp.mean(apply(module, q, [m], ids)["logits"] ** 2))(p)

    # (a fresh function per trace: make_jaxpr caches traces by function, not by scope)
    assert "remat" not in str(jax.make_jaxpr(lambda p: grads(p))(params))
    with remat.scope("full") as scope:
        jaxpr = str(jax.make_jaxpr(lambda p: grads(p))(params))
    assert scope.seen and "remat" in jaxpr


@pytest.mark.parametrize("method", ["lora", "qlora"])
@pytest.mark.slow
def test_remat_and_activation_sharding_keep_the_losses(method):
    base = _losses(method, [("data", 1)], [], "none")
    # QLoRA computes in bfloat16: tensor parallelism's partial sums round differently
    rtol = 1e-5 if method == "lora" else 1e-4
    for axes, preset, policy in [
        ([("data", 8)], "fsdp", "full" if method == "lora" else "dots"),
        ([("data", 2), ("model", 4)], "fsdp_tp", "full"),
    ]:
        got = _losses(method, axes, sharding.RULE_PRESETS[preset], policy)
        np.testing.assert_allclose(got, base, rtol=rtol, err_msg=f"{axes} {preset} {policy}")


@pytest.mark.slow
def test_remat_keeps_dropout_streams():
    # nn.remat must not change which dropout masks the adapters draw
    plain = _losses("lora", [("data", 1)], [], "none", dropout=0.1)
    full = _losses("lora", [("data", 1)], [], "full", dropout=0.1)
    np.testing.assert_allclose(full, plain, rtol=1e-6)
