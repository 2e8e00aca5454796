"""Linear probe on cached features: features equal the live backbone's, the probe learns."""

import jax
import jax.numpy as jnp
import numpy as np

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
