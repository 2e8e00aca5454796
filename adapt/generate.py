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
  per (model, methods, batch shape, ``max_new_tokens``, cached or not). Greedy or sampling,
  temperature, top-k, top-p, EOS and padding ids are traced values, so a sweep over them does
  not recompile (the price: each sampled step sorts the vocabulary once, even without
  filters; greedy steps take a ``lax.cond`` branch that does not). The loop **stops early**
  once every row has produced ``eos_id``; a finished row emits ``pad_id`` from then on.
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
    """What shapes the compiled loop (a static jit argument; methods hash by identity). Sampling
    settings, EOS and padding ids are traced values, so changing them does not recompile."""

    model: Any
    methods: tuple
    max_new_tokens: int
    use_cache: bool


def process_logits(
    logits: Array,
    temperature: float | Array = 1.0,
    top_k: int | Array | None = None,
    top_p: float | Array | None = None,
) -> Array:
    """float32 logits scaled by ``1 / temperature``, then top-k, then top-p filtered (Hugging
    Face's order); filtered tokens get ``-inf``. ``top_k``/``top_p`` may be traced; ``None``
    (or ``k >= vocab``, ``p = 1``) disables a filter.

    - top-k keeps the ``k`` largest logits of each row, and any tied with the k-th (as HF's
      ``TopKLogitsWarper``).
    - top-p (nucleus) keeps the smallest set of most probable tokens whose probability sums to
      at least ``p``, computed as HF's ``TopPLogitsWarper`` (drop tokens whose ascending
      cumulative probability is ``<= 1 - p``; the most probable token always stays). The kept
      set becomes a logit threshold, so tokens tied with the least probable kept one stay too
      (HF keeps an arbitrary subset of such ties).

    Both filters share one descending sort of each row."""
    logits = logits.astype(jnp.float32) / jnp.asarray(temperature, jnp.float32)
    if top_k is None and top_p is None:
        return logits
    vocab = logits.shape[-1]
    rank = jnp.arange(vocab)
    ordered = jnp.flip(jnp.sort(logits, axis=-1), axis=-1)
    if top_k is not None:
        k = jnp.clip(jnp.asarray(top_k, jnp.int32), 1, vocab)
        ordered = jnp.where(rank < k, ordered, -jnp.inf)
    if top_p is not None:
        p = jnp.asarray(top_p, jnp.float32)
        probs = jax.nn.softmax(ordered, axis=-1)
        ascending_cumulative = jnp.flip(jnp.cumsum(jnp.flip(probs, -1), axis=-1), -1)
        drop = (ascending_cumulative <= 1.0 - p) & (rank > 0) & (p < 1.0)
        ordered = jnp.where(drop, -jnp.inf, ordered)
    kept = jnp.isfinite(ordered)  # a prefix of each sorted row
    threshold = jnp.min(jnp.where(kept, ordered, jnp.inf), axis=-1, keepdims=True)
    return jnp.where(logits < threshold, -jnp.inf, logits)


def top_k_filter(logits: Array, k: int | Array) -> Array:
    """Only the top-k filter of :func:`process_logits` (no temperature)."""
    return process_logits(logits, 1.0, top_k=k)


def top_p_filter(logits: Array, p: float | Array) -> Array:
    """Only the nucleus (top-p) filter of :func:`process_logits` (no temperature)."""
    return process_logits(logits, 1.0, top_p=p)


def sample_logits(
    logits: Array,
    key: Array,
    *,
    temperature: float | Array = 1.0,
    top_k: int | Array | None = None,
    top_p: float | Array | None = None,
) -> Array:
    """One token per row of ``logits`` (B, V), drawn from the :func:`process_logits`
    distribution with ``key`` (rows draw independently)."""
    logits = process_logits(logits, temperature, top_k, top_p)
    return jax.random.categorical(key, logits, axis=-1).astype(jnp.int32)


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
    spec = _Spec(model, tuple(methods), int(max_new_tokens), bool(use_cache))
    settings = {
        "greedy": jnp.asarray(greedy),
        "temperature": jnp.asarray(1.0 if greedy else temperature, jnp.float32),
        "top_k": jnp.asarray(_NO_TOP_K if top_k is None else top_k, jnp.int32),
        "top_p": jnp.asarray(1.0 if top_p is None else top_p, jnp.float32),
        "eos_id": jnp.asarray(-1 if eos_id is None else eos_id, jnp.int32),  # -1 never matches
        "pad_id": jnp.asarray(pad_id, jnp.int32),
    }
    return _decode(spec, params, input_ids, attention_mask, settings, rng)


_NO_TOP_K = 2**30  # clipped to the vocabulary: keeps every token


@partial(jax.jit, static_argnums=0)
def _decode(spec: _Spec, params, input_ids, attention_mask, settings, rng) -> Generation:
    model, n = spec.model, spec.max_new_tokens
    pad_id, eos_id = settings["pad_id"], settings["eos_id"]
    batch, prompt_len = input_ids.shape

    def apply(*args, **kwargs):
        with attached(spec.methods):
            return model.apply({"params": params}, *args, **kwargs)

    def pick(logits: Array, step: Array) -> Array:
        def sample():
            return sample_logits(
                logits,
                jax.random.fold_in(rng, step),
                temperature=settings["temperature"],
                top_k=settings["top_k"],
                top_p=settings["top_p"],
            )

        def argmax():
            return jnp.argmax(logits, axis=-1).astype(jnp.int32)

        return jax.lax.cond(settings["greedy"], argmax, sample)

    def record(state, logits):
        step, tokens, done, lengths, cache = state
        token = jnp.where(done, pad_id, pick(logits, step))
        tokens = jax.lax.dynamic_update_slice(tokens, token[:, None], (0, step))
        lengths = lengths + (~done).astype(jnp.int32)
        done = done | (token == eos_id)
        return step + 1, tokens, done, lengths, cache

    tokens = jnp.full((batch, n), pad_id, jnp.int32)
    state = (jnp.int32(0), tokens, jnp.zeros((batch,), bool), jnp.zeros((batch,), jnp.int32))
    if spec.use_cache:
        # Prefill outside the loop (the prompt's shape), then one token per iteration.
        out = apply(input_ids, attention_mask, cache=model.init_cache(batch, prompt_len + n))
        _check_length(out["logits"], prompt_len)
        state = record((*state, out["cache"]), out["logits"][:, -1])

        def next_logits(tokens, step, cache):
            token = jax.lax.dynamic_index_in_dim(tokens, step - 1, axis=1)
            out = apply(token, jnp.ones((batch, 1), jnp.int32), cache=cache)
            _check_length(out["logits"], 1)
            return out["logits"][:, -1], out["cache"]

    else:
        # Every step, the first included, runs the whole fixed-size sequence: one model graph.
        state = (*state, None)
        ids_pad = jnp.concatenate([input_ids, jnp.zeros((batch, n), jnp.int32)], axis=1)

        def next_logits(tokens, step, cache):
            # Slots from ``step`` on are masked and causally after the read position, so they
            # cannot change its logits. Methods may prepend positions: read from the end.
            ids = jax.lax.dynamic_update_slice(ids_pad, tokens, (0, prompt_len))
            filled = (jnp.arange(n) < step).astype(jnp.int32)
            mask = jnp.concatenate([attention_mask, jnp.broadcast_to(filled, (batch, n))], 1)
            logits = apply(ids, mask)["logits"]
            read = logits.shape[1] - n - 1 + step
            return jax.lax.dynamic_index_in_dim(logits, read, axis=1, keepdims=False), None

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
    "sample_logits",
    "top_k_filter",
    "top_p_filter",
]
