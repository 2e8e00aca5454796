"""IA3 (Liu et al. 2022, "(IA)^3"): learned rescaling of keys, values and the FFN intermediate.

Each matched ``nn.Dense`` gets a vector ``ia3_l`` initialised to ones (so the model is unchanged at
init). As in PEFT, an attention projection scales its *output* (``(x W + b) * l``, shape ``out``)
and a feed-forward projection scales its *input* (``(x * l) W + b``, shape ``in``): scaling the
input of the FFN's second linear is scaling the intermediate activation.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from adapt import paths
from adapt.methods.base import (
    DenseMethod,
    MethodError,
    Rules,
    compile_targets,
    family_default,
)


class IA3(DenseMethod):
    name = "ia3"

    def __init__(
        self,
        targets: str | Sequence[str],
        feedforward: str | Sequence[str] | None = None,
        *,
        param_dtype: Any = jnp.float32,
    ) -> None:
        super().__init__(targets)
        self.feedforward = feedforward
        self.ff_pattern = compile_targets(feedforward) if feedforward else None
        self.param_dtype = param_dtype

    @classmethod
    def preset(cls, family: str, **kwargs: Any) -> IA3:
        """PEFT's default targets for ``family`` (its registry record's ``ia3``). PEFT matches
        ``output.dense`` as a suffix, so on encoders it also scales the *input* of the attention
        output projection; the presets do the same so that exported adapters compute the same
        function."""
        targets, ff = family_default(family, "ia3")
        return cls(targets, ff, **kwargs)

    def rules(self) -> Rules:
        return [(r".*/ia3_l", self.name)]

    def wrap(self, mod, path, x, dense):
        if self.ff_pattern is not None and self.ff_pattern.fullmatch(path):
            if not isinstance(mod, nn.Dense | nn.Conv):  # input features on the kernel's axis -2
                raise MethodError(
                    f"IA3 feed-forward scaling on {path}: {type(mod).__name__} is not supported "
                    "(nn.Dense and nn.Conv are); scale its output instead"
                )
            scale = mod.param("ia3_l", nn.initializers.ones, (x.shape[-1],), self.param_dtype)
            return dense(x * scale.astype(x.dtype))
        if isinstance(mod, nn.Einsum):  # the output's last axis must be the kernel's last
            _, rhs, out = mod.einsum_str.replace(" ", "").replace("->", ",").split(",")
            if out[-1] != rhs[-1]:
                raise MethodError(
                    f"IA3 on {path}: the einsum {mod.einsum_str!r} does not end on the kernel's "
                    "last axis, so the scale could not be folded into it"
                )
        y = dense(x)
        scale = mod.param("ia3_l", nn.initializers.ones, (y.shape[-1],), self.param_dtype)
        return y * scale.astype(y.dtype)

    def merge(self, params: dict) -> dict:
        """Fold the scales into the kernels (and biases for output scaling)."""

        flat = dict(paths.flatten(params))
        for p in [p for p in flat if p.endswith("/ia3_l")]:
            mod = p[: -len("/ia3_l")]
            scale = flat.pop(p)
            kernel = flat[f"{mod}/kernel"]
            if self.ff_pattern is not None and self.ff_pattern.fullmatch(mod):
                flat[f"{mod}/kernel"] = (kernel * scale[:, None]).astype(kernel.dtype)
            else:  # the last axis of every supported kernel is the output's last
                flat[f"{mod}/kernel"] = (kernel * scale).astype(kernel.dtype)
                if f"{mod}/bias" in flat:
                    flat[f"{mod}/bias"] = (flat[f"{mod}/bias"] * scale).astype(kernel.dtype)
        return paths.unflatten(flat)
