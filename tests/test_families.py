"""The model-family registry: each record's defaults fit its model, and the family-agnostic layers
(harness, methods, sharding, optim, training, PEFT format) name no family."""

import ast
import importlib
import re
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from adapt import optim, paths, sharding
from adapt.convert import hf
from adapt.methods import MethodError, build
from adapt.models import bert, families, llama, qwen2, resnet, vit

REPO = Path(__file__).resolve().parents[1]


def _bert(model_type):
    return bert.BertForSequenceClassification(
        bert.BertConfig(
            vocab_size=32,
            hidden_size=16,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=24,
            num_labels=3,
            model_type=model_type,
        )
    )


TINY = {  # each family's models (a pattern must match in one of them: out_proj is RoBERTa's)
    "bert": [lambda: _bert("bert"), lambda: _bert("roberta")],
    "vit": [lambda: vit.ViTForImageClassification(
        vit.ViTConfig(image_size=16, patch_size=8, hidden_size=16, num_hidden_layers=2,
                      num_attention_heads=2, intermediate_size=24, num_labels=3)
    )],
    "llama": [lambda: llama.LlamaForCausalLM(
        llama.LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=24, num_hidden_layers=2,
                          num_attention_heads=4, num_key_value_heads=2)
    )],
    "resnet": [lambda: resnet.ResNet(resnet.resnet20_cifar(num_classes=3))],
    "qwen2": [lambda: qwen2.Qwen2ForCausalLM(
        qwen2.Qwen2Config(vocab_size=32, hidden_size=16, intermediate_size=24, num_hidden_layers=2,
                          num_attention_heads=4, num_key_value_heads=2)
    )],
}  # fmt: skip


def test_every_registered_family_has_a_tiny_model_here():
    assert set(TINY) == set(families.FAMILIES)


def _built(factory, name):
    module = factory()
    inputs = families.get(name).example_inputs(module.config)
    variables = jax.eval_shape(module.init, jax.random.key(0), *inputs)
    return module, variables, paths.flatten(variables["params"])


@pytest.mark.parametrize("name", sorted(families.FAMILIES))
def test_record_defaults_match_the_model(name):
    """Each default target regex matches modules of the family's model, the head its leaves,
    the layer pattern every block and nothing else: a record that drifts from its model fails
    here rather than as "matched no module" in a user's run."""
    record = families.get(name)
    built = [_built(factory, name) for factory in TINY[name]]
    flat = {p for _, _, leaves in built for p in leaves}
    modules = {p.rsplit("/", 1)[0] for p in flat}
    kernels = [p for p in flat if p.endswith("/kernel")]
    if record.head is not None:
        for _, _, leaves in built:
            assert any(re.fullmatch(record.head, p) for p in leaves), record.head
    for what in ("lora_targets", "all_linear"):
        pattern = getattr(record, what)
        if pattern is not None:
            assert any(re.fullmatch(pattern, m) for m in modules), (what, pattern)
    for pair in (record.ia3, record.adapters):
        for pattern in pair or ():
            assert any(re.fullmatch(pattern, m) for m in modules), pattern
    for pattern in record.row_parallel:
        assert any(re.fullmatch(pattern, k) for k in kernels), pattern
    if record.num_layers_field:
        for module, _, leaves in built:
            num_layers = getattr(module.config, record.num_layers_field)
            depths = {optim.layer_depth(p, num_layers) for p in leaves}
            assert depths == set(range(num_layers + 2)), depths  # embeddings, blocks, the rest
            assert any(families.is_embedding(p) for p in leaves)


@pytest.mark.parametrize("name", sorted(families.FAMILIES))
def test_feed_calls_the_model_with_a_batch(name):
    record = families.get(name)
    module, variables, _ = _built(TINY[name][0], name)
    variables = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), variables)
    (example,) = record.example_inputs(module.config)
    batch = {record.inputs: jnp.zeros((2, *example.shape[1:]), example.dtype)}
    if record.inputs == "input_ids":
        batch["attention_mask"] = jnp.ones(batch["input_ids"].shape, jnp.int32)
    for train in (False, True):
        args, kwargs = record.feed(batch, train, True)
        out = module.apply(variables, *args, rngs={"dropout": jax.random.key(0)}, **kwargs)
        logits = (out[0] if isinstance(out, tuple) else out)["logits"]
        assert logits.shape[0] == 2 and np.isfinite(np.asarray(logits)).all()


def test_converters_and_loaders_are_the_registry():
    assert [f.name for f in hf._families()] == [
        n for n, f in families.FAMILIES.items() if f.converter
    ]
    for kind in families.model_kinds()[1:]:
        record, load = families.loader(kind)
        assert callable(load) and kind in record.loaders
    with pytest.raises(families.UnknownFamilyError, match="model.kind 'nope'"):
        families.loader("nope")


def test_row_parallel_rule_is_the_union_of_the_records():
    assert sharding.logical_axes("model/layers_0/self_attn/o_proj/kernel", (8, 4)) == (
        "mlp",
        "embed",
    )
    assert sharding.logical_axes("model/layers_0/self_attn/q_proj/kernel", (4, 8)) == (
        "embed",
        "mlp",
    )


def test_missing_defaults_say_to_pass_targets():
    with pytest.raises(MethodError, match="resnet family has no default ia3; pass targets"):
        build("ia3", "resnet")
    with pytest.raises(MethodError, match="unknown model family 'gpt9'.*pass targets explicitly"):
        build("ia3", "gpt9")


# ------------------------------------------------------------------ the agnostic layers
AGNOSTIC = ["adapt/harness", "adapt/methods", "adapt/peft_format", "adapt/studies", "adapt/tasks",
            "adapt/config", "adapt/sharding.py", "adapt/optim.py", "adapt/train.py",
            "adapt/step.py", "adapt/partition.py", "adapt/remat.py"]  # fmt: skip
_FAMILY_MODULE = re.compile(
    r"adapt\.(models\.(bert|vit|llama|resnet|qwen2)|convert\.(hf_\w+|llama2c|resnet_cifar))$"
)


def family_mentions(source: str) -> list[str]:
    """String literals that are a family name and imports of a family's model or converter: what
    code needs to branch on a family."""
    names = set(families.FAMILIES) | {"roberta", "qwen2"}
    found = []
    for node in ast.walk(ast.parse(source)):
        literal = isinstance(node, ast.Constant) and isinstance(node.value, str)
        if literal and node.value.lower() in names:
            found.append(f"line {node.lineno}: literal {node.value!r}")
        imported = []
        if isinstance(node, ast.ImportFrom) and node.module:
            imported = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
        elif isinstance(node, ast.Import):
            imported = [a.name for a in node.names]
        found += [f"line {node.lineno}: import {m}" for m in imported if _FAMILY_MODULE.match(m)]
    return found


def test_the_family_check_finds_what_it_looks_for():
    snippet = 'if family == "bert":\n    from adapt.models.llama import LlamaConfig\n'
    assert sorted(family_mentions(snippet)) == [
        "line 1: literal 'bert'",
        "line 2: import adapt.models.llama",
    ]


def test_harness_methods_sharding_optim_and_peft_format_name_no_family():
    files = [f for root in AGNOSTIC for f in sorted((REPO / root).glob("**/*.py"))]
    files += [REPO / root for root in AGNOSTIC if root.endswith(".py")]
    assert len(files) > 30
    found = {
        str(f.relative_to(REPO)): hits for f in files if (hits := family_mentions(f.read_text()))
    }
    assert not found, f"ask adapt.models.families instead: {found}"


FAMILY_WORD = re.compile(r"(?i)(?<![a-z])(bert|roberta|vit|llama|resnet|qwen)")


def test_no_family_name_appears_in_the_family_agnostic_layers():
    """Not even in comments and docstrings: harness, methods, PEFT format, sharding, the
    optimizer, the step and the Trainer speak of families only through the registry."""
    found = []
    for root in AGNOSTIC:
        if root == "adapt/studies":  # many runs: its sweeps name their data and setups
            continue
        for f in [REPO / root] if root.endswith(".py") else sorted((REPO / root).glob("**/*.py")):
            for number, line in enumerate(f.read_text().splitlines(), 1):
                if FAMILY_WORD.search(line):
                    found.append(f"{f.relative_to(REPO)}:{number}: {line.strip()}")
    assert not found, "\n".join(found)


def test_no_import_cycle_between_the_converters_and_hf():
    """``adapt.convert.hf`` finds the converters through the registry, lazily: importing either
    side first works in a fresh interpreter."""
    import subprocess
    import sys

    for first in ("adapt.convert.hf", "adapt.convert.hf_bert", "adapt.models.families"):
        code = f"import {first}; import adapt.convert.hf as hf; print(len(hf._families()))"
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             cwd=REPO, check=True)  # fmt: skip
        assert out.stdout.strip() == str(len(families.converters()))
    assert importlib.import_module("adapt.convert.hf_bert").FAMILY.name == "bert"
