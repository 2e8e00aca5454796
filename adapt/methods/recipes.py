"""Recipes that are only a choice of what trains: linear probe, full and partial fine-tuning,
BitFit, gradual unfreezing, LP-FT — plus WiSE-FT, which is arithmetic on two weight sets.

Each returns partition rules (see :mod:`adapt.partition`); the task head is always trainable under
the label ``"head"``. ``head`` is a regex over parameter paths (``classifier/.*``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

import jax.numpy as jnp

from adapt import paths
from adapt.optim import layer_depth
from adapt.partition import Rules


def linear_probe(head: str) -> Rules:
    """Train only the head on frozen features (Kornblith et al. 2019's baseline)."""
    return [(head, "head"), (".*", None)]


def full_finetune(head: str) -> Rules:
    """Everything trains; the head keeps its own group (it usually wants a larger LR)."""
    return [(head, "head"), (".*", "backbone")]


def partial_finetune(head: str, trainable: str) -> Rules:
    """Train the head and the leaves matching ``trainable`` (e.g. the top layers)."""
    return [(head, "head"), (trainable, "backbone"), (".*", None)]


def bitfit(head: str) -> Rules:
    """Train only bias terms (Ben Zaken et al. 2022) and the head."""
    return [(head, "head"), (r".*/bias", "bias"), (".*", None)]


def unfreezing_stages(
    names: Sequence[str], head: str, num_layers: int, group_size: int = 1
) -> list[Rules]:
    """Gradual unfreezing (ULMFiT): stage 0 trains the head; each later stage also unfreezes the
    next ``group_size`` layers from the top; the last stage adds the embeddings (everything).

    Each stage is one partition, hence one compilation of the train step.
    """
    if group_size <= 0:
        raise ValueError(f"group_size must be positive, got {group_size}")
    stages: list[Rules] = [linear_probe(head)]
    depths = {n: layer_depth(n, num_layers) for n in names}
    for top in range(num_layers, 0, -group_size):
        lowest = max(top - group_size + 1, 1)
        unfrozen = sorted(
            {n for n, d in depths.items() if lowest <= d <= num_layers or d == num_layers + 1}
        )
        stages.append(
            [(head, "head")] + [(_exact(n), "backbone") for n in unfrozen] + [(".*", None)]
        )
    stages.append(full_finetune(head))
    return _drop_idle(stages, names)


def _exact(name: str) -> str:
    return re.escape(name)


def _drop_idle(stages: list[Rules], names: Sequence[str]) -> list[Rules]:
    """Remove rules that match nothing (e.g. a head-level rule duplicated by an exact one)."""
    out = []
    for rules in stages:
        kept, claimed = [], set()
        for pattern, lab in rules:
            hits = {n for n in names if n not in claimed and re.fullmatch(pattern, n)}
            if hits:
                kept.append((pattern, lab))
                claimed |= hits
        out.append(kept)
    return out


def lp_ft(head: str) -> list[Rules]:
    """LP-FT (Kumar et al. 2022): linear probe first, then fine-tune everything from the probed
    head, which distorts pretrained features less than fine-tuning with a random head."""
    return [linear_probe(head), full_finetune(head)]


def wise_ft(zero_shot: Mapping[str, Any], finetuned: Mapping[str, Any], alpha: float) -> dict:
    """WiSE-FT (Wortsman et al. 2022): ``(1 - alpha) * theta_0 + alpha * theta_1`` leaf by leaf.

    Leaves only in ``finetuned`` (a new head) are taken from it unchanged.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"WiSE-FT alpha must lie in [0, 1], got {alpha}")
    flat0, flat1 = paths.flatten(zero_shot), paths.flatten(finetuned)
    out = {}
    for p, v1 in flat1.items():
        if p in flat0:
            v0 = flat0[p]
            out[p] = (
                (1 - alpha) * jnp.asarray(v0, jnp.float32) + alpha * jnp.asarray(v1, jnp.float32)
            ).astype(jnp.asarray(v1).dtype)
        else:
            out[p] = v1
    return paths.unflatten(out)


def wise_ft_curve(
    zero_shot: Mapping[str, Any], finetuned: Mapping[str, Any], alphas: Sequence[float], evaluate
) -> list[tuple[float, Any]]:
    """``[(alpha, evaluate(params_alpha)), ...]`` for each alpha."""
    return [(a, evaluate(wise_ft(zero_shot, finetuned, a))) for a in alphas]


__all__ = [
    "bitfit",
    "full_finetune",
    "linear_probe",
    "lp_ft",
    "partial_finetune",
    "unfreezing_stages",
    "wise_ft",
    "wise_ft_curve",
]
