"""Optimizers per parameter group, learning-rate schedules and layer-wise LR decay.

``build(labels, groups)`` turns the trainable label tree from :mod:`adapt.partition` into one
``optax.multi_transform`` with an optimizer per label, so a new head, LoRA factors and bias terms
can each have their own learning rate, schedule and weight decay. It only ever sees trainable
leaves: frozen leaves get no optimizer state at all.

Layer-wise LR decay (ELECTRA/BEiT style) multiplies each leaf's update by
``decay ** (num_layers + 1 - depth)`` where depth is 0 for embeddings, ``i + 1`` for layer ``i``
and ``num_layers + 1`` for everything above the last layer (head, pooler, final norm).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import optax

from adapt import paths
from adapt.models import families

# ----------------------------------------------------------------------------------- schedules
SCHEDULES = ("constant", "warmup_cosine", "warmup_linear", "slanted_triangular")


def schedule(
    name: str,
    peak: float,
    total_steps: int,
    *,
    warmup_steps: int = 0,
    end_fraction: float = 0.0,
    cut_fraction: float = 0.1,
    ratio: float = 32.0,
) -> optax.Schedule:
    """A learning-rate schedule by name.

    - ``constant``: ``peak`` throughout (after an optional linear warmup).
    - ``warmup_cosine`` / ``warmup_linear``: linear warmup to ``peak``, then cosine / linear decay
      to ``end_fraction * peak`` at ``total_steps``.
    - ``slanted_triangular``: ULMFiT (Howard & Ruder 2018): a short linear rise over
      ``cut_fraction`` of training, then a long linear fall; the lowest LR is ``peak / ratio``.
    """
    if total_steps <= 0:
        raise ValueError(f"total_steps must be positive, got {total_steps}")
    if not 0 <= warmup_steps <= total_steps:
        raise ValueError(f"warmup_steps={warmup_steps} must lie in [0, total_steps={total_steps}]")
    end = peak * end_fraction
    if name == "constant":
        if warmup_steps:
            return optax.join_schedules(
                [optax.linear_schedule(0.0, peak, warmup_steps), optax.constant_schedule(peak)],
                [warmup_steps],
            )
        return optax.constant_schedule(peak)
    if name == "warmup_cosine":
        return optax.warmup_cosine_decay_schedule(0.0, peak, warmup_steps, total_steps, end)
    if name == "warmup_linear":
        return optax.join_schedules(
            [
                optax.linear_schedule(0.0, peak, max(warmup_steps, 1)),
                optax.linear_schedule(peak, end, max(total_steps - warmup_steps, 1)),
            ],
            [warmup_steps],
        )
    if name == "slanted_triangular":
        cut = max(int(math.floor(total_steps * cut_fraction)), 1)

        def stlr(step):
            t = jnp.asarray(step, jnp.float32)
            p = jnp.where(t < cut, t / cut, 1.0 - (t - cut) / (cut * (1.0 / cut_fraction - 1.0)))
            p = jnp.clip(p, 0.0, 1.0)
            return peak * (1.0 + p * (ratio - 1.0)) / ratio

        return stlr
    raise ValueError(f"unknown schedule {name!r}; choose from {SCHEDULES}")


# ------------------------------------------------------------------------- layer-wise LR decay
def layer_depth(path: str, num_layers: int) -> int:
    """0 for embeddings, ``i + 1`` inside layer ``i``, ``num_layers + 1`` above the last layer."""
    i = families.layer_index(path)  # each family's record says how its blocks are named
    if i is not None:
        if i >= num_layers:
            raise ValueError(f"{path}: layer {i} but the model has num_layers={num_layers}")
        return i + 1
    if families.is_embedding(path):
        return 0
    return num_layers + 1


def layerwise_multipliers(
    params: Mapping[str, Any], num_layers: int, decay: float
) -> dict[str, Any]:
    """A tree like ``params`` of per-leaf LR multipliers ``decay ** (num_layers + 1 - depth)``."""
    if not 0 < decay <= 1:
        raise ValueError(f"layer-wise LR decay must lie in (0, 1], got {decay}")
    return paths.map_with_path(
        lambda p, _: float(decay ** (num_layers + 1 - layer_depth(p, num_layers))), params
    )


def scale_by_tree(multipliers: Mapping[str, Any]) -> optax.GradientTransformation:
    """Multiply each update by a fixed per-leaf constant (used for layer-wise LR decay)."""

    def init(_):
        return optax.EmptyState()

    def update(updates, state, params=None):
        del params
        return jax.tree.map(lambda u, m: u * jnp.asarray(m, u.dtype), updates, multipliers), state

    return optax.GradientTransformation(init, update)


# ----------------------------------------------------------------------------- group optimizers
_GROUP_KEYS = {
    "optimizer",
    "lr",
    "schedule",
    "warmup_steps",
    "end_fraction",
    "cut_fraction",
    "weight_decay",
    "decay_mask",
    "b1",
    "b2",
    "eps",
    "momentum",
    "clip_norm",
}
_NO_DECAY = re.compile(r".*(bias|scale|LayerNorm.*|layernorm.*|norm.*|embedding)$")


def _decay_mask(pattern: str | None) -> Callable[[Any], Any] | None:
    regex = _NO_DECAY if pattern is None else re.compile(pattern)

    def mask(tree):
        # jax.tree_util (not paths.map_with_path): inside multi_transform, other groups' leaves
        # arrive as optax.MaskedNode, an empty pytree that must stay empty in the mask.
        return jax.tree_util.tree_map_with_path(
            lambda kp, _: not regex.fullmatch("/".join(str(k.key) for k in kp)), tree
        )

    return mask


def group_optimizer(spec: Mapping[str, Any], total_steps: int) -> optax.GradientTransformation:
    """One group's optimizer from a plain dict (a config block).

    Keys: ``optimizer`` (adamw | adam | sgd), ``lr``, ``schedule`` (see :func:`schedule`),
    ``warmup_steps``, ``end_fraction``, ``cut_fraction``, ``weight_decay`` (decoupled; skipped for
    bias/norm/embedding leaves unless ``decay_mask`` gives a regex of leaves *not* to decay),
    ``b1``, ``b2``, ``eps``, ``momentum``, ``clip_norm`` (per group global norm).
    """
    unknown = set(spec) - _GROUP_KEYS
    if unknown:
        raise ValueError(f"unknown optimizer keys {sorted(unknown)}; known: {sorted(_GROUP_KEYS)}")
    name = spec.get("optimizer", "adamw")
    lr = spec.get("lr")
    if lr is None or lr < 0:
        raise ValueError(f"optimizer group needs a non-negative 'lr', got {lr!r}")
    sched = schedule(
        spec.get("schedule", "constant"),
        lr,
        total_steps,
        warmup_steps=spec.get("warmup_steps", 0),
        end_fraction=spec.get("end_fraction", 0.0),
        cut_fraction=spec.get("cut_fraction", 0.1),
    )
    parts: list[optax.GradientTransformation] = []
    if spec.get("clip_norm"):
        parts.append(optax.clip_by_global_norm(spec["clip_norm"]))
    if name in ("adamw", "adam"):
        parts.append(
            optax.scale_by_adam(
                b1=spec.get("b1", 0.9), b2=spec.get("b2", 0.999), eps=spec.get("eps", 1e-8)
            )
        )
    elif name == "sgd":
        if spec.get("momentum"):
            parts.append(optax.trace(decay=spec["momentum"]))
    else:
        raise ValueError(f"unknown optimizer {name!r}; choose adamw, adam or sgd")
    wd = spec.get("weight_decay", 0.0)
    if wd and name != "adam":
        parts.append(optax.add_decayed_weights(wd, mask=_decay_mask(spec.get("decay_mask"))))
    parts.append(optax.scale_by_learning_rate(sched))
    return optax.chain(*parts)


def build(
    trainable_labels: Mapping[str, Any],
    groups: Mapping[str, Mapping[str, Any]],
    total_steps: int,
    *,
    multipliers: Mapping[str, Any] | None = None,
) -> optax.GradientTransformation:
    """``optax.multi_transform`` over the trainable leaves, one optimizer per label.

    ``multipliers``: an optional tree like the trainable params (e.g. from
    :func:`layerwise_multipliers`) applied to the final updates, i.e. per-leaf LR factors.
    """
    used = set(paths.flatten(trainable_labels).values())
    missing = sorted(used - set(groups))
    if missing:
        raise ValueError(
            f"no optimizer group for labels {missing}; configure one per label (have {sorted(groups)})"
        )
    txs = {lab: group_optimizer(spec, total_steps) for lab, spec in groups.items() if lab in used}
    tx = optax.multi_transform(txs, trainable_labels)
    if multipliers is not None:
        tx = optax.chain(tx, scale_by_tree(multipliers))
    return tx
