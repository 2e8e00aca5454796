"""Linear probe on cached features: features equal the live backbone's, the probe learns."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from adapt.methods.probe import extract_features, train_linear_probe
from adapt.models import bert


def test_cached_features_equal_live_forward_and_probe_fits():
    cfg = bert.BertConfig(
        vocab_size=40,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=24,
    )
    model = bert.BertModel(cfg)
    rng = np.random.default_rng(0)
    ids = rng.integers(1, 40, size=(40, 6))
    labels = (ids[:, 0] % 2).astype(np.int32)  # learnable from the first token
    params = model.init(jax.random.key(0), jnp.asarray(ids[:2]))["params"]

    def features(batch):
        out = model.apply({"params": params}, batch["input_ids"])
        return out["last_hidden_state"][:, 0]

    batches = [
        {"input_ids": ids[i : i + 16], "labels": labels[i : i + 16], "weights": np.ones(16)}
        for i in range(0, 32, 16)
    ]
    batches.append(
        {
            "input_ids": np.concatenate([ids[32:40], ids[32:40]]),
            "labels": np.concatenate([labels[32:40], labels[32:40]]),
            "weights": np.r_[np.ones(8), np.zeros(8)],
        }
    )
    feats, labs = extract_features(features, batches)
    assert feats.shape == (40, 16)
    np.testing.assert_array_equal(labs, labels)
    np.testing.assert_allclose(feats, np.asarray(features({"input_ids": ids})), atol=1e-5)

    head = train_linear_probe(feats, labs, 2, steps=300, lr=5e-2, batch_size=40)
    acc = np.mean(
        np.argmax(feats @ np.asarray(head["kernel"]) + np.asarray(head["bias"]), -1) == labs
    )
    assert acc >= 0.9


def _sklearn_objective_gradient(x, y, kernel, bias, c):
    """Largest gradient component of scikit-learn's objective, mean CE + ||W||^2 / (2 C N)
    (its lbfgs solver stops at 1e-4), at (kernel, bias)."""
    logits = x @ kernel + bias
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    p[np.arange(len(y)), y] -= 1.0
    n = len(y)
    grad_kernel = x.T @ p / n + kernel / (c * n)
    return max(np.abs(grad_kernel).max(), np.abs(p.mean(0)).max())


@pytest.mark.slow
def test_lbfgs_probe_lands_with_scikit_learn_on_real_features(minilm_dir):
    """Banking77 with 10 examples per intent, all-MiniLM-L6-v2's mean-pooled features: adapt's
    L-BFGS logistic regression and scikit-learn's LogisticRegression(C=10) agree within a point
    of test accuracy, after checking that scikit-learn's solution is a minimum here."""
    from sklearn.linear_model import LogisticRegression

    from adapt.convert.hf import load_pretrained
    from adapt.data import eval_batches
    from adapt.harness.data_setup import load_data
    from adapt.methods.probe import fit_logistic_regression, head_input

    data = load_data(
        dict(kind="text", source="third_party/banking77", train_split="train", eval_split="test",
             text_column="text", label_column="category", examples_per_class=10,
             label_names_file="third_party/banking77/categories.json", eval_max_examples=1000,
             max_length=64, bucket_boundaries=[16, 32, 64], tokenizer=str(minilm_dir)),
        seed=0, model_path=str(minilm_dir),
    )  # fmt: skip
    module, params, _ = load_pretrained(
        minilm_dir, architecture="BertForSequenceClassification", num_labels=77
    )
    feature = jax.jit(
        head_input(
            lambda b: module.apply(
                {"params": params}, b["input_ids"], attention_mask=b["attention_mask"],
                token_type_ids=b["token_type_ids"],
            ),
            "classifier",
        )
    )  # fmt: skip
    (x, y), (xt, yt) = (
        extract_features(feature, eval_batches(d, 128)) for d in (data.train, data.eval)
    )
    assert x.shape == (770, 384) and xt.shape == (1000, 384)
    reference = LogisticRegression(C=10.0, max_iter=2000).fit(x.astype(np.float64), y)
    assert reference.n_iter_[0] < 2000  # converged
    grad = _sklearn_objective_gradient(x, y, reference.coef_.T, reference.intercept_, 10.0)
    assert grad < 1e-3, grad  # a minimum (10x scikit-learn's tolerance), on this machine
    ours = fit_logistic_regression(x, y, 77, c=10.0)
    ours_acc = np.mean(
        np.argmax(xt @ np.asarray(ours["kernel"]) + np.asarray(ours["bias"]), -1) == yt
    )
    ref_acc = reference.score(xt, yt)
    assert abs(ours_acc - ref_acc) <= 0.01, (ours_acc, ref_acc)
    assert ours_acc > 0.8  # a converged probe on these features, not a stub
