"""Bottleneck adapters: Houlsby et al. 2019 (after attention and after the FFN) and Pfeiffer et al.
2021 (after the FFN only).

An adapter is ``h + up(act(down(h)))`` applied to the output of a matched ``nn.Dense`` (the
attention output projection or the FFN output projection), before the residual connection and
layer norm that follow it in the block. ``up`` starts at zero, so the block is the identity at
init (Houlsby's near-identity initialisation, made exact); ``down`` uses a small normal init.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from adapt.methods.base import DenseMethod, MethodError, Rules, family_default
from adapt.models.layers import activation


class BottleneckAdapter(DenseMethod):
    name = "adapter"

    def __init__(
        self,
        targets: str,
        bottleneck: int = 64,
        *,
        act: str = "relu",
        init_scale: float = 1e-3,
        param_dtype: Any = jnp.float32,
    ) -> None:
        super().__init__(targets)
        if bottleneck <= 0:
            raise MethodError(f"adapter bottleneck must be positive, got {bottleneck}")
        self.bottleneck, self.act, self.init_scale = bottleneck, activation(act), init_scale
        self.param_dtype = param_dtype

    @classmethod
    def houlsby(cls, family: str, **kwargs: Any) -> BottleneckAdapter:
        """After the attention and the FFN output projections (the registry's ``adapters``)."""
        attn, ffn = family_default(family, "adapters")
        return cls(f"{attn}|{ffn}", **kwargs)

    @classmethod
    def pfeiffer(cls, family: str, **kwargs: Any) -> BottleneckAdapter:
        """After the FFN output projection only."""
        return cls(family_default(family, "adapters")[1], **kwargs)

    def rules(self) -> Rules:
        return [(r".*/adapter_(down|up)_(kernel|bias)", self.name)]

    def wrap(self, mod, path, x, dense):
        y = dense(x)
        d, r, pd = y.shape[-1], self.bottleneck, self.param_dtype  # on the output's last axis
        normal = nn.initializers.normal(self.init_scale)
        w_down = mod.param("adapter_down_kernel", normal, (d, r), pd)
        b_down = mod.param("adapter_down_bias", nn.initializers.zeros, (r,), pd)
        w_up = mod.param("adapter_up_kernel", nn.initializers.zeros, (r, d), pd)
        b_up = mod.param("adapter_up_bias", nn.initializers.zeros, (d,), pd)
        dt = y.dtype
        h = self.act(y @ w_down.astype(dt) + b_down.astype(dt))
        return y + (h @ w_up.astype(dt) + b_up.astype(dt))
