"""Adaptation methods on real model code: init invariance, merge, what trains, bad input."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from adapt import optim, partition, paths
from adapt.methods import LoRA, MethodError, base, build, recipes
from adapt.methods.regularizers import diagonal_fisher, ewc_penalty, l2sp_penalty
from adapt.models import bert, llama, vit
from adapt.step import jit_train_step
from adapt.tasks.classification import cross_entropy

IDS = jnp.array([[2, 7, 9, 4, 5, 1], [3, 8, 6, 1, 0, 0]])
MASK = jnp.array([[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0]])
LABELS = jnp.array([1, 2])


@pytest.fixture(scope="module")
def tiny_bert():
    cfg = bert.BertConfig(
        vocab_size=32,
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=24,
        num_labels=3,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    model = bert.BertForSequenceClassification(cfg)
    params = jax.jit(model.init)(jax.random.key(0), IDS, MASK)["params"]
    return model, params


def _with(model, params, method, seed=1):
    extra = base.init(model, params, [method], jax.random.key(seed), IDS, MASK)
    return partition.merge(params, extra), extra


@pytest.mark.parametrize("name", ["lora", "rslora", "dora", "ia3", "houlsby", "pfeiffer", "prefix"])
def test_methods_leave_outputs_unchanged_at_init(tiny_bert, name):
    model, params = tiny_bert
    ref = model.apply({"params": params}, IDS, MASK)["logits"]
    method = build(name, "bert")
    full, extra = _with(model, params, method)
    assert partition.count(extra) > 0
    out = base.apply(model, full, [method], IDS, MASK)["logits"]
    np.testing.assert_allclose(out, ref, atol=1e-6)


def _perturb(tree, seed=3, scale=0.1):
    leaves, treedef = jax.tree.flatten(tree)
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    return jax.tree.unflatten(
        treedef,
        [v + scale * jax.random.normal(k, v.shape) for v, k in zip(leaves, keys, strict=True)],
    )


@pytest.mark.parametrize("dora", [False, True])
def test_lora_merged_equals_unmerged(tiny_bert, dora):
    model, params = tiny_bert
    method = LoRA(r".*attention/self/(query|value)", rank=4, alpha=8, dora=dora)
    _, extra = _with(model, params, method)
    full = partition.merge(params, _perturb(extra, scale=1.0))  # B != 0: the adapter matters
    out = base.apply(model, full, [method], IDS, MASK)["logits"]
    merged = method.merge(full)
    assert not any("lora" in p for p in paths.flatten(merged))
    np.testing.assert_allclose(model.apply({"params": merged}, IDS, MASK)["logits"], out, atol=1e-5)
    assert np.abs(out - model.apply({"params": params}, IDS, MASK)["logits"]).max() > 1e-4
    if not dora:
        lora_leaves = {p: v for p, v in paths.flatten(full).items() if "lora" in p}
        restored = method.unmerge(merged, paths.unflatten(lora_leaves))
        for p, v in paths.flatten(full).items():
            np.testing.assert_allclose(paths.flatten(restored)[p], v, atol=1e-6)


def test_named_adapters_coexist_and_switch(tiny_bert):
    model, params = tiny_bert
    a = LoRA(r".*attention/self/query", rank=2, name="task_a")
    b = LoRA(r".*attention/self/value", rank=2, name="task_b")
    extra_a = _perturb(base.init(model, params, [a], jax.random.key(1), IDS, MASK), scale=1.0)
    extra_b = _perturb(base.init(model, params, [b], jax.random.key(2), IDS, MASK), 5, 1.0)
    full = partition.merge(params, extra_a, extra_b)
    out_a = base.apply(model, full, [a], IDS, MASK)["logits"]
    out_b = base.apply(model, full, [b], IDS, MASK)["logits"]
    np.testing.assert_allclose(
        out_a,
        model.apply({"params": a.merge(partition.merge(params, extra_a))}, IDS, MASK)["logits"],
        atol=1e-5,
    )
    np.testing.assert_allclose(
        out_b,
        model.apply({"params": b.merge(partition.merge(params, extra_b))}, IDS, MASK)["logits"],
        atol=1e-5,
    )
    assert np.abs(out_a - out_b).max() > 1e-4


@pytest.mark.parametrize("name", ["lora", "dora", "ia3", "houlsby", "prefix", "prompt", "bitfit"])
@pytest.mark.slow
def test_training_changes_only_the_method_and_head(tiny_bert, name):
    model, params = tiny_bert
    head = r"classifier/.*"
    if name == "bitfit":
        methods, full = [], params
        rules = recipes.bitfit(head)
    else:
        method = build(name, "bert")
        methods = [method]
        full, _ = _with(model, params, method)
        rules = [(head, "head"), *method.rules(), (".*", None)]
    labels = partition.label(full, rules)
    trainable, frozen = partition.split(full, labels)
    trainable = jax.tree.map(jnp.copy, trainable)  # the step donates it; keep the fixture intact
    groups = {
        lab: {"lr": 1e-2} for lab in set(paths.flatten(partition.trainable_labels(labels)).values())
    }
    tx = optim.build(partition.trainable_labels(labels), groups, total_steps=10)
    opt_state = tx.init(trainable)

    # Optimizer state holds exactly Adam's two moments per trainable scalar (plus step counts).
    state_scalars = sum(
        x.size for x in jax.tree.leaves(opt_state) if hasattr(x, "size") and x.ndim > 0
    )
    assert state_scalars == 2 * partition.count(trainable)

    def loss_fn(p, batch, rng):
        logits = base.apply(model, p, methods, batch["ids"], batch["mask"])["logits"]
        return cross_entropy(logits, batch["labels"]), {}

    step = jit_train_step(loss_fn, tx)
    before_frozen = jax.tree.map(np.asarray, frozen)
    before_trainable = jax.tree.map(np.array, trainable)
    batch = {"ids": IDS, "mask": MASK, "labels": LABELS}
    for i in range(3):
        trainable, opt_state, loss, _ = step(trainable, frozen, opt_state, batch, jax.random.key(i))
    for p, v in paths.flatten(frozen).items():
        np.testing.assert_array_equal(np.asarray(v), paths.flatten(before_frozen)[p], err_msg=p)
    changed = [
        p
        for p, v in paths.flatten(trainable).items()
        if not np.array_equal(np.asarray(v), paths.flatten(before_trainable)[p])
    ]
    method_leaves = [p for p in paths.flatten(trainable) if not p.startswith("classifier")]
    assert method_leaves, "the method trains nothing"
    if name != "prefix":  # gated prefix: K/V get gradient only once the gate has moved
        assert set(method_leaves) <= set(changed), set(method_leaves) - set(changed)
    else:
        assert any(p.endswith("prefix_gate") for p in changed)
    assert np.isfinite(float(loss))


@pytest.mark.parametrize(
    "factory",
    [
        lambda: vit.ViTForImageClassification(
            vit.ViTConfig(
                image_size=16,
                patch_size=8,
                hidden_size=16,
                num_hidden_layers=2,
                num_attention_heads=2,
                intermediate_size=24,
                num_labels=3,
            )
        ),
        lambda: llama.LlamaForCausalLM(
            llama.LlamaConfig(
                vocab_size=32,
                hidden_size=16,
                intermediate_size=24,
                num_hidden_layers=2,
                num_attention_heads=4,
                num_key_value_heads=2,
            )
        ),
    ],
    ids=["vit", "llama"],
)
@pytest.mark.parametrize("name", ["lora", "dora", "ia3", "houlsby", "prefix"])
def test_methods_attach_to_vit_and_llama_unchanged_at_init(factory, name):
    model = factory()
    family = "vit" if isinstance(model, vit.ViTForImageClassification) else "llama"
    inputs = (jnp.ones((2, 16, 16, 3)),) if family == "vit" else (IDS, MASK)
    params = jax.jit(model.init)(jax.random.key(0), *inputs)["params"]
    ref = model.apply({"params": params}, *inputs)["logits"]
    method = build(name, family)
    extra = base.init(model, params, [method], jax.random.key(1), *inputs)
    assert partition.count(extra) > 0 and method.matched
    out = base.apply(model, partition.merge(params, extra), [method], *inputs)["logits"]
    np.testing.assert_allclose(out, ref, atol=1e-6)


# --------------------------------------------------------------------------------- bad input
def test_target_matching_nothing_lists_available_module_paths(tiny_bert):
    model, params = tiny_bert
    with pytest.raises(MethodError) as err:
        base.init(
            model, params, [LoRA(r".*attention/self/qurey", rank=2)], jax.random.key(0), IDS, MASK
        )
    assert "qurey" in str(err.value)
    assert "bert/encoder/layer_0/attention/self/query" in str(err.value)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"rank": 0}, "rank"),
        ({"rank": -2}, "rank"),
        ({"alpha": 0}, "alpha"),
        ({"alpha": -1.0}, "alpha"),
    ],
)
def test_bad_lora_hyperparameters(kwargs, match):
    with pytest.raises(MethodError, match=match):
        LoRA(".*", **kwargs)


def test_unknown_method_name():
    with pytest.raises(MethodError, match="unknown method 'lorra'.*lora"):
        build("lorra", "bert")


def test_rules_that_leave_leaves_uncovered_or_match_nothing(tiny_bert):
    _, params = tiny_bert
    with pytest.raises(partition.PartitionError, match="match no rule") as err:
        partition.label(params, [(r"classifier/.*", "head"), (r"bert/encoder/.*", None)])
    assert "bert/embeddings/word_embeddings/embedding" in str(err.value)
    with pytest.raises(partition.PartitionError, match="match no parameter"):
        partition.label(params, [(r".*", None), (r"classifier/.*", "head")])  # shadowed
    with pytest.raises(partition.PartitionError, match="valid regex"):
        partition.label(params, [(r"(", None)])


# ----------------------------------------------------------------------- regularisers, LR, etc.
def test_ewc_fisher_and_penalty_equal_hand_computed_values():
    # Logistic model p(y=1|x) = sigmoid(w.x): d log p(y|x)/dw = (y - sigmoid(w.x)) x.
    w = {"w": jnp.array([0.3, -0.2])}
    xs = jnp.array([[1.0, 2.0], [0.5, -1.0], [-1.0, 0.0]])
    ys = jnp.array([1.0, 0.0, 1.0])

    def log_lik(params, example):
        x, y = example
        z = params["w"] @ x
        return y * jax.nn.log_sigmoid(z) + (1 - y) * jax.nn.log_sigmoid(-z)

    fisher = diagonal_fisher(log_lik, w, [(xs[:2], ys[:2]), (xs[2:], ys[2:])])
    s = 1 / (1 + np.exp(-(np.asarray(xs) @ np.array([0.3, -0.2]))))
    expected = np.mean(((np.asarray(ys) - s)[:, None] * np.asarray(xs)) ** 2, axis=0)
    np.testing.assert_allclose(fisher["w"], expected, rtol=1e-6)

    theta = {"w": jnp.array([1.0, 1.0])}
    pen = ewc_penalty(theta, w, fisher, strength=4.0)
    hand = 0.5 * 4.0 * np.sum(expected * (np.array([1.0, 1.0]) - np.array([0.3, -0.2])) ** 2)
    np.testing.assert_allclose(float(pen), hand, rtol=1e-6)


def test_l2sp_pulls_pretrained_to_anchor_and_new_leaves_to_zero():
    params = {"enc": {"w": jnp.array([1.0, 2.0])}, "head": {"w": jnp.array([3.0])}}
    anchor = {"enc": {"w": jnp.array([0.0, 1.0])}}
    got = float(l2sp_penalty(params, anchor, alpha=0.5, beta=0.1))
    assert got == pytest.approx(0.5 * 0.5 * (1 + 1) + 0.5 * 0.1 * 9)


def test_layerwise_lr_multipliers(tiny_bert):
    _, params = tiny_bert
    mult = paths.flatten(optim.layerwise_multipliers(params, num_layers=2, decay=0.5))
    assert mult["classifier/kernel"] == 1.0
    assert mult["bert/pooler/dense/kernel"] == 1.0
    assert mult["bert/encoder/layer_1/attention/self/query/kernel"] == 0.5
    assert mult["bert/encoder/layer_0/output/dense/bias"] == 0.25
    assert mult["bert/embeddings/word_embeddings/embedding"] == 0.125


def test_schedules():
    warm = optim.schedule("warmup_cosine", 1.0, 100, warmup_steps=10)
    assert float(warm(0)) == 0.0 and float(warm(10)) == pytest.approx(1.0)
    assert float(warm(100)) == pytest.approx(0.0, abs=1e-6)
    stlr = optim.schedule("slanted_triangular", 1.0, 100, cut_fraction=0.1, ratio=32)
    assert float(stlr(0)) == pytest.approx(1 / 32)
    assert float(stlr(10)) == pytest.approx(1.0)
    assert float(stlr(100)) == pytest.approx(1 / 32)
    assert float(stlr(55)) == pytest.approx((1 + 0.5 * 31) / 32)
    with pytest.raises(ValueError, match="unknown schedule"):
        optim.schedule("cosine_restarts", 1.0, 10)


def test_gradual_unfreezing_stages_unfreeze_one_layer_per_stage(tiny_bert):
    _, params = tiny_bert
    names = list(paths.flatten(params))
    stages = recipes.unfreezing_stages(names, r"classifier/.*", num_layers=2)
    trainable = []
    for rules in stages:
        labels = paths.flatten(partition.label(params, rules))
        trainable.append({p for p, lab in labels.items() if lab is not None})
    assert trainable[0] == {"classifier/kernel", "classifier/bias"}
    assert all(a < b for a, b in zip(trainable, trainable[1:], strict=False))  # strictly growing
    assert any("layer_1" in p for p in trainable[1]) and not any(
        "layer_0" in p for p in trainable[1]
    )
    assert trainable[-1] == set(names)


def test_wise_ft_interpolates_and_keeps_new_leaves():
    zero = {"a": jnp.array([0.0, 2.0])}
    tuned = {"a": jnp.array([2.0, 4.0]), "head": jnp.array([7.0])}
    mid = recipes.wise_ft(zero, tuned, 0.25)
    np.testing.assert_allclose(mid["a"], [0.5, 2.5])
    np.testing.assert_allclose(mid["head"], [7.0])
    with pytest.raises(ValueError, match="alpha"):
        recipes.wise_ft(zero, tuned, 1.5)


def test_optimizer_groups_reject_unknown_keys_and_missing_groups():
    with pytest.raises(ValueError, match="unknown optimizer keys"):
        optim.group_optimizer({"lr": 1.0, "learning_rate": 2.0}, 10)
    with pytest.raises(ValueError, match="no optimizer group for labels \\['head'\\]"):
        optim.build({"w": "head"}, {"lora": {"lr": 1.0}}, 10)
    assert isinstance(
        optim.build({"w": "head"}, {"head": {"lr": 1.0}}, 10), optax.GradientTransformation
    )


@pytest.mark.slow
def test_gradual_unfreezing_trains_through_stages_with_one_compile_each(tiny_bert):
    from adapt.step import run_stages

    model, params = tiny_bert
    params = jax.tree.map(jnp.copy, params)
    stages = recipes.unfreezing_stages(list(paths.flatten(params)), r"classifier/.*", num_layers=2)
    traces = []

    def loss_fn(p, batch, rng):
        traces.append(1)  # runs once per trace, i.e. once per compilation
        logits = model.apply({"params": p}, batch["ids"], batch["mask"])["logits"]
        return cross_entropy(logits, batch["labels"]), {}

    def make_tx(labels):
        groups = {lab: {"lr": 1e-2} for lab in set(paths.flatten(labels).values())}
        return optim.build(labels, groups, total_steps=100)

    batch = {"ids": IDS, "mask": MASK, "labels": LABELS}
    before = paths.flatten(jax.tree.map(np.asarray, params))
    out, losses = run_stages(
        params, stages, [2] * len(stages), loss_fn, make_tx, iter([batch] * 100), jax.random.key(0)
    )
    assert len(traces) == len(stages)  # one compilation per stage, none per step
    assert len(losses) == 2 * len(stages) and losses[-1] < losses[0]
    after = paths.flatten(out)
    assert not np.array_equal(
        before["bert/embeddings/word_embeddings/embedding"],
        after["bert/embeddings/word_embeddings/embedding"],
    )


@pytest.mark.slow
def test_prefix_reparameterisation_folds_into_plain_prefixes(tiny_bert):
    from adapt.methods.prompts import PrefixTuning

    model, params = tiny_bert
    train_time = PrefixTuning(num_tokens=3, mlp_hidden=8)
    extra = base.init(model, params, [train_time], jax.random.key(1), IDS, MASK)
    assert any(p.endswith("prefix_mlp_kernel") for p in paths.flatten(extra))
    full = partition.merge(params, _perturb(extra, scale=0.5))  # gates open, MLP non-trivial
    out = base.apply(model, full, [train_time], IDS, MASK)["logits"]
    folded = train_time.fold(full)
    flat = paths.flatten(folded)
    assert not any("prefix_mlp" in p or "prefix_proj" in p or "prefix_embedding" in p for p in flat)
    assert flat["bert/encoder/layer_0/attention/self/prefix_key"].shape == (3, 2, 8)
    serving = PrefixTuning(num_tokens=3, reparam=False)
    np.testing.assert_allclose(
        base.apply(model, folded, [serving], IDS, MASK)["logits"], out, atol=1e-5
    )
    assert np.abs(out - model.apply({"params": params}, IDS, MASK)["logits"]).max() > 1e-4
