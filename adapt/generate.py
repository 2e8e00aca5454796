"""Autoregressive generation for causal language models (greedy for now).

A model qualifies if ``model.apply({"params": p}, ids, mask)`` returns ``{"logits": (B, T, V)}``
and, for the cached path, it offers ``model.init_cache(batch, max_length)`` and accepts
``cache=`` returning the updated one as ``outputs["cache"]`` (see :mod:`adapt.models.llama`).

Prompts are **left-padded** (the last column is real for every row), so each row's next-token
logits sit in the last column. The whole loop is one ``jax.jit`` (a ``lax.scan`` over steps, static
shapes), compiled once per (model, batch shape, ``max_new_tokens``). No early stop at EOS yet:
every row gets exactly ``max_new_tokens`` tokens.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array


def greedy_generate(
    model: Any,
    params: dict,
    input_ids: Array,
    attention_mask: Array | None = None,
    max_new_tokens: int = 20,
    use_cache: bool = True,
) -> Array:
    """Append ``max_new_tokens`` argmax tokens to a left-padded batch; returns (B, T + new).

    ``use_cache=False`` recomputes the whole (fixed-size, padded) sequence every step: slower,
    but an independent check of the cached path, which prefills the prompt once and then feeds
    one token per step."""
    input_ids = jnp.asarray(input_ids, jnp.int32)
    if attention_mask is None:
        attention_mask = jnp.ones_like(input_ids)
    attention_mask = jnp.asarray(attention_mask, jnp.int32)
    if not np.asarray(attention_mask)[:, -1].all():
        raise ValueError("greedy_generate needs left-padded prompts (last column all real tokens)")
    if max_new_tokens <= 0:
        return input_ids
    run = _generate_cached if use_cache else _generate_full
    new = run(model, max_new_tokens, params, input_ids, attention_mask)
    return jnp.concatenate([input_ids, new], axis=1)


@partial(jax.jit, static_argnums=(0, 1))
def _generate_cached(model, max_new_tokens: int, params, input_ids, attention_mask):
    batch, prompt_len = input_ids.shape
    cache = model.init_cache(batch, prompt_len + max_new_tokens)
    out = model.apply({"params": params}, input_ids, attention_mask, cache=cache)
    first = jnp.argmax(out["logits"][:, -1], axis=-1).astype(jnp.int32)

    def step(carry, _):
        token, cache = carry
        out = model.apply(
            {"params": params}, token[:, None], jnp.ones((batch, 1), jnp.int32), cache=cache
        )
        nxt = jnp.argmax(out["logits"][:, -1], axis=-1).astype(jnp.int32)
        return (nxt, out["cache"]), nxt

    _, rest = jax.lax.scan(step, (first, out["cache"]), None, length=max_new_tokens - 1)
    return jnp.concatenate([first[:, None], rest.T], axis=1)


@partial(jax.jit, static_argnums=(0, 1))
def _generate_full(model, max_new_tokens: int, params, input_ids, attention_mask):
    batch, prompt_len = input_ids.shape
    pad = jnp.zeros((batch, max_new_tokens), jnp.int32)
    ids, mask = jnp.concatenate([input_ids, pad], 1), jnp.concatenate([attention_mask, pad], 1)

    def step(carry, i):
        ids, mask = carry
        # Slots after the current one are masked out and causally invisible, so they cannot
        # change the logits of the last real token.
        logits = model.apply({"params": params}, ids, mask)["logits"]
        last = jax.lax.dynamic_index_in_dim(logits, prompt_len + i - 1, axis=1, keepdims=False)
        nxt = jnp.argmax(last, axis=-1).astype(jnp.int32)
        ids = jax.lax.dynamic_update_slice(ids, nxt[:, None], (0, prompt_len + i))
        mask = jax.lax.dynamic_update_slice(
            mask, jnp.ones((batch, 1), jnp.int32), (0, prompt_len + i)
        )
        return (ids, mask), nxt

    _, new = jax.lax.scan(step, (ids, mask), jnp.arange(max_new_tokens))
    return new.T


__all__ = ["greedy_generate"]
