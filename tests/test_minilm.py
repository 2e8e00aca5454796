"""Real weights: all-MiniLM-L6-v2 (a 6-layer, 384-wide BERT) as sentence-transformers uses it.

The checkpoint is a bare ``BertModel`` (keys without the ``bert.`` prefix, with a pooler), read
with our own loader and tokenised with its own ``tokenizer.json``; embeddings are mean-pooled
over real tokens and L2-normalised, as its ``1_Pooling`` + ``Normalize`` modules do.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

from adapt.convert.hf import load_pretrained
from adapt.models.bert import mean_pool

tokenizers = pytest.importorskip("tokenizers")

SENTENCES = [
    "A man is playing a guitar.",
    "Someone is strumming a guitar on stage.",
    "The stock market fell sharply on Monday after weak earnings reports.",
    "A child is riding a bicycle.",
    "Quantum computers exploit superposition and entanglement to solve certain problems.",
    "Hi",
]


@pytest.fixture(scope="module")
def batch(minilm_dir) -> dict[str, np.ndarray]:
    tok = tokenizers.Tokenizer.from_file(str(minilm_dir / "tokenizer.json"))
    tok.enable_padding(pad_id=0, pad_token="[PAD]")  # pad to the longest, not the fixed 128
    enc = tok.encode_batch(SENTENCES)
    batch = {
        "input_ids": np.array([e.ids for e in enc], np.int64),
        "attention_mask": np.array([e.attention_mask for e in enc], np.int64),
        "token_type_ids": np.array([e.type_ids for e in enc], np.int64),
    }
    lengths = batch["attention_mask"].sum(1)
    assert lengths.min() == 3 and lengths.max() > 12  # "[CLS] hi [SEP]" ... a long sentence
    return batch


def _normalise(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


@pytest.fixture(scope="module")
def reference(minilm_dir, batch) -> dict[str, np.ndarray]:
    """transformers AutoModel, float32, eval, with sentence-transformers' mean pooling."""
    model = transformers.AutoModel.from_pretrained(minilm_dir).eval()
    with torch.no_grad():
        out = model(**{k: torch.tensor(v) for k, v in batch.items()})
    hidden = out.last_hidden_state
    mask = torch.tensor(batch["attention_mask"])[..., None].float()
    pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
    return {"last_hidden_state": hidden.numpy(), "embedding": _normalise(pooled.numpy())}


@pytest.fixture(scope="module")
def ours(minilm_dir, batch) -> dict[str, np.ndarray]:
    module, params, config = load_pretrained(minilm_dir)
    assert (config.hidden_size, config.num_hidden_layers) == (384, 6)
    out = module.apply(
        {"params": params},
        jnp.asarray(batch["input_ids"]),
        jnp.asarray(batch["attention_mask"]),
        jnp.asarray(batch["token_type_ids"]),
    )
    pooled = mean_pool(out["last_hidden_state"], jnp.asarray(batch["attention_mask"]))
    return {
        "last_hidden_state": np.asarray(out["last_hidden_state"]),
        "embedding": _normalise(np.asarray(pooled)),
    }


def test_sentence_embeddings_match_transformers(ours, reference, batch):
    np.testing.assert_allclose(ours["embedding"], reference["embedding"], atol=1e-5, rtol=0)
    real = batch["attention_mask"].astype(bool)
    np.testing.assert_allclose(
        ours["last_hidden_state"][real], reference["last_hidden_state"][real], atol=1e-5, rtol=0
    )


def test_paraphrases_are_closer_than_unrelated_sentences(ours):
    emb = ours["embedding"]
    cos = emb @ emb.T
    paraphrase = cos[0, 1]  # two guitar sentences
    unrelated = [cos[i, j] for i in (0, 1) for j in (2, 4)]  # guitar vs stocks / quantum
    assert paraphrase > 0.5, cos
    assert paraphrase > max(unrelated) + 0.3, cos


def test_mean_pool_ignores_padding():
    hidden = jnp.array([[[1.0, 2.0], [3.0, 4.0], [100.0, 100.0]]])
    np.testing.assert_allclose(mean_pool(hidden, jnp.array([[1, 1, 0]])), [[2.0, 3.0]])
    # An all-padding row gives zeros rather than NaN.
    np.testing.assert_array_equal(mean_pool(hidden, jnp.array([[0, 0, 0]])), [[0.0, 0.0]])
