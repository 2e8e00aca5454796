"""EWC and L2-SP in the harness: a penalty towards the starting weights added to the training loss.

    config.regularizer = dict(
        kind="ewc" | "l2sp",
        strength=1e4,          # EWC's lambda / L2-SP's alpha: penalty = strength/2 * sum ...
        fisher_examples=256,   # EWC: examples of the source task for the diagonal Fisher
        fisher_data=dict(...), # EWC, optional: a data section whose *train* split gives them
        fisher_batch_size=8,   # EWC, optional: examples per per-example-gradient batch
    )

The anchor is the starting value of the shared (backbone) leaves: the model as loaded, without
the task head, which is new for this task and has nothing to stay close to (Li et al. 2018).
L2-SP penalises ``strength/2 * ||theta - theta_0||^2`` over them; EWC (Kirkpatrick et al. 2017)
weights each coordinate by the diagonal Fisher of the *source* task, which is what the anchor was
trained for, so EWC needs ``config.source_task``: the Fisher is computed once, at the start, on
``fisher_examples`` examples (of ``fisher_data``'s train split, or else of the source eval set)
with the frozen source head (:mod:`adapt.harness.source_task`).

Only trainable leaves that also exist in the anchor are penalised, per training stage. The anchor
(and the Fisher) are the step's *penalty inputs* (:func:`adapt.step.train_step`), placed on the
mesh like the leaves they mirror: not trainable, no optimizer state, not constants baked into the
compiled step. The
penalty is logged as the train metric ``penalty``; the logged ``loss`` includes it.

Two interactions with the optimizer matter when choosing ``strength``. Adam is invariant to the
scale of each coordinate's gradient, so once the penalty dominates the task gradient a larger
strength changes nothing (smoke run: EWC at 1e12 and 1e18 ended equally far from the anchor,
to 7 digits); the useful
range is where the two are comparable. And a global-norm clip (``clip_norm``) on the penalised
group lets a large penalty set the norm: every gradient is scaled down with it, the task
gradient of weakly constrained leaves (small Fisher) vanishes, and those leaves coast on Adam's
momentum, *farther* from the anchor than without the penalty (measured on the smoke run: EWC at
1e12 with clipping 1.15x the unregularised distance of the encoder, without clipping 0.036x).
Regularised runs should therefore not clip the penalised group (configs/text/forgetting.py
does not).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from adapt import partition, paths
from adapt.config import ConfigError, RunConfig
from adapt.data import eval_batches, select
from adapt.harness.data_setup import load_split
from adapt.harness.model_setup import Model, head_pattern
from adapt.harness.source_task import data_section
from adapt.methods.regularizers import diagonal_fisher, ewc_penalty, l2sp_penalty
from adapt.train import Trainer, place_frozen

KINDS = ("ewc", "l2sp")
EWC_ONLY = ("fisher_examples", "fisher_data", "fisher_batch_size")


def check(config: RunConfig) -> None:
    """Static checks of ``config.regularizer`` (before anything is loaded or written)."""
    section = config.regularizer
    if section is None:
        return
    problems = []
    kind = section.kind
    if kind not in KINDS:
        problems.append(f"regularizer.kind {kind!r} is not one of {list(KINDS)}")
    strength = section.strength
    if (
        isinstance(strength, bool)
        or not isinstance(strength, int | float)
        or not math.isfinite(strength)
        or not strength >= 0
    ):
        problems.append(f"regularizer.strength must be a finite number >= 0, got {strength!r}")
    if kind == "l2sp":
        defaults = type(section)()
        given = [k for k in EWC_ONLY if getattr(section, k) != getattr(defaults, k)]
        if given:
            problems.append(f"regularizer {given} only apply to kind 'ewc'")
    if kind == "ewc":
        for key in ("fisher_examples", "fisher_batch_size"):
            n = getattr(section, key)
            if isinstance(n, bool) or not isinstance(n, int) or n < 1:
                problems.append(f"regularizer.{key} must be a positive integer, got {n!r}")
        if config.source_task is None:
            problems.append(
                "regularizer kind 'ewc' needs a source task (config.source_task with the source "
                "export's path and data): the Fisher is computed on the source task with its head"
            )
        fisher_data = section.fisher_data
        if fisher_data is not None and fisher_data.get("kind") not in ("text", "image"):
            problems.append("regularizer.fisher_data must be a text or image data section")
    if problems:
        raise ConfigError("regularizer problems:\n  " + "\n  ".join(problems))


@dataclass
class Regularizer:
    """The penalty and its frozen inputs (host arrays, flat paths)."""

    kind: str
    strength: float
    anchor: dict[str, Any]  # flat path -> starting value of a backbone leaf
    fisher: dict[str, Any] | None  # flat path -> diagonal Fisher (EWC)

    @classmethod
    def create(cls, config: Any, model: Model, stages: list, source: Any, *, seed: int):
        """The regularizer of ``config`` for ``model`` (methods attached, at its start), or None.

        ``stages`` are the run's partitions: a regularizer that penalises no trainable leaf in
        any stage (e.g. L2-SP with LoRA, whose trainable leaves are all new) is an error.
        """
        section = config.regularizer
        if section is None:
            return None
        head = head_pattern(model, config.method)
        anchor = {
            p: v
            for p, v in paths.flatten(model.base_params).items()
            if not (head and re.fullmatch(head, p))
        }
        penalised = set()
        for rules in stages:
            flat_labels = paths.flatten(partition.label(model.params, rules))
            penalised |= {p for p, lab in flat_labels.items() if lab is not None and p in anchor}
        kind = section.kind
        if not penalised:
            raise ConfigError(
                f"regularizer {kind!r} penalises nothing: no trainable leaf of method "
                f"{config.method.name!r} is a backbone leaf of the starting "
                "model (new heads and method parameters have no anchor)"
            )
        anchor = {p: v for p, v in anchor.items() if p in penalised}
        fisher = None
        if kind == "ewc":
            fisher = source_fisher(config, model, source, sorted(penalised), seed=seed)
        return cls(kind, float(section.strength), anchor, fisher)

    def penalty(self, params: dict, inputs: dict) -> jax.Array:
        """``strength/2 * sum [F *] (theta - anchor)^2`` over the leaves of ``inputs["anchor"]``."""
        anchor = paths.flatten(inputs.get("anchor", {}))
        if not anchor:
            return jnp.zeros((), jnp.float32)
        flat = paths.flatten(params)
        current = paths.unflatten({p: flat[p] for p in anchor})
        if self.kind == "l2sp":
            return l2sp_penalty(current, paths.unflatten(anchor), self.strength, 0.0)
        return ewc_penalty(current, paths.unflatten(anchor), inputs["fisher"], self.strength)

    def inputs_for(self, trainable: dict, mesh: Any, rules: Any) -> dict:
        """This stage's frozen inputs: the anchor (and Fisher) of its trainable leaves, on the
        mesh with the shardings of the leaves they mirror."""
        wanted = [p for p in paths.flatten(trainable) if p in self.anchor]
        inputs = {"anchor": paths.unflatten({p: self.anchor[p] for p in wanted})}
        if self.fisher is not None:
            inputs["fisher"] = paths.unflatten({p: self.fisher[p] for p in wanted})
        return {k: place_frozen(v, mesh, rules) for k, v in inputs.items()}

    def trainer(self, base: Trainer, trainable: dict) -> Trainer:
        """``base`` with the penalty added to its loss and this stage's anchor (and Fisher) as
        the step's penalty inputs: their own argument of the jitted step, not in ``frozen``."""
        return base.with_penalty(self.penalty, self.inputs_for(trainable, base.mesh, base.rules))


def source_fisher(
    config: Any, model: Model, source: Any, wanted: list[str], *, seed: int
) -> dict[str, np.ndarray]:
    """Diagonal empirical Fisher of the source task at the starting weights, for ``wanted``
    leaves: mean over examples of ``(d log p(y|x) / d theta)^2`` with the frozen source head."""
    section = config.regularizer
    examples, batch_size = section.fisher_examples, section.fisher_batch_size
    fisher_data = section.fisher_data
    if fisher_data is not None:
        data_cfg = data_section(config, fisher_data)
        data_cfg["max_examples"] = examples
        data_cfg.pop("examples_per_class", None)
        data = load_split(data_cfg, "train", seed=seed, model_path=config.model.path)
        if data.label_names != source.data.label_names:
            raise ConfigError(
                f"regularizer.fisher_data labels {data.label_names[:10]} differ from the source "
                f"task's {source.data.label_names[:10]}; give the same label_names"
            )
    else:
        data = select(source.data, max_examples=examples, seed=seed)
    flat = paths.flatten(source.params(model.params))
    wrt = paths.unflatten({p: flat[p] for p in wanted})
    rest = paths.unflatten({p: v for p, v in flat.items() if p not in set(wanted)})
    forward, model_state = source.forward, model.model_state

    def log_likelihood(wrt, example):
        batch = jax.tree.map(lambda x: x[None], example)
        out, _ = forward(partition.merge(wrt, rest), model_state, batch, False, None)
        logp = jax.nn.log_softmax(out["logits"][0].astype(jnp.float32))
        return logp[example["labels"]]

    def batches():
        for batch in eval_batches(data, batch_size):
            real = batch.pop("weights") > 0
            yield {k: v[real] for k, v in batch.items()}

    fisher = diagonal_fisher(log_likelihood, wrt, batches())
    return {p: np.asarray(v, np.float32) for p, v in paths.flatten(fisher).items()}


__all__ = ["KINDS", "Regularizer", "check", "source_fisher"]
