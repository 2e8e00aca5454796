"""Autoregressive generation for causal language models: greedy, temperature, top-k, top-p.

A model qualifies if ``model.apply({"params": p}, ids, mask)`` returns ``{"logits": (B, T, V)}``
and, for the cached path, it offers ``model.init_cache(batch, max_length)`` and accepts
``cache=`` returning the updated one as ``outputs["cache"]`` (see :mod:`adapt.models.llama`).
Adaptation methods (LoRA, IA3, prefix tuning...) are attached around every model call with
:func:`adapt.methods.base.attached`, so an adapted model generates without merging first.

Decisions worth knowing:

- Prompts are **left-padded** (the last column is real for every row), so every row's
  next-token logits sit in the last column and the new tokens of all rows share columns. The
  model derives positions from the attention mask, so a padded row continues exactly as it
  would alone.
- The whole decode is **one** ``jax.jit`` (a ``lax.while_loop``, static shapes), compiled once
  per (model, methods, batch shape, ``max_new_tokens``, sampling settings); ``temperature`` is
  a traced value, so changing it does not recompile. The loop **stops early** once every row
  has produced ``eos_id``; a finished row emits ``pad_id`` from then on.
- With the cache (default) the prompt is prefilled in one call and each step feeds one token;
  ``use_cache=False`` recomputes the whole fixed-size sequence every step: slower, but an
  independent check of the cached path, and the only path for methods that prepend inputs on
  every call (prompt tuning), which a cache cannot hold.
- Sampling follows Hugging Face's order (temperature, then top-k, then top-p) and draws step
  ``i`` with ``jax.random.fold_in(rng, i)``, so the cached and uncached paths draw the same
  tokens from the same logits, and a fixed key reproduces a generation exactly.
"""

from __future__ import annotations

from functools import partial
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from adapt.methods.base import attached

Array = jax.Array


class Generation(NamedTuple):
    """``tokens``: (B, max_new_tokens) int32, ``pad_id`` after a row's EOS; ``lengths``: (B,)
    int32, the tokens each row generated, its EOS included (``max_new_tokens`` if none)."""

    tokens: Array
    lengths: Array


class _Spec(NamedTuple):
    """Everything that shapes the compiled loop (hashable: a static jit argument). Methods hash
    by identity, so the same method objects reuse the compiled loop."""

    model: Any
    methods: tuple
    max_new_tokens: int
    greedy: bool
    top_k: int | None
    top_p: float | None
    eos_id: int | None
    pad_id: int
    use_cache: bool


def top_k_filter(logits: Array, k: int) -> Array:
    """Set every logit below the ``k``-th largest of its row to ``-inf`` (ties with the k-th
    are kept, as in HF's ``TopKLogitsWarper``); ``k`` larger than the vocabulary keeps all."""
    k = min(int(k), logits.shape[-1])
    kth = jax.lax.top_k(logits, k)[0][..., -1:]
    return jnp.where(logits < kth, -jnp.inf, logits)


def top_p_filter(logits: Array, p: float) -> Array:
    """Nucleus filter: keep the smallest set of most probable tokens whose probability sums to
    at least ``p``, set the rest to ``-inf``.

    Computed as HF's ``TopPLogitsWarper``: sort ascending, drop tokens whose cumulative
    probability is ``<= 1 - p``, always keep the most probable one. The kept set is then a
    logit threshold, so tokens tied with the least probable kept token are kept too (HF would
    keep an arbitrary subset of such ties)."""
    ascending = jnp.sort(logits, axis=-1)
    cumulative = jnp.cumsum(jax.nn.softmax(ascending, axis=-1), axis=-1)
    drop = cumulative <= 1.0 - p
    drop = drop.at[..., -1].set(False)
    threshold = jnp.min(jnp.where(drop, jnp.inf, ascending), axis=-1, keepdims=True)
    return jnp.where(logits < threshold, -jnp.inf, logits)


def process_logits(
    logits: Array,
    temperature: float | Array = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
) -> Array:
    """float32 logits scaled by ``1 / temperature``, then top-k, then top-p filtered."""
    logits = logits.astype(jnp.float32) / jnp.asarray(temperature, jnp.float32)
    if top_k is not None:
        logits = top_k_filter(logits, top_k)
    if top_p is not None and top_p < 1.0:
        logits = top_p_filter(logits, top_p)
    return logits


def _check_settings(temperature: float, top_k: int | None, top_p: float | None) -> None:
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0 (0 means greedy); got {temperature}")
    if top_k is not None and (int(top_k) != top_k or top_k < 1):
        raise ValueError(f"top_k must be a positive integer or None; got {top_k!r}")
    if top_p is not None and not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p must lie in (0, 1] or be None; got {top_p!r}")


def generate(
    model: Any,
    params: dict,
    input_ids: Array,
    attention_mask: Array | None = None,
    *,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    greedy: bool = False,
    eos_id: int | None = None,
    pad_id: int = 0,
    rng: Array | None = None,
    methods: Any = (),
    use_cache: bool = True,
) -> Generation:
    """Continue each left-padded prompt of ``input_ids`` (B, T) by up to ``max_new_tokens``.

    ``greedy=True`` (or ``temperature=0``) takes the argmax and ignores the other sampling
    settings; otherwise tokens are drawn from the :func:`process_logits` distribution with
    ``rng`` (required: generation is reproducible only with an explicit key). ``eos_id``: a row
    that produces it is finished (the EOS is kept); ``None`` generates exactly
    ``max_new_tokens`` for every row. Returns a :class:`Generation` ``(tokens, lengths)``."""
    _check_settings(temperature, top_k, top_p)
    input_ids = jnp.asarray(input_ids, jnp.int32)
    if attention_mask is None:
        attention_mask = jnp.ones_like(input_ids)
    attention_mask = jnp.asarray(attention_mask, jnp.int32)
    if input_ids.ndim != 2 or attention_mask.shape != input_ids.shape:
        raise ValueError(
            f"input_ids {input_ids.shape} and attention_mask {attention_mask.shape} must be the "
            "same (batch, length) shape"
        )
    if not np.asarray(attention_mask)[:, -1].all():
        raise ValueError("generation needs left-padded prompts (last column all real tokens)")
    batch = input_ids.shape[0]
    if max_new_tokens <= 0:
        return Generation(jnp.zeros((batch, 0), jnp.int32), jnp.zeros((batch,), jnp.int32))
    greedy = greedy or temperature == 0
    if rng is None:
        if not greedy:
            raise ValueError("sampling needs rng=jax.random.key(seed) (or greedy=True)")
        rng = jax.random.key(0)  # unused by the greedy loop; keeps one signature
    spec = _Spec(
        model,
        tuple(methods),
        int(max_new_tokens),
        bool(greedy),
        None if greedy or top_k is None else int(top_k),
        None if greedy or top_p is None or top_p >= 1.0 else float(top_p),
        None if eos_id is None else int(eos_id),
        int(pad_id),
        bool(use_cache),
    )
    temp = jnp.asarray(1.0 if greedy else temperature, jnp.float32)
    return _decode(spec, params, input_ids, attention_mask, temp, rng)


@partial(jax.jit, static_argnums=0)
def _decode(spec: _Spec, params, input_ids, attention_mask, temperature, rng) -> Generation:
    model, n = spec.model, spec.max_new_tokens
    batch, prompt_len = input_ids.shape

    def apply(*args, **kwargs):
        with attached(spec.methods):
            return model.apply({"params": params}, *args, **kwargs)

    def pick(logits: Array, step: Array) -> Array:
        if spec.greedy:
            return jnp.argmax(logits, axis=-1).astype(jnp.int32)
        logits = process_logits(logits, temperature, spec.top_k, spec.top_p)
        key = jax.random.fold_in(rng, step)
        return jax.random.categorical(key, logits, axis=-1).astype(jnp.int32)

    if spec.use_cache:

        def prefill():
            cache = model.init_cache(batch, prompt_len + n)
            out = apply(input_ids, attention_mask, cache=cache)
            _check_length(out["logits"], prompt_len)
            return out["logits"][:, -1], out["cache"]

        def next_logits(tokens, step, cache):
            token = jax.lax.dynamic_index_in_dim(tokens, step - 1, axis=1)
            out = apply(token, jnp.ones((batch, 1), jnp.int32), cache=cache)
            _check_length(out["logits"], 1)
            return out["logits"][:, -1], out["cache"]

    else:
        ids_pad = jnp.concatenate([input_ids, jnp.zeros((batch, n), jnp.int32)], axis=1)

        def full_logits(tokens, step):
            # Slots from ``step`` on are masked and causally after the read position, so they
            # cannot change its logits. Methods may prepend positions: read from the end.
            ids = jax.lax.dynamic_update_slice(ids_pad, tokens, (0, prompt_len))
            filled = (jnp.arange(n) < step).astype(jnp.int32)
            mask = jnp.concatenate([attention_mask, jnp.broadcast_to(filled, (batch, n))], 1)
            logits = apply(ids, mask)["logits"]
            read = logits.shape[1] - n - 1 + step
            return jax.lax.dynamic_index_in_dim(logits, read, axis=1, keepdims=False)

        def prefill():
            return full_logits(jnp.full((batch, n), spec.pad_id, jnp.int32), jnp.int32(0)), None

        def next_logits(tokens, step, cache):
            return full_logits(tokens, step), None

    def record(state, logits):
        step, tokens, done, lengths, cache = state
        token = jnp.where(done, spec.pad_id, pick(logits, step))
        tokens = jax.lax.dynamic_update_slice(tokens, token[:, None], (0, step))
        lengths = lengths + (~done).astype(jnp.int32)
        if spec.eos_id is not None:
            done = done | (token == spec.eos_id)
        return step + 1, tokens, done, lengths, cache

    logits, cache = prefill()
    tokens = jnp.full((batch, n), spec.pad_id, jnp.int32)
    done = jnp.zeros((batch,), bool)
    state = record(
        (jnp.int32(0), tokens, done, jnp.zeros((batch,), jnp.int32), cache), logits
    )

    def cond(state):
        step, _, done, _, _ = state
        return (step < n) & ~jnp.all(done)

    def body(state):
        step, tokens, done, lengths, cache = state
        logits, cache = next_logits(tokens, step, cache)
        return record((step, tokens, done, lengths, cache), logits)

    _, tokens, _, lengths, _ = jax.lax.while_loop(cond, body, state)
    return Generation(tokens, lengths)


def _check_length(logits: Array, expected: int) -> None:
    """A method that prepends positions on every call (prompt tuning) would grow the cache
    each step and overflow it silently: refuse at trace time."""
    if logits.shape[1] != expected:
        raise ValueError(
            f"the model returned {logits.shape[1]} positions for {expected} input tokens: a "
            "method prepends inputs on every call (prompt tuning?), which a KV cache cannot "
            "hold; generate with use_cache=False"
        )


def greedy_generate(
    model: Any,
    params: dict,
    input_ids: Array,
    attention_mask: Array | None = None,
    max_new_tokens: int = 20,
    use_cache: bool = True,
) -> Array:
    """Append ``max_new_tokens`` argmax tokens (no EOS stop) to a left-padded batch; returns
    (B, T + new). A thin wrapper over :func:`generate`."""
    input_ids = jnp.asarray(input_ids, jnp.int32)
    out = generate(
        model,
        params,
        input_ids,
        attention_mask,
        max_new_tokens=max_new_tokens,
        greedy=True,
        use_cache=use_cache,
    )
    return jnp.concatenate([input_ids, out.tokens], axis=1)


__all__ = [
    "Generation",
    "generate",
    "greedy_generate",
    "process_logits",
    "top_k_filter",
    "top_p_filter",
]
