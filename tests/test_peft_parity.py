"""adapt's LoRA and IA3 against Hugging Face PEFT on the same BERT weights: logits and gradients."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from adapt import partition, paths
from adapt.convert.hf import load_pretrained
from adapt.methods import IA3, LoRA, base

torch = pytest.importorskip("torch")
peft = pytest.importorskip("peft")
transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def hf_bert(tmp_path_factory):
    torch.manual_seed(0)
    cfg = transformers.BertConfig(
        vocab_size=64,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=48,
        max_position_embeddings=32,
        num_labels=3,
    )
    model = transformers.BertForSequenceClassification(cfg).eval()
    path = tmp_path_factory.mktemp("bert")
    model.save_pretrained(path)
    return path


def _batch():
    rng = np.random.default_rng(0)
    ids = rng.integers(1, 64, size=(3, 7))
    mask = np.ones_like(ids)
    mask[1, 5:] = 0
    mask[2, 3:] = 0
    ids[mask == 0] = 0
    return ids, mask, np.array([0, 2, 1])


def _torch_loss(model, ids, mask, labels):
    out = model(
        input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask), labels=torch.tensor(labels)
    )
    return out.logits, out.loss


def _module_name(hf_name: str) -> str:
    """'base_model.model.bert.encoder.layer.0.attention.self.query' -> adapt module path."""
    name = hf_name.removeprefix("base_model.model.")
    parts = name.split(".")
    out = []
    for part in parts:
        if part.isdigit():
            out[-1] = f"{out[-1]}_{part}"
        else:
            out.append(part)
    return "/".join(out)


@pytest.mark.slow
def test_lora_matches_peft_logits_and_adapter_gradients(hf_bert):
    ids, mask, labels = _batch()
    hf_model = transformers.BertForSequenceClassification.from_pretrained(hf_bert).eval()
    config = peft.LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["query", "value"])
    hf_peft = peft.get_peft_model(hf_model, config).eval()

    # Give B non-zero values so the adapters matter, then copy A and B into adapt's leaves.
    rng = np.random.default_rng(1)
    ours_lora = {}
    for name, module in hf_peft.named_modules():
        if hasattr(module, "lora_A") and "default" in module.lora_A:
            a = module.lora_A["default"].weight
            b = module.lora_B["default"].weight
            with torch.no_grad():
                b.copy_(torch.tensor(rng.normal(0, 0.2, size=tuple(b.shape)), dtype=torch.float32))
            path = _module_name(name)
            ours_lora[f"{path}/lora_a"] = jnp.asarray(a.detach().numpy().T)
            ours_lora[f"{path}/lora_b"] = jnp.asarray(b.detach().numpy().T)
    assert len(ours_lora) == 2 * 2 * 2  # 2 layers x (query, value) x (A, B)

    model, params, _ = load_pretrained(hf_bert)
    method = LoRA(r".*attention/self/(query|value)", rank=4, alpha=8)
    extra = base.init(
        model, params, [method], jax.random.key(0), jnp.asarray(ids), jnp.asarray(mask)
    )
    assert set(paths.flatten(extra)) == set(ours_lora)
    extra = paths.unflatten(ours_lora)

    logits_t, loss_t = _torch_loss(hf_peft, ids, mask, labels)
    loss_t.backward()

    def loss_fn(extra):
        logits = base.apply(model, partition.merge(params, extra), [method], ids, mask)["logits"]
        logp = jax.nn.log_softmax(logits)
        return -jnp.mean(logp[jnp.arange(3), labels]), logits

    (loss, logits), grads = jax.value_and_grad(loss_fn, has_aux=True)(extra)
    np.testing.assert_allclose(np.asarray(logits), logits_t.detach().numpy(), atol=1e-5)
    np.testing.assert_allclose(float(loss), loss_t.item(), atol=1e-5)
    flat_g = paths.flatten(grads)
    for name, module in hf_peft.named_modules():
        if hasattr(module, "lora_A") and "default" in module.lora_A:
            path = _module_name(name)
            np.testing.assert_allclose(
                np.asarray(flat_g[f"{path}/lora_a"]),
                module.lora_A["default"].weight.grad.numpy().T,
                atol=1e-5,
            )
            np.testing.assert_allclose(
                np.asarray(flat_g[f"{path}/lora_b"]),
                module.lora_B["default"].weight.grad.numpy().T,
                atol=1e-5,
            )


@pytest.mark.slow
def test_ia3_matches_peft_logits_and_gradients(hf_bert):
    ids, mask, labels = _batch()
    hf_model = transformers.BertForSequenceClassification.from_pretrained(hf_bert).eval()
    config = peft.IA3Config(
        target_modules=["key", "value", "output.dense"], feedforward_modules=["output.dense"]
    )
    hf_peft = peft.get_peft_model(hf_model, config).eval()
    rng = np.random.default_rng(2)
    ours = {}
    for name, module in hf_peft.named_modules():
        if hasattr(module, "ia3_l") and "default" in module.ia3_l:
            vec = module.ia3_l["default"]
            with torch.no_grad():
                vec.copy_(
                    torch.tensor(rng.uniform(0.5, 1.5, size=tuple(vec.shape)), dtype=torch.float32)
                )
            ours[f"{_module_name(name)}/ia3_l"] = jnp.asarray(vec.detach().numpy().reshape(-1))
    # key, value, attention.output.dense, output.dense in each of 2 layers
    assert len(ours) == 8

    model, params, _ = load_pretrained(hf_bert)
    method = IA3(r".*attention/self/(key|value)|.*output/dense", r".*output/dense")
    extra = base.init(
        model, params, [method], jax.random.key(0), jnp.asarray(ids), jnp.asarray(mask)
    )
    assert {p: v.shape for p, v in paths.flatten(extra).items()} == {
        p: v.shape for p, v in ours.items()
    }

    logits_t, loss_t = _torch_loss(hf_peft, ids, mask, labels)
    loss_t.backward()

    def loss_fn(extra):
        logits = base.apply(model, partition.merge(params, extra), [method], ids, mask)["logits"]
        logp = jax.nn.log_softmax(logits)
        return -jnp.mean(logp[jnp.arange(3), labels]), logits

    (loss, logits), grads = jax.value_and_grad(loss_fn, has_aux=True)(paths.unflatten(ours))
    np.testing.assert_allclose(np.asarray(logits), logits_t.detach().numpy(), atol=1e-5)
    flat_g = paths.flatten(grads)
    for name, module in hf_peft.named_modules():
        if hasattr(module, "ia3_l") and "default" in module.ia3_l:
            np.testing.assert_allclose(
                np.asarray(flat_g[f"{_module_name(name)}/ia3_l"]),
                module.ia3_l["default"].grad.numpy().reshape(-1),
                atol=1e-5,
            )
