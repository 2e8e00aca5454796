"""QLoRA on LLaMA (stories260K): NF4 storage, the quantised forward, training through the harness.

The 200-step runs go through :func:`adapt.harness.loop.run` with the stories_lora config; the
harness quantises the base through ``QLoRA.prepare`` when it attaches the method.
"""

import dataclasses
import json
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from oracles import bnb_dequantize, require

from adapt import partition, paths
from adapt.convert.llama2c import load_llama2c
from adapt.methods import ALL_LINEAR, LORA_TARGETS, LoRA, MethodError, base, build
from adapt.methods.qlora import QLoRA, dequantize_base, quantize_base
from adapt.quant import nf4
from adapt.step import jit_train_step
from adapt.tasks.causal_lm import causal_lm_loss

TARGETS = ALL_LINEAR["llama"]
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def stories(third_party):
    model, params, config = load_llama2c(third_party / "stories260K" / "stories260K.bin")
    return model, params, config, quantize_base(params, TARGETS)


@pytest.fixture(scope="module")
def small(stories):
    """stories260K cut to its first layer (real weights, a fifth of the compile time)."""
    model, params, config, _ = stories
    config = dataclasses.replace(config, num_hidden_layers=1)
    keep = lambda p: not p.startswith("model/layers_") or p.startswith("model/layers_0/")
    params = paths.unflatten({p: v for p, v in paths.flatten(params).items() if keep(p)})
    return type(model)(config), params, config, quantize_base(params, TARGETS)


def _batch(vocab=512, shape=(2, 24)):
    rng = np.random.default_rng(0)
    ids = jnp.asarray(rng.integers(3, vocab, shape), jnp.int32)
    mask = jnp.ones(shape, jnp.int32).at[1, :5].set(0)  # a left-padded row
    return ids, mask


def _attach(model, qparams, method, ids, mask):
    extra = base.init(model, qparams, [method], jax.random.key(1), ids, mask)
    return partition.merge(qparams, extra)


class _OneLayer(nn.Module):
    @nn.compact
    def __call__(self, x):
        return nn.Dense(48, name="proj")(x)


# ------------------------------------------------------------------------------ storage
def test_nf4_base_storage_on_stories260k(stories):
    model, params, config, qparams = stories
    flat, qflat = paths.flatten(params), paths.flatten(qparams)
    quantised = [p[: -len("/kernel")] for p in flat if p.endswith("/kernel")]
    assert len(quantised) == 7 * config.num_hidden_layers
    assert nf4.quantized_modules(qparams) == quantised
    assert not any(p.endswith("/kernel") for p in qflat)  # no float copy left behind
    n_quantised = sum(flat[f"{m}/kernel"].size for m in quantised)
    nf4_bytes = sum(np.asarray(v).nbytes for p, v in qflat.items() if "/kernel_nf4_" in p)
    bytes_per_param = nf4_bytes / n_quantised
    bf16_bytes = sum(flat[f"{m}/kernel"].astype(jnp.bfloat16).nbytes for m in quantised)
    print(
        f"stories260K linear layers: {n_quantised} weights; NF4+DQ {nf4_bytes} bytes = "
        f"{bytes_per_param:.4f} bytes/param (bfloat16: {bf16_bytes / n_quantised:.1f})"
    )
    assert bytes_per_param <= 0.52
    assert nf4.storage(qparams) == {
        "bytes": nf4_bytes,
        "params": n_quantised,
        "bytes_per_param": bytes_per_param,
        "modules": len(quantised),
    }
    # norms and embeddings are untouched float32
    for p, v in qflat.items():
        if p.endswith(("scale", "embedding")):
            assert v.dtype == jnp.float32 and v is flat[p]


def test_quantised_base_is_bitsandbytes_nf4(stories):
    """The stored bytes of a q_proj are what bitsandbytes stores for the PyTorch weight."""
    bnb = pytest.importorskip("bitsandbytes")
    torch = pytest.importorskip("torch")
    _, params, _, qparams = stories
    kernel = np.asarray(params["model"]["layers_2"]["self_attn"]["q_proj"]["kernel"])
    packed, state = bnb.functional.quantize_4bit(
        torch.from_numpy(np.ascontiguousarray(kernel.T)),
        quant_type="nf4",
        blocksize=64,
        compress_statistics=True,
    )
    leaves = qparams["model"]["layers_2"]["self_attn"]["q_proj"]
    np.testing.assert_array_equal(leaves["kernel_nf4_codes"], packed.numpy().reshape(-1))
    np.testing.assert_array_equal(leaves["kernel_nf4_absmax"], state.absmax.numpy())


# ------------------------------------------------------------------------------ forward
@pytest.mark.slow
def test_qlora_at_init_equals_the_dequantised_model(small):
    model, params, _, qparams = small
    ids, mask = _batch()
    method = QLoRA(TARGETS, rank=4, compute_dtype=jnp.float32)
    full = _attach(model, qparams, method, ids, mask)
    assert method.quantized == method.matched == set(nf4.quantized_modules(qparams))
    got = base.apply(model, full, [method], ids, mask)["logits"]
    want = model.apply({"params": dequantize_base(qparams)}, ids, mask)["logits"]
    real = np.asarray(mask, bool)
    np.testing.assert_allclose(np.asarray(got)[real], np.asarray(want)[real], atol=1e-5)
    original = model.apply({"params": params}, ids, mask)["logits"]
    assert np.abs(np.asarray(original - got)[real]).max() > 0.1  # 4 bits do change the model


def test_a_quantised_dense_matches_bitsandbytes_linear4bit():
    bnb = pytest.importorskip("bitsandbytes")
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(1)
    weight = rng.standard_normal((48, 80)).astype(np.float32)  # PyTorch (out, in)
    bias = rng.standard_normal(48).astype(np.float32)
    x = rng.standard_normal((3, 80)).astype(np.float32)
    lin = bnb.nn.Linear4bit(80, 48, compute_dtype=torch.float32, quant_type="nf4")
    lin.weight = bnb.nn.Params4bit(
        torch.from_numpy(weight), requires_grad=False, quant_type="nf4", blocksize=64
    )
    lin.bias = torch.nn.Parameter(torch.from_numpy(bias))
    lin = lin.to("cpu")
    dense = _OneLayer()
    params = {"proj": {"kernel": jnp.asarray(weight.T), "bias": jnp.asarray(bias)}}
    qparams = quantize_base(params, ["proj"])
    # adapt's own check, whatever bitsandbytes computes here: the same 4-bit codes
    np.testing.assert_array_equal(
        qparams["proj"]["kernel_nf4_codes"], lin.weight.data.numpy().reshape(-1)
    )
    # the reference: Linear4bit's forward, trusted only if its weights are an NF4 round trip
    # here and its forward is x @ those weights.T + b
    deq = bnb_dequantize(bnb.functional, lin.weight.data, lin.weight.quant_state, weight)
    with torch.no_grad():
        want = lin(torch.from_numpy(x)).numpy()
    require(
        None
        if np.allclose(want, x @ deq.T + bias, rtol=1e-5, atol=1e-5)
        else "bitsandbytes' Linear4bit forward differs from x @ its own dequantised weight.T + b"
    )
    method = QLoRA(["proj"], rank=2, compute_dtype=jnp.float32)
    extra = base.init(dense, qparams, [method], jax.random.key(0), jnp.asarray(x))
    got = base.apply(dense, partition.merge(qparams, extra), [method], jnp.asarray(x))
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------- training
@pytest.mark.slow
def test_train_steps_update_only_the_adapters(small):
    model, _, _, qparams = small
    ids, mask = _batch(shape=(4, 32))
    method = build("qlora", "llama", rank=4, compute_dtype="float32")
    assert isinstance(method, QLoRA) and method.targets == TARGETS
    full = _attach(model, qparams, method, ids, mask)
    labels = partition.label(full, [*method.rules(), (".*", None)])
    flat_labels = paths.flatten(labels)
    assert all(flat_labels[p] is None for p in flat_labels if "_nf4_" in p)
    assert {flat_labels[p] for p in flat_labels if "/lora_" in p} == {"lora"}
    trainable, frozen = partition.split(full, labels)
    trainable = jax.tree.map(jnp.copy, trainable)
    tx = optax.adam(1e-2)
    opt_state = tx.init(trainable)

    def loss_fn(p, batch, rng):
        logits = base.apply(model, p, [method], batch["ids"][:, :-1], batch["mask"][:, :-1])
        loss, _ = causal_lm_loss(logits["logits"], batch["ids"][:, 1:], batch["mask"][:, 1:])
        return loss, {}

    step = jit_train_step(loss_fn, tx)
    batch = {"ids": ids, "mask": mask}
    before = jax.tree.map(np.asarray, frozen)
    losses = []
    for _ in range(8):
        trainable, opt_state, loss, _ = step(trainable, frozen, opt_state, batch, jax.random.key(0))
        losses.append(float(loss))
    assert losses[-1] < 0.9 * losses[0], losses
    jax.tree.map(np.testing.assert_array_equal, before, jax.tree.map(np.asarray, frozen))

    # merging folds the adapters into float32 kernels: the plain model then gives the same logits
    trained = partition.merge(trainable, frozen)
    merged = method.merge(trained)
    assert not nf4.quantized_modules(merged)
    got = model.apply({"params": merged}, ids, mask)["logits"]
    want = base.apply(model, trained, [method], ids, mask)["logits"]
    real = np.asarray(mask, bool)
    np.testing.assert_allclose(np.asarray(got)[real], np.asarray(want)[real], atol=1e-4)


# ------------------------------------------------------------------------------- errors
def test_misuse_is_refused_clearly(small):
    model, params, _, qparams = small
    ids, mask = _batch()
    with pytest.raises(MethodError, match="not quantised.*prepare"):
        base.init(model, params, [QLoRA(TARGETS)], jax.random.key(0), ids, mask)
    with pytest.raises(nf4.QuantizationError, match="match no module"):
        quantize_base(params, r".*no_such_layer")
    with pytest.raises(MethodError, match="blocksize"):
        QLoRA(TARGETS, blocksize=48)
    with pytest.raises(MethodError, match="code bytes"):  # stored in blocks of 64, read as 128
        base.init(model, qparams, [QLoRA(TARGETS, blocksize=128)], jax.random.key(0), ids, mask)
    # adapters on the attention only, base quantised everywhere: both work together
    method = QLoRA(LORA_TARGETS["llama"], base_targets=TARGETS, compute_dtype=jnp.float32)
    full = _attach(model, qparams, method, ids, mask)
    assert len(method.quantized) == 7 and len(method.matched) == 2
    assert all("lora" not in p or "self_attn" in p for p in paths.flatten(full))


@pytest.mark.slow
def test_qlora_trains_exactly_like_lora_on_the_dequantised_weights(small):
    """QLoRA (NF4 leaves, dequantised to bfloat16 inside the step) and LoRA on a bfloat16 base
    holding the same dequantised weights take the same steps."""
    model, _, config, qparams = small
    model16 = type(model)(dataclasses.replace(config, dtype=jnp.bfloat16))
    ids, mask = _batch(shape=(4, 33))
    batch = {"ids": ids, "mask": mask}
    curves = {}
    for name, method, params in (
        ("qlora", QLoRA(TARGETS, rank=8), qparams),
        ("lora", LoRA(TARGETS, rank=8), dequantize_base(qparams, jnp.bfloat16)),
    ):
        full = _attach(model16, params, method, ids, mask)
        labels = partition.label(full, [*method.rules(), (".*", None)])
        trainable, frozen = partition.split(full, labels)
        trainable = jax.tree.map(jnp.copy, trainable)
        tx = optax.adam(3e-3)
        opt_state = tx.init(trainable)

        def loss_fn(p, batch, rng, method=method):
            logits = base.apply(model16, p, [method], batch["ids"][:, :-1], batch["mask"][:, :-1])
            return causal_lm_loss(logits["logits"], batch["ids"][:, 1:], batch["mask"][:, 1:])[
                0
            ], {}

        step = jit_train_step(loss_fn, tx)
        losses = []
        for _ in range(10):
            trainable, opt_state, loss, _ = step(
                trainable, frozen, opt_state, batch, jax.random.key(0)
            )
            losses.append(float(loss))
        curves[name] = losses
    assert curves["qlora"][-1] < 0.8 * curves["qlora"][0]
    np.testing.assert_allclose(curves["qlora"], curves["lora"], rtol=1e-3)


# ---------------------------------------------------------------- 200 steps in the harness
def _run(tmp_path, method: str):
    from adapt.harness import loop
    from adapt.harness.command_line import load_config_file

    config = load_config_file("configs/llm/stories_sst2_qlora.py", f"method={method}")
    config.mesh.axes = [("data", 1)]
    config.train.progress = False
    workdir = tmp_path / method
    results = loop.run(config, workdir)
    rows = [json.loads(r) for r in (workdir / "metrics.jsonl").read_text().splitlines()]
    return results, [r["loss"] for r in rows if r["split"] == "train"]


@pytest.mark.slow
def test_200_steps_of_qlora_track_bf16_lora_in_the_harness(tmp_path, monkeypatch):
    """configs/llm/stories_sst2_qlora.py: stories260K adapted to SST-2's movie-review sentences
    (held-out dev NLL), LoRA rank 8 on every linear layer, bfloat16 compute, 200 steps, with the
    frozen base in bfloat16 (LoRA) and in NF4 + double quantisation (QLoRA).

    Measured: eval NLL 2.886 (LoRA) vs 2.908 (QLoRA), +0.7%; the base model starts near 4.9.
    (On the 5-story TinyStories sample both runs memorise the text down to ~0.025 nats, where the
    same quantisation error is a 4.9% relative gap between two near-zero losses; the config's
    docstring says why that is the wrong yardstick.)
    """
    monkeypatch.chdir(REPO)  # the config names vendored files relative to the repo root
    lora, lora_train = _run(tmp_path, "lora")
    qlora, qlora_train = _run(tmp_path, "qlora")  # the harness quantises the base (prepare)
    assert lora["steps"] == qlora["steps"] == 200
    a, b = lora["eval"]["loss"], qlora["eval"]["loss"]
    print(f"after 200 steps: bf16 LoRA {a:.5f}, QLoRA {b:.5f} (held-out NLL)")
    assert b < 0.7 * qlora_train[0]  # QLoRA adapts: far below the base model's loss
    assert abs(b - a) <= 0.02 * a  # the criterion: within 2% after 200 steps
    assert abs(qlora_train[-1] - lora_train[-1]) <= 0.02 * lora_train[-1]
