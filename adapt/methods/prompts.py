"""Soft prompts and prefixes: prompt tuning, prefix tuning and P-tuning v2.

- **Prompt tuning** (Lester et al. 2021) prepends ``num_tokens`` learned vectors to the input
  embeddings through every model's ``extend_inputs`` extension point, and extends the attention
  mask to cover them. Outputs then hold ``num_tokens`` extra leading positions (as in PEFT).
  On encoders that add position and token-type embeddings before a LayerNorm, PEFT instead
  prepends the prompt as virtual *word* embeddings, before those and the LayerNorm (a different
  function); :class:`VirtualTokenPromptTuning` computes that one, so that it can be exchanged
  with PEFT (:mod:`adapt.peft_format`). On decoders both layouts coincide.
- **Prefix tuning** (Li & Liang 2021) gives every attention layer ``num_tokens`` learned keys and
  values. While training they are produced by a reparameterisation MLP from a shared embedding
  (``prefix_embedding -> tanh(W1) -> per-layer projection``), which the paper found necessary for
  stable optimisation; :meth:`PrefixTuning.fold` evaluates the MLP once and keeps only the
  per-layer keys and values. By default the prefix enters through a zero-initialised gate
  (the zero-init attention gating of Zhang et al. 2023): ``attn(q, K, V) + tanh(g) *
  attn(q, K_p, V_p)`` with ``g = 0``, so the model is exactly unchanged at init; ``gated=False``
  concatenates the prefix to the keys and values as in the original paper.
- **P-tuning v2** (Liu et al. 2022) is deep prompting: per-layer prefixes without the MLP,
  concatenated to keys and values (``PrefixTuning(reparam=False, gated=False)``).

The MLP shares parameters across layers, so it lives in the scope of the model that owns the
embeddings (created in ``extend_inputs``); its hidden activations are handed to the attention
layers within the same forward trace.
"""

from __future__ import annotations

import re
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from adapt import paths
from adapt.methods.base import Method, MethodError, Rules, module_path
from adapt.models.layers import dot_product_attention

_LAYER = re.compile(r"(?:layer|layers)_(\d+)")


def vocab_rows(mod: nn.Module, num: int, key: jax.Array, hidden: int) -> jax.Array | None:
    """``num`` random rows of the largest embedding table of width ``hidden`` among ``mod``'s
    parameters, or None if it has no such table.

    Lester et al. found prompts initialised from real token embeddings train better than random
    ones; every prompt method here (the one that enters through ``extend_inputs`` and the one
    that acts as virtual word embeddings) initialises its prompt the same way through this.
    """
    tables = [
        v
        for p, v in paths.flatten(mod.variables.get("params", {})).items()
        if p.endswith("embedding") and v.ndim == 2 and v.shape[1] == hidden
    ]
    if not tables:
        return None
    table = max(tables, key=lambda t: t.shape[0])
    idx = jax.random.randint(key, (num,), 0, table.shape[0])
    return table[idx]


class PromptTuning(Method):
    name = "prompt"

    def __init__(
        self, num_tokens: int = 20, *, init: str = "vocab", param_dtype: Any = jnp.float32
    ):
        super().__init__()
        if num_tokens <= 0:
            raise MethodError(f"num_tokens must be positive, got {num_tokens}")
        if init not in ("vocab", "normal"):
            raise MethodError(f"prompt init must be 'vocab' or 'normal', got {init!r}")
        self.num_tokens, self.init_from, self.param_dtype = num_tokens, init, param_dtype

    def describe_targets(self) -> str:
        return "(the model's extend_inputs extension point)"

    def rules(self) -> Rules:
        return [(r"(.*/)?prompt_embeddings", self.name)]

    def intercept(self, next_fun, args, kwargs, context):
        if context.method_name != "extend_inputs":
            return next_fun(*args, **kwargs)
        mod = context.module
        self.matched.add(module_path(context) or "<root>")
        embeddings, mask = next_fun(*args, **kwargs)
        batch, _, hidden = embeddings.shape

        def init(key, shape, dtype):
            rows = vocab_rows(mod, shape[0], key, hidden) if self.init_from == "vocab" else None
            if rows is None:
                return 0.02 * jax.random.normal(key, shape, dtype)
            return rows.astype(dtype)

        prompt = mod.scope.param(
            "prompt_embeddings", init, (self.num_tokens, hidden), self.param_dtype
        )
        prompt = jnp.broadcast_to(prompt.astype(embeddings.dtype), (batch, *prompt.shape))
        ones = jnp.ones((batch, self.num_tokens), mask.dtype)
        return jnp.concatenate([prompt, embeddings], 1), jnp.concatenate([ones, mask], 1)


class VirtualTokenPromptTuning(PromptTuning):
    """Prompt tuning as PEFT does it on encoders with token-type embeddings: ``num_tokens`` learned vectors take
    the place of word embeddings in front of the input, so they get position (the first
    ``num_tokens`` ones, real tokens shifting right) and token-type-0 embeddings and go through the
    embedding LayerNorm and dropout like real tokens. The leaf is ``.../embeddings/
    prompt_embeddings``; outputs hold ``num_tokens`` extra leading positions.

    It exists because :class:`PromptTuning` (after the LayerNorm, positions unchanged) computes a
    different function on such encoders than PEFT's prompt tuning, so only this one can be exported to
    and imported from PEFT there (:mod:`adapt.peft_format`)."""

    def describe_targets(self) -> str:
        return "(embeddings marked virtual_token_site: word embeddings of virtual tokens)"

    def intercept(self, next_fun, args, kwargs, context):
        mod = context.module
        if context.method_name == "extend_inputs":
            embeddings, mask = next_fun(*args, **kwargs)
            if embeddings.shape[1] == mask.shape[1] + self.num_tokens:  # our virtual tokens
                ones = jnp.ones((mask.shape[0], self.num_tokens), mask.dtype)
                mask = jnp.concatenate([ones, mask], 1)
            return embeddings, mask
        # The site is marked by the model (an embeddings module taking input, token-type and
        # position ids before its LayerNorm), so this method names no model family.
        if context.method_name != "__call__" or not getattr(mod, "virtual_token_site", False):
            return next_fun(*args, **kwargs)
        scope = module_path(context)
        self.matched.add(scope)
        names = ("input_ids", "token_type_ids", "position_ids", "deterministic")
        call = dict(zip(names, args, strict=False))
        call.update(kwargs)
        batch, n = call["input_ids"].shape[0], self.num_tokens
        positions = call["position_ids"]
        virtual = jnp.arange(n, dtype=positions.dtype) + mod.config.position_offset
        call["position_ids"] = jnp.concatenate(
            [jnp.broadcast_to(virtual, (batch, n)), positions + n], 1
        )
        types = call["token_type_ids"]
        call["token_type_ids"] = jnp.concatenate([jnp.zeros((batch, n), types.dtype), types], 1)

        def init_prompt(key, shape, dtype):
            rows = vocab_rows(mod, shape[0], key, shape[1]) if self.init_from == "vocab" else None
            return (
                0.02 * jax.random.normal(key, shape, dtype) if rows is None else rows.astype(dtype)
            )

        hidden = mod.config.hidden_size
        prompt = mod.scope.param("prompt_embeddings", init_prompt, (n, hidden), self.param_dtype)
        words = f"{scope}/word_embeddings"

        def prepend(inner_next, inner_args, inner_kwargs, inner_context):
            out = inner_next(*inner_args, **inner_kwargs)
            if inner_context.method_name == "__call__" and module_path(inner_context) == words:
                virtual_rows = jnp.broadcast_to(prompt.astype(out.dtype), (out.shape[0], n, hidden))
                return jnp.concatenate([virtual_rows, out], 1)
            return out

        with nn.intercept_methods(prepend):
            return next_fun(**call)


class PrefixTuning(Method):
    name = "prefix"

    def __init__(
        self,
        num_tokens: int = 10,
        *,
        reparam: bool = True,
        mlp_hidden: int = 512,
        gated: bool = True,
        param_dtype: Any = jnp.float32,
    ) -> None:
        super().__init__()
        if num_tokens <= 0 or mlp_hidden <= 0:
            raise MethodError(
                f"num_tokens and mlp_hidden must be positive ({num_tokens}, {mlp_hidden})"
            )
        self.num_tokens, self.reparam, self.mlp_hidden = num_tokens, reparam, mlp_hidden
        self.gated, self.param_dtype = gated, param_dtype
        self._shared: jax.Array | None = None  # MLP hidden state, valid within one forward trace

    def describe_targets(self) -> str:
        return "(attention layers' extend_kv / sdpa extension points)"

    def rules(self) -> Rules:
        return [(r"(.*/)?prefix_\w+", self.name)]

    # The shared part of the reparameterisation, computed once per forward in the model scope.
    def _shared_hidden(self, mod: nn.Module, hidden: int) -> jax.Array:
        pd = self.param_dtype
        emb = mod.scope.param(
            "prefix_embedding", nn.initializers.normal(1.0), (self.num_tokens, hidden), pd
        )
        w1 = mod.scope.param(
            "prefix_mlp_kernel", nn.initializers.lecun_normal(), (hidden, self.mlp_hidden), pd
        )
        b1 = mod.scope.param("prefix_mlp_bias", nn.initializers.zeros, (self.mlp_hidden,), pd)
        return jnp.tanh(emb @ w1 + b1)

    def _layer_prefix(
        self, mod: nn.Module, kv_heads: int, head_dim: int
    ) -> tuple[jax.Array, jax.Array]:
        pd, p = self.param_dtype, self.num_tokens
        if not self.reparam:
            init = nn.initializers.normal(0.02)
            return (
                mod.scope.param("prefix_key", init, (p, kv_heads, head_dim), pd),
                mod.scope.param("prefix_value", init, (p, kv_heads, head_dim), pd),
            )
        if self._shared is None:
            raise MethodError(
                "prefix reparameterisation needs the model's extend_inputs extension point to run "
                "before its attention layers; use PrefixTuning(reparam=False) for this model"
            )
        shape = (2, kv_heads, head_dim)
        w = mod.scope.param(
            "prefix_proj_kernel", nn.initializers.lecun_normal(), (self.mlp_hidden, *shape), pd
        )
        b = mod.scope.param("prefix_proj_bias", nn.initializers.zeros, shape, pd)
        kv = jnp.einsum("ph,htkd->ptkd", self._shared, w) + b
        return kv[:, 0], kv[:, 1]

    def intercept(self, next_fun, args, kwargs, context):
        name, mod = context.method_name, context.module
        if name == "extend_inputs" and self.reparam:
            out = next_fun(*args, **kwargs)
            self._shared = self._shared_hidden(mod, out[0].shape[-1])
            return out
        if name == "extend_kv" and not self.gated:
            key, value, mask = next_fun(*args, **kwargs)
            self.matched.add(module_path(context))
            pk, pv = self._layer_prefix(mod, key.shape[2], key.shape[3])
            batch = key.shape[0]
            key = jnp.concatenate(
                [jnp.broadcast_to(pk.astype(key.dtype), (batch, *pk.shape)), key], 1
            )
            value = jnp.concatenate(
                [jnp.broadcast_to(pv.astype(value.dtype), (batch, *pv.shape)), value], 1
            )
            mask = jnp.concatenate([jnp.ones((batch, self.num_tokens), bool), mask.astype(bool)], 1)
            return key, value, mask
        if name == "sdpa" and self.gated:
            out = next_fun(*args, **kwargs)
            self.matched.add(module_path(context))
            query, key = args[0], args[1]
            pk, pv = self._layer_prefix(mod, key.shape[2], key.shape[3])
            batch = query.shape[0]
            pk = jnp.broadcast_to(pk.astype(query.dtype), (batch, *pk.shape))
            pv = jnp.broadcast_to(pv.astype(query.dtype), (batch, *pv.shape))
            gate = mod.scope.param(
                "prefix_gate", nn.initializers.zeros, (query.shape[2],), self.param_dtype
            )
            extra = dot_product_attention(query, pk, pv, None, dtype=out.dtype)
            return out + jnp.tanh(gate.astype(out.dtype))[None, None, :, None] * extra
        return next_fun(*args, **kwargs)

    def fold(self, params: dict) -> dict:
        """Evaluate the reparameterisation once: keep per-layer ``prefix_key``/``prefix_value``
        (and gates), drop the MLP. The result serves with ``PrefixTuning(reparam=False)`` and
        the same ``gated`` setting."""
        flat = dict(paths.flatten(params))
        shared = [p for p in flat if p.endswith("/prefix_embedding") or p == "prefix_embedding"]
        if not shared:
            raise MethodError("no prefix_embedding found: nothing to fold (already folded?)")
        scope = shared[0][: -len("prefix_embedding")]
        emb = flat.pop(f"{scope}prefix_embedding")
        w1, b1 = flat.pop(f"{scope}prefix_mlp_kernel"), flat.pop(f"{scope}prefix_mlp_bias")
        hidden = jnp.tanh(emb @ w1 + b1)
        for p in [p for p in flat if p.endswith("/prefix_proj_kernel")]:
            mod = p[: -len("/prefix_proj_kernel")]
            w, b = flat.pop(p), flat.pop(f"{mod}/prefix_proj_bias")
            kv = jnp.einsum("ph,htkd->ptkd", hidden, w) + b
            flat[f"{mod}/prefix_key"], flat[f"{mod}/prefix_value"] = kv[:, 0], kv[:, 1]
        return paths.unflatten(flat)


def PTuningV2(num_tokens: int = 10, **kwargs: Any) -> PrefixTuning:  # noqa: N802 - a preset
    """Deep prompt tuning: per-layer prefixes, no reparameterisation, concatenated to k/v."""
    return PrefixTuning(num_tokens, reparam=False, gated=False, **kwargs)
