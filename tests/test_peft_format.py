"""PEFT adapter directories: adapters trained here load in ``peft.PeftModel`` with the same logits,
PEFT-made adapters load here with the same logits, and bad adapters fail naming what is wrong."""

import json
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from adapt import partition, paths
from adapt.convert.hf import load_pretrained
from adapt.convert.safetensors_io import SafetensorsReader, write_file
from adapt.methods import ALL_LINEAR, IA3, LoRA, PromptTuning, base
from adapt.peft_format import (
    AdapterFormatError,
    VirtualTokenPromptTuning,
    export_adapter,
    import_adapter,
    overlay,
)
from adapt.step import jit_train_step
from adapt.tasks.causal_lm import causal_lm_loss

torch = pytest.importorskip("torch")
peft = pytest.importorskip("peft")
transformers = pytest.importorskip("transformers")

BERT_ARCH, LLAMA_ARCH = "BertForSequenceClassification", "LlamaForCausalLM"
NUM_LABELS = 3


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory):
    """A tiny *base* BERT checkpoint: the classification head is new on both sides."""
    torch.manual_seed(0)
    cfg = transformers.BertConfig(
        vocab_size=64,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=48,
        max_position_embeddings=40,
    )
    path = tmp_path_factory.mktemp("bert")
    transformers.BertModel(cfg).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    torch.manual_seed(1)
    cfg = transformers.LlamaConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,  # GQA
        max_position_embeddings=64,
        tie_word_embeddings=False,
    )
    path = tmp_path_factory.mktemp("llama")
    transformers.LlamaForCausalLM(cfg).save_pretrained(path)
    return path


def _batch(batch: int, length: int, seed: int):
    """Right-padded ids and mask (HF's outputs are undefined at pads; we compare real tokens)."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(1, 64, size=(batch, length))
    mask = np.ones_like(ids)
    mask[1, length - 2 :] = 0
    ids[mask == 0] = 0
    return ids.astype(np.int32), mask.astype(np.int32)


@pytest.fixture(scope="module")
def ours(bert_dir, llama_dir):
    """adapt's models, loaded once: ``family -> (module, params, config)``. BERT gets a freshly
    initialised classification head (the base checkpoint has none)."""
    return {
        "bert": load_pretrained(bert_dir, architecture=BERT_ARCH, num_labels=NUM_LABELS),
        "llama": load_pretrained(llama_dir),
    }


def _hf_model(family: str, bert_dir, llama_dir=None):
    if family == "bert":
        return transformers.BertForSequenceClassification.from_pretrained(
            bert_dir, num_labels=NUM_LABELS
        ).eval()
    return transformers.LlamaForCausalLM.from_pretrained(llama_dir).eval()


def _peft_logits(model, ids, mask):
    with torch.no_grad():
        out = model(input_ids=torch.tensor(ids).long(), attention_mask=torch.tensor(mask).long())
    return out.logits.numpy()


def _logits(model, params, methods, ids, mask):
    """Jitted: run eagerly, every op of the model would compile on its own."""
    return jax.jit(lambda p: base.apply(model, p, methods, ids, mask)["logits"])(params)


def _compare(family, ours, theirs, mask, num_virtual=0):
    """Logits of real positions (and of virtual prompt positions, which are never padding)."""
    ours = np.asarray(ours)
    assert ours.shape == theirs.shape
    if family == "bert":
        np.testing.assert_allclose(ours, theirs, atol=1e-5)
        return
    real = np.concatenate([np.ones((mask.shape[0], num_virtual), bool), mask.astype(bool)], 1)
    np.testing.assert_allclose(ours[real], theirs[real], atol=1e-5)


def _train(family, model, params, extra, method, ids, mask, steps=3):
    """A few Adam steps with adapt's train step: adapter leaves and BERT's new head move."""
    params = partition.merge(params, extra)
    head = [(r"classifier/.*", "head")] if family == "bert" else []
    labels = partition.label(params, base.rules_for([method]) + head + [(".*", None)])
    trainable, frozen = partition.split(params, labels)
    tx = optax.adam(3e-2)

    def loss_fn(p, batch, rng):
        logits = base.apply(model, p, [method], batch["ids"], batch["mask"])["logits"]
        if family == "bert":
            loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch["labels"])
            return jnp.mean(loss), {}
        return causal_lm_loss(logits[:, :-1], batch["ids"][:, 1:], batch["mask"][:, 1:])

    batch = {"ids": ids, "mask": mask, "labels": jnp.arange(ids.shape[0]) % NUM_LABELS}
    step, opt_state = jit_train_step(loss_fn, tx), jax.jit(tx.init)(trainable)
    trainable = jax.jit(lambda t: jax.tree.map(jnp.copy, t))(trainable)  # donated by the step
    for i in range(steps):
        trainable, opt_state, _, _ = step(trainable, frozen, opt_state, batch, jax.random.key(i))
    return partition.merge(trainable, frozen)


def _perturb(params, extra, saved):
    """Random adapter leaves and saved modules: what training would do to the format, minus the
    cost of compiling a train step for every method."""
    rng = np.random.default_rng(5)
    flat = paths.flatten(partition.merge(params, extra))
    moved = [p for p in flat if p in paths.flatten(extra) or re.fullmatch(saved, p)]
    for p in moved:
        flat[p] = flat[p] + rng.normal(0, 0.2, flat[p].shape).astype(np.float32)
    return paths.unflatten(flat)


HEAD = r"classifier/.*"
# case -> (family, method, trained with jit_train_step (else perturbed at random), our leaves
# saved in full (modules_to_save_regex; None: the default, the classifier head))
EXPORT_CASES = {
    "bert-lora": ("bert", lambda: LoRA(r".*self/(query|value)", rank=4, alpha=8), True, None),
    "bert-rslora-dora": (
        "bert",
        lambda: LoRA(r".*(query|output/dense)", rank=2, alpha=4, rslora=True, dora=True),
        False,
        None,
    ),
    "bert-ia3-pooler": ("bert", lambda: IA3.preset("bert"), False, rf"{HEAD}|bert/pooler/.*"),
    "bert-prompt": ("bert", lambda: VirtualTokenPromptTuning(3), False, None),
    "llama-lora-all-linear": ("llama", lambda: LoRA(ALL_LINEAR["llama"], rank=4), True, None),
    "llama-prompt": ("llama", lambda: PromptTuning(3), False, None),
}


@pytest.mark.parametrize("case", list(EXPORT_CASES))
@pytest.mark.slow
def test_trained_adapter_loads_in_peft_with_same_logits(case, ours, bert_dir, llama_dir, tmp_path):
    family, make, train, saved = EXPORT_CASES[case]
    method = make()
    ids, mask = _batch(3, 7, seed=2)
    model, params, config = ours[family]
    extra = base.init(model, params, [method], jax.random.key(1), ids, mask)
    if train:
        trained = _train(family, model, params, extra, method, ids, mask)
    else:
        trained = _perturb(params, extra, saved or HEAD)
    flat, before = paths.flatten(trained), paths.flatten(partition.merge(params, extra))
    moved = [p for p in flat if p in paths.flatten(extra) or re.fullmatch(saved or HEAD, p)]
    assert all(not np.allclose(flat[p], before[p]) for p in moved)  # adapter and head changed

    arch = BERT_ARCH if family == "bert" else LLAMA_ARCH
    out = export_adapter(trained, [method], config, arch, tmp_path, modules_to_save_regex=saved)
    cfg = json.loads((out / "adapter_config.json").read_text())
    keys = set(SafetensorsReader(out / "adapter_model.safetensors"))
    if family == "bert":  # saved modules are whole HF modules, under their HF names
        prefix = "base_model." if isinstance(method, PromptTuning) else "base_model.model."
        assert cfg["task_type"] == "SEQ_CLS"
        assert cfg["modules_to_save"] == (
            ["bert.pooler", "classifier"] if saved else ["classifier"]
        )
        assert {f"{prefix}classifier.weight", f"{prefix}classifier.bias"} <= keys
    else:
        assert cfg["task_type"] == "CAUSAL_LM" and cfg["modules_to_save"] is None
    if isinstance(method, LoRA | IA3):
        assert isinstance(cfg["target_modules"], list) and cfg["target_modules"]
        assert all(m in str(sorted(keys)) for m in cfg["target_modules"])

    hf_model = _hf_model(family, bert_dir, llama_dir)
    peft_model = peft.PeftModel.from_pretrained(hf_model, out).eval()
    theirs = _peft_logits(peft_model, ids, mask)
    got = _logits(model, trained, [method], ids, mask)
    n = method.num_tokens if isinstance(method, PromptTuning) else 0
    _compare(family, got, theirs, mask, n)


def _peft_made(family: str, kind: str, hf_model):
    torch.manual_seed(3)
    task = "SEQ_CLS" if family == "bert" else "CAUSAL_LM"
    if kind in ("lora", "dora"):
        targets = ["query", "value"] if family == "bert" else "all-linear"
        config = peft.LoraConfig(
            task_type=task,
            r=4,
            lora_alpha=6,
            target_modules=targets,
            use_dora=kind == "dora",
            use_rslora=kind == "dora",
            init_lora_weights=False,  # random, non-zero B
        )
    elif kind == "ia3":
        config = peft.IA3Config(task_type=task, init_ia3_weights=False)  # PEFT's default targets
    else:
        config = peft.PromptTuningConfig(task_type=task, num_virtual_tokens=2)
    return peft.get_peft_model(hf_model, config).eval()


IMPORT_CASES = [  # DoRA on BERT is covered by the export test
    ("bert", "lora"),
    ("bert", "ia3"),
    ("bert", "prompt"),
    ("llama", "lora"),
    ("llama", "dora"),
    ("llama", "ia3"),
    ("llama", "prompt"),
]


@pytest.mark.parametrize("family,kind", IMPORT_CASES)
def test_peft_made_adapter_imports_with_same_logits(
    family, kind, ours, bert_dir, llama_dir, tmp_path
):
    peft_model = _peft_made(family, kind, _hf_model(family, bert_dir, llama_dir))
    if kind == "prompt":  # PEFT's prompt init is random; also randomise the classifier
        with torch.no_grad():
            for p in peft_model.parameters():
                if p.requires_grad:
                    p.add_(torch.randn_like(p) * 0.1)
    peft_model.save_pretrained(tmp_path)
    ids, mask = _batch(3, 6, seed=4)
    theirs = _peft_logits(peft_model, ids, mask)

    model, params, config = ours[family]
    arch = BERT_ARCH if family == "bert" else LLAMA_ARCH
    methods, adapter = import_adapter(tmp_path, params, config, arch)
    expected_type = {"lora": LoRA, "dora": LoRA, "ia3": IA3, "prompt": PromptTuning}[kind]
    if family == "bert" and kind == "prompt":
        expected_type = VirtualTokenPromptTuning
    assert len(methods) == 1 and isinstance(methods[0], expected_type)
    if kind in ("lora", "dora"):
        lora = methods[0]
        assert (lora.rank, lora.alpha, lora.dora, lora.rslora) == (4, 6, kind == "dora", lora.dora)
    for path, value in paths.flatten(adapter).items():  # PEFT's adapter is not an identity
        if not path.startswith("classifier/"):
            assert not (np.allclose(value, 0) or np.allclose(value, 1)), path
    if family == "bert":  # the new head came from the adapter
        assert "classifier" in adapter
    got = _logits(model, overlay(params, adapter), methods, ids, mask)
    _compare(family, got, theirs, mask, 2 if kind == "prompt" else 0)


# ----------------------------------------------------------------------------------- bad input
@pytest.fixture(scope="module")
def bert_lora_dir(bert_dir, tmp_path_factory):
    hf_model = _hf_model("bert", bert_dir)
    path = tmp_path_factory.mktemp("lora")
    _peft_made("bert", "lora", hf_model).save_pretrained(path)
    return path


def _rewrite(src, dst, *, config=None, tensors=None):
    dst.mkdir(exist_ok=True)
    cfg = json.loads((src / "adapter_config.json").read_text())
    (dst / "adapter_config.json").write_text(json.dumps(config(cfg) if config else cfg))
    reader = SafetensorsReader(src / "adapter_model.safetensors")
    flat = {k: reader[k] for k in reader}
    write_file(dst / "adapter_model.safetensors", tensors(flat) if tensors else flat)
    return dst


def _import_bert(path, ours):
    _, params, config = ours["bert"]
    return import_adapter(path, params, config, BERT_ARCH)


QUERY0 = "base_model.model.bert.encoder.layer.0.attention.self.query"


def test_keys_that_fit_no_module_are_listed(bert_lora_dir, ours, tmp_path):
    def rename(flat):
        flat[QUERY0.replace("layer.0", "layer.7") + ".lora_A.weight"] = flat.pop(
            f"{QUERY0}.lora_A.weight"
        )
        flat["base_model.model.bert.pooler.dense.lora_B.weight"] = np.zeros((32, 4), np.float32)
        return flat

    bad = _rewrite(bert_lora_dir, tmp_path / "bad", tensors=rename)
    with pytest.raises(AdapterFormatError) as err:
        _import_bert(bad, ours)
    msg = str(err.value)
    assert "layer.7.attention.self.query.lora_A.weight" in msg
    assert "bert.pooler.dense.lora_B.weight (module not selected by target_modules)" in msg
    assert f"missing from the adapter (1):\n  {QUERY0}.lora_A.weight" in msg
    assert "bert.encoder.layer.1.output.dense" in msg  # the available module names


def test_unsupported_peft_type_is_named(bert_lora_dir, ours, tmp_path):
    bad = _rewrite(bert_lora_dir, tmp_path / "loha", config=lambda c: {**c, "peft_type": "LOHA"})
    with pytest.raises(AdapterFormatError, match=r"peft_type 'LOHA' is not supported.*LORA"):
        _import_bert(bad, ours)


def test_unsupported_options_are_named(bert_lora_dir, ours, tmp_path):
    def options(cfg):
        bad = {"layers_to_transform": [0], "rank_pattern": {"query": 2}, "bias": "all"}
        return {**cfg, **bad, "init_lora_weights": "pissa"}

    bad = _rewrite(bert_lora_dir, tmp_path / "opts", config=options)
    with pytest.raises(AdapterFormatError) as err:
        _import_bert(bad, ours)
    for name in ("layers_to_transform=[0]", "rank_pattern=", "bias='all'", "'pissa'"):
        assert name in str(err.value)


def test_misshaped_tensors_are_named(bert_lora_dir, ours, tmp_path):
    def reshape(flat):
        flat[f"{QUERY0}.lora_A.weight"] = np.zeros((4, 31), np.float32)
        return flat

    bad = _rewrite(bert_lora_dir, tmp_path / "shape", tensors=reshape)
    with pytest.raises(AdapterFormatError) as err:
        _import_bert(bad, ours)
    assert f"{QUERY0}.lora_A.weight: [4, 31], expected [4, 32]" in str(err.value)


def test_misshaped_head_is_named(bert_lora_dir, ours, tmp_path):
    def reshape(flat):
        flat["base_model.model.classifier.weight"] = np.zeros((5, 32), np.float32)
        return flat

    bad = _rewrite(bert_lora_dir, tmp_path / "head", tensors=reshape)
    with pytest.raises(AdapterFormatError, match=r"classifier\.weight"):
        _import_bert(bad, ours)


def test_export_refuses_what_peft_would_compute_differently(ours, tmp_path):
    model, params, config = ours["bert"]
    ids, mask = _batch(2, 5, seed=0)
    method = PromptTuning(2)
    extra = base.init(model, params, [method], jax.random.key(0), ids, mask)
    with pytest.raises(AdapterFormatError, match="VirtualTokenPromptTuning"):
        export_adapter(partition.merge(params, extra), [method], config, BERT_ARCH, tmp_path)
    lora = LoRA(r".*self/query", rank=2)
    with pytest.raises(AdapterFormatError, match="one method"):
        export_adapter(params, [lora, method], config, BERT_ARCH, tmp_path)
    with pytest.raises(AdapterFormatError, match="no 'lora_a' leaves"):
        export_adapter(params, [lora], config, BERT_ARCH, tmp_path)
    query = "bert/encoder/layer_0/attention/self/query"
    without_head = {p: v for p, v in paths.flatten(params).items() if "classifier" not in p}
    without_head[f"{query}/lora_a"] = np.ones((32, 2), np.float32)
    without_head[f"{query}/lora_b"] = np.ones((2, 32), np.float32)
    with pytest.raises(AdapterFormatError, match="no classifier head"):
        export_adapter(paths.unflatten(without_head), [lora], config, BERT_ARCH, tmp_path)
