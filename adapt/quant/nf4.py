"""4-bit NormalFloat (NF4) with double quantisation, byte-compatible with bitsandbytes.

QLoRA (Dettmers et al. 2023) stores a frozen weight as 4-bit indices into a 16-value code book
(quantiles of N(0, 1), scaled to [-1, 1]) plus one float32 absolute maximum per block of 64
values; *double quantisation* then stores those absmax values themselves in 8 bits. We follow
``bitsandbytes.functional.quantize_4bit(w, quant_type="nf4", blocksize=64,
compress_statistics=True)`` (bitsandbytes 0.50.2 on CPU) bit for bit, so a checkpoint quantised
here can be read by bitsandbytes and vice versa:

- **Flattening**: blocks run over the tensor in row-major order. For a PyTorch ``Linear`` weight
  ``(out, in)`` that is the order bitsandbytes sees; a Flax kernel is ``(in, out)``, so
  :func:`quantize_kernel` transposes first and :func:`dequantize_kernel` transposes back.
- **4-bit codes**: ``scaled = clip(x * (1 / absmax), -1, 1)`` (a reciprocal, then a multiply,
  as bitsandbytes does; its partial last block divides instead), then the index of the code
  whose *bucket* holds ``scaled``: the number of code-book midpoints strictly below it, so a
  value exactly on a midpoint rounds to the lower code. Two codes per byte, the first element
  in the high nibble; an odd element count is padded with the code of 0.0 (7).
- **Double quantisation**: ``offset = mean(absmax)``; ``absmax - offset`` is quantised in blocks
  of 256 to 8 bits with bitsandbytes' signed dynamic code map (:func:`dynamic_code`, reproduced
  here value for value) and a float32 absmax per 256-block. Bitsandbytes' CPU kernel does not
  search the map directly: it looks the value up in a 65536-entry table over [-1, 1]
  (``index = int((v + 1) * 0.5 * 65535 + 0.5)``, each entry the code nearest its grid point,
  ties to the lower), which maps values within ~3e-5 of zero to +-2.1e-5 rather than to the
  tiny codes; we reproduce that table, so the bytes agree.
- **Dequantisation**: ``absmax = map[absmax_q] * absmax2 + offset``, then
  ``code[q] * absmax`` in float32, cast to the requested dtype.

Documented differences: bitsandbytes takes ``mean(absmax)`` with torch's float32 reduction,
whose summation order depends on the CPU's vector width; we sum with a compensated reduction
(the correctly rounded sum, on any backend). The two offsets agree to 1-2 ulp, which can move
an 8-bit absmax code only for a value within a few ulp of a rounding threshold. When
dequantising, XLA contracts ``map[q] * absmax2 + offset`` into one FMA where bitsandbytes
rounds twice, so weights can differ by an ulp. An all-zero trailing partial block stores
absmax 0 where bitsandbytes stores 1e-38; both dequantise to zeros.

Any element count works (a partial last block, as in bitsandbytes); only the block size is
restricted to bitsandbytes' choices.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from adapt import paths
from adapt.errors import AdaptError

Array = jax.Array

# NF4 code book: bitsandbytes' ``get_4bit_type("nf4")`` (create_normal_map(offset=0.9677083)),
# as the float32 values it stores.
NF4_CODE = np.array(
    [
        -1.0,
        -0.6961928009986877,
        -0.5250730514526367,
        -0.39491748809814453,
        -0.28444138169288635,
        -0.18477343022823334,
        -0.09105003625154495,
        0.0,
        0.07958029955625534,
        0.16093020141124725,
        0.24611230194568634,
        0.33791524171829224,
        0.44070982933044434,
        0.5626170039176941,
        0.7229568362236023,
        1.0,
    ],
    np.float32,
)
# Bucket boundaries of the 4-bit quantiser: midpoints of neighbouring codes, in float32.
NF4_BOUNDS = ((NF4_CODE[:-1] + NF4_CODE[1:]) / np.float32(2)).astype(np.float32)

BLOCKSIZES = (32, 64, 128, 256, 512, 1024, 2048, 4096)  # bitsandbytes' 4-bit block sizes
DQ_BLOCKSIZE = 256  # block size bitsandbytes uses to double-quantise the absmax values
_LUT_SIZE = 65536  # grid of bitsandbytes' CPU 8-bit quantiser

# Leaf names under a quantised Dense module: ``kernel`` becomes ``kernel_nf4_<part>``.
PARTS = ("codes", "absmax", "absmax2", "offset", "shape")
TAG = "_nf4_"


class QuantizationError(AdaptError, ValueError):
    """A tensor or parameter tree that cannot be NF4-quantised as asked."""


# ------------------------------------------------------------------------------- code maps
def _torch_linspace_f32(start: float, end: float, steps: int) -> np.ndarray:
    """``torch.linspace(start, end, steps, dtype=float32)`` on CPU: a float32 step, then
    ``start + step * i`` (first half) / ``end - step * (steps - 1 - i)`` (second half), each
    rounded once (torch fuses the multiply-add)."""
    s0, e0 = np.float32(start), np.float32(end)
    step = float(np.float32((e0 - s0) / np.float32(steps - 1)))
    i = np.arange(steps)
    low = float(s0) + step * i
    high = float(e0) - step * (steps - 1 - i)
    return np.where(i < steps // 2, low, high).astype(np.float32)


def dynamic_code(
    signed: bool = True, max_exponent_bits: int = 7, total_bits: int = 8
) -> np.ndarray:
    """bitsandbytes' ``create_dynamic_map`` (the 8-bit map of double quantisation), as float32.

    Dynamic exponent + linear fraction (Dettmers 2015): for exponent ``i`` the fraction takes
    the midpoints of an evenly spaced grid on [0.1, 1], scaled by ``10 ** (i - 6)``; then 0 and 1.
    """
    data: list[np.float32] = []
    non_sign_bits = total_bits - 1
    additional_items = 2 ** (non_sign_bits - max_exponent_bits) - 1

    def add(items: int, i: int) -> None:
        bounds = _torch_linspace_f32(0.1, 1.0, items)
        means = ((bounds[:-1] + bounds[1:]) / np.float32(2)).astype(np.float32)
        scale = np.float32(10 ** (-(max_exponent_bits - 1) + i))
        data.extend(scale * means)
        if signed:
            data.extend(-scale * means)

    for i in range(max_exponent_bits):
        exponent = i + non_sign_bits - max_exponent_bits
        add(int(2**exponent + 1 if signed else 2 ** (exponent + 1) + 1), i)
    if additional_items > 0:
        add(additional_items + 1, max_exponent_bits - 1)
    data += [np.float32(0.0), np.float32(1.0)]
    if len(data) != 2**total_bits:
        raise ValueError(f"dynamic map has {len(data)} values, expected {2**total_bits}")
    return np.sort(np.array(data, np.float32))


DYNAMIC_CODE = dynamic_code(signed=True)


def _lookup_table(code: np.ndarray) -> np.ndarray:
    """bitsandbytes' CPU quantiser table: for each of 65536 grid points of [-1, 1], the index of
    the nearest code (the number of code midpoints strictly below the grid point)."""
    mids = (np.float32(0.5) * (code[:-1] + code[1:])).astype(np.float32)
    grid = np.arange(_LUT_SIZE).astype(np.float32)
    values = (np.float32(-1.0) + (np.float32(2.0) * grid) / np.float32(_LUT_SIZE - 1)).astype(
        np.float32
    )
    return np.searchsorted(mids, values, side="left").astype(np.uint8)


DYNAMIC_LUT = _lookup_table(DYNAMIC_CODE)


# ---------------------------------------------------------------------------- the tensor type
@struct.dataclass
class NF4Tensor:
    """A quantised tensor: a pytree of arrays plus static metadata.

    ``codes``: uint8 ``((n + 1) // 2,)``, two 4-bit codes per byte (first in the high nibble);
    ``absmax``: one scale per block of ``blocksize`` values, uint8 codes of the dynamic map when
    double-quantised (``absmax2``: float32 per 256 blocks, ``offset``: float32 scalar), float32
    otherwise (``absmax2``/``offset`` None). ``shape``/``dtype`` describe the original tensor
    (row-major; for a Flax kernel that is the transposed, PyTorch-order weight).
    """

    codes: Array
    absmax: Array
    absmax2: Array | None
    offset: Array | None
    shape: tuple[int, ...] = struct.field(pytree_node=False)
    dtype: str = struct.field(pytree_node=False, default="float32")
    blocksize: int = struct.field(pytree_node=False, default=64)

    @property
    def double_quant(self) -> bool:
        return self.absmax2 is not None

    @property
    def size(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        """Storage in bytes (codes and statistics; the static metadata is free)."""
        arrays = (self.codes, self.absmax, self.absmax2, self.offset)
        return sum(
            int(np.prod(np.shape(a))) * np.dtype(a.dtype).itemsize for a in arrays if a is not None
        )


def _check_blocksize(blocksize: int) -> None:
    if blocksize not in BLOCKSIZES:
        raise QuantizationError(
            f"blocksize must be one of {BLOCKSIZES} (bitsandbytes'), got {blocksize!r}"
        )


def _check_input(x: Any) -> None:
    dtype = jnp.dtype(x.dtype)
    if dtype not in (jnp.dtype(jnp.float32), jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16)):
        raise QuantizationError(f"NF4 quantises float32/bfloat16/float16 tensors, got {dtype}")
    if x.ndim == 0 or x.size == 0:
        raise QuantizationError(f"cannot quantise a tensor of shape {tuple(x.shape)}")


# ----------------------------------------------------------------------------- arithmetic
def _two_sum(a: tuple[Array, Array], b: tuple[Array, Array]) -> tuple[Array, Array]:
    """Combine two (sum, error) pairs: ``t = s1 + s2`` plus its exact rounding error (TwoSum)
    added to the carried errors."""
    (s1, e1), (s2, e2) = a, b
    t = s1 + s2
    b_virtual = t - s1
    rounding = (s1 - (t - b_virtual)) + (s2 - b_virtual)
    return t, e1 + e2 + rounding


def _accurate_sum(x: Array) -> Array:
    """The float32 sum of ``x`` (1-D), correctly rounded in practice: one XLA reduction over
    (sum, error) pairs whose rounding errors are summed alongside and added back at the end.
    Deterministic whatever order the backend reduces in, unlike a plain ``jnp.sum``."""
    x = x.astype(jnp.float32)
    zero = jnp.float32(0)
    total, error = jax.lax.reduce((x, jnp.zeros_like(x)), (zero, zero), _two_sum, (0,))
    return total + error


def _blocks(flat: Array, blocksize: int) -> Array:
    n = flat.shape[0]
    nblocks = -(-n // blocksize)
    return jnp.pad(flat, (0, nblocks * blocksize - n)).reshape(nblocks, blocksize)


@partial(jax.jit, static_argnames=("blocksize",))
def quantize_blockwise_8bit(x: Array, blocksize: int = DQ_BLOCKSIZE) -> tuple[Array, Array]:
    """8-bit blockwise quantisation with the signed dynamic map, as bitsandbytes' CPU
    ``quantize_blockwise``: returns ``(uint8 codes like x.reshape(-1), float32 absmax per
    block)``. A block whose absmax is 0 gets code 0 (it dequantises to 0 all the same)."""
    flat = jnp.asarray(x, jnp.float32).reshape(-1)
    blocks = _blocks(flat, blocksize)
    absmax = jnp.max(jnp.abs(blocks), axis=1)
    inv = 1.0 / jnp.where(absmax > 0, absmax, 1.0)
    v = jnp.clip(blocks * inv[:, None], -1.0, 1.0)
    index = ((v + 1.0) * 0.5 * float(_LUT_SIZE - 1) + 0.5).astype(jnp.int32)
    q = jnp.where(absmax[:, None] > 0, jnp.asarray(DYNAMIC_LUT)[index], jnp.uint8(0))
    return q.reshape(-1)[: flat.shape[0]], absmax


def dequantize_blockwise_8bit(q: Array, absmax: Array, blocksize: int = DQ_BLOCKSIZE) -> Array:
    """Inverse of :func:`quantize_blockwise_8bit` (float32, flat)."""
    n = q.shape[0]
    scale = jnp.repeat(absmax.astype(jnp.float32), blocksize)[:n]
    return jnp.asarray(DYNAMIC_CODE)[q] * scale


def double_quantize(absmax: Array, offset: Array | None = None) -> tuple[Array, Array, Array]:
    """``(absmax_q uint8, absmax2 float32, offset float32)``: the absmax values minus their
    mean, 8-bit quantised in blocks of 256. ``offset`` may be given (e.g. to reproduce another
    implementation's statistics exactly)."""
    absmax = jnp.asarray(absmax, jnp.float32)
    if offset is None:
        # torch's mean: the float32 sum divided by the count. The barrier hides the constant
        # count from XLA's simplifier, which would turn the division into a multiplication by
        # 1/count (another rounding, which XLA then contracts with the subtraction below into
        # an FMA).
        count = jax.lax.optimization_barrier(jnp.float32(absmax.shape[0]))
        offset = _accurate_sum(absmax) / count
    offset = jnp.asarray(offset, jnp.float32)
    q, absmax2 = quantize_blockwise_8bit(absmax - offset, DQ_BLOCKSIZE)
    return q, absmax2, offset


def _nf4_codes(blocks: Array, absmax: Array, n: int) -> Array:
    """4-bit codes (uint8 0..15) of the float32 ``blocks`` (nblocks, blocksize)."""
    blocksize = blocks.shape[1]
    divisor = jnp.where(absmax > 0, absmax, 1.0)
    scaled = blocks * (1.0 / divisor)[:, None]
    if n % blocksize:  # bitsandbytes divides (rather than multiplies) in the partial block
        # XLA rewrites a division by a broadcast scalar into a multiplication by its
        # reciprocal; the barrier keeps it a true division.
        den = jax.lax.optimization_barrier(jnp.broadcast_to(divisor[-1], (blocksize,)))
        scaled = scaled.at[-1].set(blocks[-1] / den)
    scaled = jnp.clip(scaled, -1.0, 1.0)
    q = jnp.zeros(scaled.shape, jnp.uint8)
    for bound in NF4_BOUNDS:  # number of midpoints strictly below: ties go to the lower code
        q = q + (scaled > bound).astype(jnp.uint8)
    return q.reshape(-1)


@partial(jax.jit, static_argnames=("blocksize", "double_quant"))
def _quantize(x: Array, blocksize: int, double_quant: bool) -> NF4Tensor:
    flat = x.reshape(-1).astype(jnp.float32)
    n = flat.shape[0]
    blocks = _blocks(flat, blocksize)
    absmax = jnp.max(jnp.abs(blocks), axis=1)  # zero padding cannot raise a block's absmax
    q = _nf4_codes(blocks, absmax, n)[: n + n % 2]  # an odd count is padded with 0.0's code
    pairs = q.reshape(-1, 2)
    codes = (pairs[:, 0] << 4) | pairs[:, 1]
    if double_quant:
        absmax, absmax2, offset = double_quantize(absmax)
    else:
        absmax2 = offset = None
    return NF4Tensor(
        codes, absmax, absmax2, offset, tuple(x.shape), jnp.dtype(x.dtype).name, blocksize
    )


def quantize(x: Array, blocksize: int = 64, double_quant: bool = True) -> NF4Tensor:
    """NF4-quantise ``x`` (row-major blocks of ``blocksize``), double-quantising the absmax
    values unless ``double_quant=False``. Jitted (one compilation per shape)."""
    _check_blocksize(blocksize)
    _check_input(x)
    return _quantize(jnp.asarray(x), blocksize, double_quant)


@partial(jax.jit, static_argnames=("dtype",))
def _dequantize(q: NF4Tensor, dtype: str) -> Array:
    n, blocksize = q.size, q.blocksize
    nblocks = -(-n // blocksize)
    if q.double_quant:
        absmax = dequantize_blockwise_8bit(q.absmax, q.absmax2) + q.offset
    else:
        absmax = q.absmax.astype(jnp.float32)
    pairs = jnp.stack([q.codes >> 4, q.codes & 0xF], axis=-1).reshape(-1)[:n]
    values = jnp.asarray(NF4_CODE)[pairs]
    out = (_blocks(values, blocksize) * absmax[:nblocks, None]).reshape(-1)[:n]
    return out.reshape(q.shape).astype(dtype)


def dequantize(q: NF4Tensor, dtype: Any = None) -> Array:
    """The float tensor ``q`` stands for, in ``dtype`` (default: the original dtype).
    Computed in float32 and cast, as bitsandbytes does. Jitted; usable inside a jitted step."""
    return _dequantize(q, jnp.dtype(q.dtype if dtype is None else dtype).name)


def quantize_kernel(kernel: Array, blocksize: int = 64, double_quant: bool = True) -> NF4Tensor:
    """Quantise a Flax ``(in, out)`` kernel as bitsandbytes quantises the same layer's PyTorch
    ``(out, in)`` weight: the returned tensor's shape is ``(out, in)``."""
    kernel = jnp.asarray(kernel)
    if kernel.ndim != 2:
        raise QuantizationError(
            f"expected a 2-D Dense kernel (in, out), got shape {tuple(kernel.shape)}"
        )
    return quantize(kernel.T, blocksize, double_quant)


def dequantize_kernel(q: NF4Tensor, dtype: Any = None) -> Array:
    """The Flax ``(in, out)`` kernel of a tensor made by :func:`quantize_kernel`."""
    return dequantize(q, dtype).T


# ------------------------------------------------------------------------- parameter trees
def kernel_leaves(q: NF4Tensor, prefix: str = "kernel") -> dict[str, Array]:
    """The leaves that replace ``prefix`` in a Dense module's parameters: plain arrays named
    ``{prefix}_nf4_{codes,absmax,absmax2,offset,shape}`` (``shape``: int32, the quantised
    tensor's ``(out, in)``, so a tree can be dequantised without the model)."""
    leaves = {
        f"{prefix}{TAG}codes": q.codes,
        f"{prefix}{TAG}absmax": q.absmax,
        f"{prefix}{TAG}shape": np.asarray(q.shape, np.int32),
    }
    if q.double_quant:
        leaves[f"{prefix}{TAG}absmax2"] = q.absmax2
        leaves[f"{prefix}{TAG}offset"] = q.offset
    return leaves


def from_leaves(
    leaves: Mapping[str, Any],
    shape: tuple[int, ...] | None = None,
    blocksize: int = 64,
    prefix: str = "kernel",
) -> NF4Tensor:
    """An :class:`NF4Tensor` from a module's ``{prefix}_nf4_*`` leaves. ``shape`` (static) is
    required under ``jit``, where the ``shape`` leaf is traced; it is checked against the
    stored arrays' sizes."""
    get = lambda part: leaves.get(f"{prefix}{TAG}{part}")
    codes, absmax = get("codes"), get("absmax")
    if codes is None or absmax is None:
        raise QuantizationError(f"no {prefix}{TAG}codes/absmax leaves among {sorted(leaves)}")
    if shape is None:
        shape = tuple(int(s) for s in np.asarray(get("shape")))
    n = math.prod(shape)
    want = ((n + 1) // 2, -(-n // blocksize))
    if (codes.shape[0], absmax.shape[0]) != want:
        raise QuantizationError(
            f"NF4 leaves hold {codes.shape[0]} code bytes and {absmax.shape[0]} block scales, "
            f"but a {shape} tensor in blocks of {blocksize} needs {want[0]} and {want[1]}"
        )
    return NF4Tensor(
        codes, absmax, get("absmax2"), get("offset"), tuple(shape), "float32", blocksize
    )


def _kernel_modules(flat: Mapping[str, Any]) -> list[str]:
    return [p[: -len("/kernel")] for p in flat if p.endswith("/kernel")]


def quantize_params(
    params: Mapping[str, Any],
    targets: str | re.Pattern,
    *,
    blocksize: int = 64,
    double_quant: bool = True,
) -> dict:
    """Replace the ``kernel`` of every module whose path full-matches ``targets`` by its NF4
    leaves (:func:`kernel_leaves`); everything else is returned unchanged. Raises if nothing
    matches, listing the modules that have kernels."""
    pattern = re.compile(targets) if isinstance(targets, str) else targets
    flat = dict(paths.flatten(params))
    modules = _kernel_modules(flat)
    chosen = [m for m in modules if pattern.fullmatch(m)]
    if not chosen:
        raise QuantizationError(
            f"quantisation targets {pattern.pattern!r} match no module with a kernel. "
            f"Modules with kernels:{paths.shorten_list(modules, 60)}"
        )
    for module in chosen:
        kernel = flat.pop(f"{module}/kernel")
        try:
            q = quantize_kernel(kernel, blocksize, double_quant)
        except QuantizationError as e:
            raise QuantizationError(f"{module}/kernel: {e}") from e
        flat.update({f"{module}/{k}": v for k, v in kernel_leaves(q).items()})
    return paths.unflatten(flat)


def quantized_modules(params: Mapping[str, Any]) -> list[str]:
    """Paths of the modules whose kernel is held as NF4."""
    suffix = f"/kernel{TAG}codes"
    return [p[: -len(suffix)] for p in paths.flatten(params) if p.endswith(suffix)]


def dequantize_params(
    params: Mapping[str, Any], dtype: Any = jnp.float32, blocksize: int = 64
) -> dict:
    """Inverse of :func:`quantize_params`: every NF4 kernel back to a float ``kernel``."""
    flat = dict(paths.flatten(params))
    for module in quantized_modules(params):
        prefix = f"{module}/kernel{TAG}"
        leaves = {
            f"kernel{TAG}{part}": flat.pop(prefix + part) for part in PARTS if prefix + part in flat
        }
        q = from_leaves(leaves, blocksize=blocksize)
        flat[f"{module}/kernel"] = dequantize_kernel(q, dtype)
    return paths.unflatten(flat)


def storage(params: Mapping[str, Any]) -> dict[str, float]:
    """Bytes held by the NF4 leaves of ``params`` per parameter they stand for:
    ``{"bytes", "params", "bytes_per_param", "modules"}`` (the int32 ``shape`` leaves count)."""
    flat = paths.flatten(params)
    total_bytes = total_params = 0
    modules = quantized_modules(params)
    for module in modules:
        prefix = f"{module}/kernel{TAG}"
        for part in PARTS:
            leaf = flat.get(prefix + part)
            if leaf is not None:
                total_bytes += int(np.prod(np.shape(leaf))) * np.dtype(leaf.dtype).itemsize
        total_params += int(np.prod(np.asarray(flat[prefix + "shape"])))
    return {
        "bytes": total_bytes,
        "params": total_params,
        "bytes_per_param": total_bytes / max(total_params, 1),
        "modules": len(modules),
    }


__all__ = [
    "BLOCKSIZES",
    "DQ_BLOCKSIZE",
    "DYNAMIC_CODE",
    "NF4Tensor",
    "NF4_BOUNDS",
    "NF4_CODE",
    "QuantizationError",
    "dequantize",
    "dequantize_blockwise_8bit",
    "dequantize_kernel",
    "dequantize_params",
    "double_quantize",
    "dynamic_code",
    "from_leaves",
    "kernel_leaves",
    "quantize",
    "quantize_blockwise_8bit",
    "quantize_kernel",
    "quantize_params",
    "quantized_modules",
    "storage",
]
