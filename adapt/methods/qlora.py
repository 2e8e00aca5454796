"""QLoRA (Dettmers et al. 2023): LoRA on a frozen base whose linear layers are stored in NF4.

The recipe: every linear layer of the blocks (``adapt.methods.ALL_LINEAR``) keeps its kernel as
4-bit NormalFloat with double-quantised block scales (:mod:`adapt.quant.nf4`, bitsandbytes'
format: about 0.516 bytes per weight instead of 2 in bfloat16), is dequantised to the compute
dtype (bfloat16) inside the jitted step, one layer at a time, and gets a LoRA adapter; norms,
embeddings and the output head stay as loaded (float32 by default).

In the parameter tree a quantised ``.../q_proj/kernel`` is replaced by plain arrays
``.../q_proj/kernel_nf4_{codes,absmax,absmax2,offset,shape}`` (see :func:`adapt.quant.nf4.
kernel_leaves`), so partitioning, sharding and checkpoint code that sees nested dicts of arrays
works unchanged; :meth:`QLoRA.rules` labels them frozen. Two steps, in this order:

    qlora = QLoRA(families.get(name).all_linear, rank=8)  # every linear layer of the blocks
    params = qlora.prepare(params)                    # float kernels -> NF4 leaves
    extra = base.init(model, params, [qlora], rng, ids)

Applying QLoRA to a model whose targeted kernels are still float raises (call ``prepare``).
The interceptor never calls the original ``nn.Dense`` on a quantised module (it would look for
the missing ``kernel``): it computes ``x @ dequantize(W) + b`` itself, then adds the adapter.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from adapt.methods.base import MethodError, Rules, compile_targets, module_path
from adapt.methods.lora import LoRA
from adapt.quant import nf4

CODES = f"kernel{nf4.TAG}codes"


def quantize_base(
    params: dict, targets: str | Sequence[str], *, blocksize: int = 64, double_quant: bool = True
) -> dict:
    """NF4-quantise the kernels of the modules whose path full-matches ``targets`` (a regex, or a
    list of module names as in :func:`adapt.methods.base.compile_targets`). Pure."""
    return nf4.quantize_params(
        params, compile_targets(targets), blocksize=blocksize, double_quant=double_quant
    )


def dequantize_base(params: dict, dtype: Any = jnp.float32, blocksize: int = 64) -> dict:
    """Every NF4 kernel back to a float ``kernel`` (the weights the quantised model computes
    with, before the cast to the compute dtype)."""
    return nf4.dequantize_params(params, dtype, blocksize)


class QLoRA(LoRA):
    """LoRA adapters on ``targets`` over NF4 base kernels on ``base_targets`` (default: the same
    modules). ``compute_dtype`` (default bfloat16; ``None`` = the layer's own dtype) is the dtype
    the base kernel is dequantised to and the product computed in; the layer returns its usual
    dtype. ``blocksize``/``double_quant`` choose the storage (bitsandbytes' defaults for QLoRA).
    """

    def __init__(
        self,
        targets: str | Sequence[str],
        rank: int = 8,
        alpha: float = 16.0,
        dropout: float = 0.0,
        *,
        base_targets: str | Sequence[str] | None = None,
        compute_dtype: Any = jnp.bfloat16,
        blocksize: int = 64,
        double_quant: bool = True,
        rslora: bool = False,
        name: str = "lora",
        param_dtype: Any = jnp.float32,
    ) -> None:
        super().__init__(
            targets,
            rank,
            alpha,
            dropout,
            rslora=rslora,
            dora=False,
            name=name,
            param_dtype=param_dtype,
        )
        if blocksize not in nf4.BLOCKSIZES:
            raise MethodError(f"QLoRA blocksize must be one of {nf4.BLOCKSIZES}, got {blocksize!r}")
        self.base_targets = targets if base_targets is None else base_targets
        self.base_pattern = compile_targets(self.base_targets)
        self.compute_dtype = None if compute_dtype is None else jnp.dtype(compute_dtype)
        self.blocksize, self.double_quant = blocksize, bool(double_quant)
        self.quantized: set[str] = set()

    # ------------------------------------------------------------------------ storage
    def prepare(self, params: dict) -> dict:
        """The base parameters with the targeted kernels in NF4 (see :func:`quantize_base`)."""
        return quantize_base(
            params, self.base_targets, blocksize=self.blocksize, double_quant=self.double_quant
        )

    def rules(self) -> Rules:
        """The NF4 leaves are frozen (listed first: first match wins), the adapters train."""
        return [(rf".*/kernel{nf4.TAG}({'|'.join(nf4.PARTS)})", None), *super().rules()]

    def merge(self, params: dict) -> dict:
        """Float32 kernels with the adapters folded in: dequantise, then :meth:`LoRA.merge`."""
        return super().merge(dequantize_base(params, jnp.float32, self.blocksize))

    # ------------------------------------------------------------------------ forward
    def intercept(self, next_fun, args, kwargs, context):
        mod = context.module
        if isinstance(mod, nn.Dense) and context.method_name == "__call__":
            path = module_path(context)
            if mod.has_variable("params", CODES):
                self.quantized.add(path)
                next_fun = lambda inputs, *_a, **_k: self._nf4_dense(mod, path, inputs)
            elif self.base_pattern.fullmatch(path) and mod.has_variable("params", "kernel"):
                raise MethodError(
                    f"QLoRA: the kernel of {path} is not quantised; quantise the base first "
                    "(params = qlora.prepare(params), or quantize_base(params, targets))"
                )
        return super().intercept(next_fun, args, kwargs, context)

    def _nf4_dense(self, mod: nn.Dense, path: str, inputs: jax.Array) -> jax.Array:
        """``inputs @ W + b`` with ``W`` dequantised from the module's NF4 leaves."""
        d_in, d_out = inputs.shape[-1], mod.features
        leaves = {
            f"kernel{nf4.TAG}{part}": mod.get_variable("params", f"kernel{nf4.TAG}{part}")
            for part in nf4.PARTS
            if part != "shape" and mod.has_variable("params", f"kernel{nf4.TAG}{part}")
        }
        try:
            q = nf4.from_leaves(leaves, shape=(d_out, d_in), blocksize=self.blocksize)
        except nf4.QuantizationError as e:
            raise MethodError(f"QLoRA: {path}: {e}") from e
        dtype = self.compute_dtype or mod.dtype or jnp.result_type(inputs.dtype, jnp.float32)
        weight = nf4.dequantize(q, dtype)  # (out, in): contract the inputs with its second axis
        y = jax.lax.dot_general(
            inputs.astype(dtype),
            weight,
            (((inputs.ndim - 1,), (1,)), ((), ())),
            precision=mod.precision,
        )
        if mod.use_bias:
            y = y + mod.get_variable("params", "bias").astype(dtype)
        out_dtype = mod.dtype or jnp.result_type(inputs.dtype, jnp.float32)
        return y.astype(out_dtype)


__all__ = ["QLoRA", "dequantize_base", "quantize_base"]
