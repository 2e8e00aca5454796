"""Third-party references checked on this machine before a test trusts them.

bitsandbytes' CPU ``dequantize_4bit`` (and the ``Linear4bit`` forward built on it) has been seen
to be wrong on some CPUs and shapes (bitsandbytes 0.50.2: off by up to 2.1 on N(0, 1) data for a
(96, 160) tensor, exact for (512, 384)), while its quantisation codes stay right. A test that uses
it as the reference first asks :func:`nf4_dequantize_problem` whether its own round trip is
within NF4's quantisation error; if not, the dependent comparison is skipped with that reason and
the checks that do not depend on it (codes and statistics byte-identical) still run.
"""

from __future__ import annotations

import numpy as np
import pytest

BLOCK = 64
# NF4's widest code gap is 0.3038 (between -1 and -0.696): a value is at most half of it, times
# its block's absmax, from its code; double quantisation stores absmax in 8 bits (<1% error).
NF4_ERROR_BOUND = 0.1519 * 1.02 + 0.01


def nf4_dequantize_problem(x: np.ndarray, back: np.ndarray, who: str) -> str | None:
    """Why ``back`` (a claimed NF4 round trip of ``x``) is not one (None if it is): per block of
    64 values of the row-major flattening, the error must stay within NF4's bound."""
    flat, out = np.asarray(x, np.float32).reshape(-1), np.asarray(back, np.float32).reshape(-1)
    if out.shape != flat.shape or not np.all(np.isfinite(out)):
        return f"{who} returned {out.shape} values (finite: {np.all(np.isfinite(out))})"
    pad = (-len(flat)) % BLOCK
    xs = np.pad(flat, (0, pad)).reshape(-1, BLOCK)
    err = np.abs(np.pad(out, (0, pad)).reshape(-1, BLOCK) - xs)
    absmax = np.abs(xs).max(axis=1, keepdims=True)
    worst = float((err / np.maximum(absmax, 1e-30)).max())
    if worst > NF4_ERROR_BOUND:
        return (
            f"{who} is not an NF4 round trip on this machine: error up to {worst:.3f} x the block "
            f"absmax (max abs error {float(err.max()):.3f}), NF4's bound is {NF4_ERROR_BOUND:.3f}"
        )
    return None


def require(problem: str | None) -> None:
    """Skip the dependent check, saying why, when the reference is wrong here."""
    if problem is not None:
        pytest.skip(f"third-party reference untrusted here: {problem}")


def bnb_dequantize(functional, packed, state, x: np.ndarray) -> np.ndarray:
    """bitsandbytes' dequantisation of ``x``'s quantisation, if trustworthy here; else skip."""
    back = functional.dequantize_4bit(packed, state).float().numpy()
    require(nf4_dequantize_problem(x, back, "bitsandbytes.functional.dequantize_4bit"))
    return back
