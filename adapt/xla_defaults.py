"""XLA flags adapt sets for its own entry points, because the defaults are slow for our models.

Measured with ``benchmarks/vs_pytorch.py`` (all-MiniLM-L6-v2, batch 32 x 128, 2-core AMD EPYC,
jax/jaxlib 0.10.2): XLA:CPU's YNNPACK library fusions, on by default in this jaxlib, make the
transformer's forward pass 1.7x slower (1.78 s -> 1.03 s per batch once they are off), full
fine-tuning 1.14x slower and LoRA 1.17x slower. Other flags tried on the same run and left
alone: oneDNN dot fusion (forward 1.56 s, and slower than this flag alone when combined with
it), ``--xla_cpu_use_onednn`` (1.73 s), XNNPACK dot fusion (1.71 s), YNNPACK dot+eltwise+reduce
(2.47 s), ``--xla_cpu_enable_fast_math`` (1.74 s).

The flags only touch the CPU backend, so they are harmless on GPU and TPU. They are applied by
:func:`apply` from the ``experiments/`` and ``benchmarks/`` entry points (importing ``adapt``
stays side-effect free); a library user opts in by calling it first thing. A flag the user has
already put in ``XLA_FLAGS`` wins, and ``ADAPT_XLA_DEFAULTS=0`` turns the whole thing off.
"""

from __future__ import annotations

import os

from absl import logging

# flag name -> value adapt wants. An empty list for the fusion type means "no YNNPACK fusions".
CPU_FLAGS: dict[str, str] = {"--xla_cpu_experimental_ynn_fusion_type": ""}

OPT_OUT_ENV = "ADAPT_XLA_DEFAULTS"


def _backend_initialised() -> bool:
    """True when JAX has already created its backends, after which XLA_FLAGS is not re-read."""
    try:
        from jax._src import xla_bridge  # private, hence the guard
    except ImportError:  # pragma: no cover - future JAX layout
        return False
    probe = getattr(xla_bridge, "backends_are_initialized", None)
    return bool(probe and probe())


def apply(environ: os._Environ[str] | dict[str, str] | None = None) -> list[str]:
    """Append adapt's XLA defaults to ``XLA_FLAGS``; returns the flags it added.

    Must run before JAX's first computation (XLA reads the variable once, when it creates
    its backends); called later it only warns, since changing the variable would then
    silently do nothing.
    """
    env = os.environ if environ is None else environ
    if env.get(OPT_OUT_ENV, "1") == "0":
        return []
    current = env.get("XLA_FLAGS", "")
    present = {token.split("=", 1)[0] for token in current.split()}
    added = [f"{name}={value}" for name, value in CPU_FLAGS.items() if name not in present]
    if not added:
        return []
    if environ is None and _backend_initialised():
        logging.warning(
            "adapt.xla_defaults.apply() ran after JAX initialised its backends, so %s cannot "
            "take effect; call it before the first JAX computation.",
            " ".join(added),
        )
        return []
    env["XLA_FLAGS"] = " ".join([current, *added]).strip()
    logging.info("XLA_FLAGS += %s (set %s=0 to keep XLA's own defaults)", added, OPT_OUT_ENV)
    return added
