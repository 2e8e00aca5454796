"""Rematerialisation (gradient checkpointing) per layer: the policies and how a step asks for it.

Why per layer: ``jax.checkpoint`` around the whole loss saves nothing. The backward pass then
recomputes the entire forward and keeps all of its residuals at once, so the peak is that of
the step without remat (benchmarks/scale_plan.py measured it 3% *higher*). Memory falls only
when each decoder layer is checkpointed: the forward keeps a layer's input and nothing inside
it, and the backward recomputes one layer at a time, so activation memory goes from ``L`` layers'
residuals to ``L`` layer inputs plus one layer's residuals.

How a policy reaches the layers: a model with a per-layer hook (adapt's decoders, e.g. built
with ``remat="full"``) wraps its decoder layer class with
:func:`checkpointed`, taking the policy from its own ``remat`` attribute or, when that is
``None``, from the innermost :func:`scope`. :class:`adapt.train.Trainer` traces its step inside
``scope(remat)``, so ``Trainer(remat=...)`` (the harness's ``train.remat``) needs no change to
how models are built. The model marks the scope as *seen*; a Trainer whose scope no model saw
(the encoders and the CNNs have no hook) refuses the option rather than silently ignoring it.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
from collections.abc import Iterator

import flax.linen as nn
import jax

POLICIES = {
    "none": None,  # no rematerialisation
    "full": jax.checkpoint_policies.nothing_saveable,  # keep only each layer's input
    "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,  # keep matmul outputs too
}


@dataclasses.dataclass
class Scope:
    """The policy a traced step asks for; ``seen`` once a model's per-layer hook read it."""

    policy: str
    seen: bool = False


_SCOPE: contextvars.ContextVar[Scope | None] = contextvars.ContextVar("adapt_remat", default=None)


def check(policy: str) -> str:
    if policy not in POLICIES:
        raise ValueError(f"remat must be one of {sorted(POLICIES)}, got {policy!r}")
    return policy


@contextlib.contextmanager
def scope(policy: str) -> Iterator[Scope]:
    """Models traced inside checkpoint their layers with ``policy`` (unless told otherwise)."""
    current = Scope(check(policy))
    token = _SCOPE.set(current)
    try:
        yield current
    finally:
        _SCOPE.reset(token)


def layer_policy(explicit: str | None) -> str:
    """The policy a model's layers use: ``explicit`` (the module attribute) if given, else the
    innermost :func:`scope`'s (marking it seen), else ``"none"``."""
    current = _SCOPE.get()
    if current is not None:
        current.seen = True
    if explicit is not None:
        return check(explicit)
    return current.policy if current is not None else "none"


def checkpointed(layer: type[nn.Module], policy: str) -> type[nn.Module]:
    """``layer`` wrapped in ``nn.remat`` with the named policy (``layer`` itself for "none").
    ``nn.remat`` keeps the module's name, so parameter paths do not change."""
    if check(policy) == "none":
        return layer
    return nn.remat(layer, policy=POLICIES[policy], prevent_cse=True)


__all__ = ["POLICIES", "Scope", "check", "checkpointed", "layer_policy", "scope"]
