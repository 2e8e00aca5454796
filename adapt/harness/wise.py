"""The WiSE-FT accuracy curve of a run: its final weights interpolated towards its start.

    config.wise_ft = dict(alphas=[0.0, 0.1, ..., 1.0])

At the end of training each ``alpha`` is evaluated on the eval set with
``wise_ft(theta_0, theta_final, alpha) = (1 - alpha) * theta_0 + alpha * theta_final`` (Wortsman
et al. 2022); ``results["wise_ft"] = [{"alpha": a, **metrics}, ...]``.

``theta_0`` is the parameter tree at the start of the run's *last* stage:

- single-stage methods (``full``, ``bitfit``, ...): the pretrained encoder with the freshly
  initialised head, so small alphas shrink a trained head towards a random one;
- ``lp_ft``: the linear-probed model (pretrained encoder, trained head) -- the sensible stand-in
  for the zero-shot model of the paper, which a classifier without a zero-shot head lacks;
- ``gradual_unfreezing``: the model before its last unfreezing stage.

Leaves are interpolated one by one, so for adapter methods (LoRA, ...) the adapter parameters
are interpolated, not the merged weight deltas. Only floating-point leaves are mixed; integer
leaves (quantised codes) are taken from the final model.

``theta_0`` is a host copy, outside the train state. A run resumed inside its last stage rebuilds
it: from the config for a single-stage run (the start is deterministic), from
``wise_ft_theta0.safetensors`` in the workdir, written when a later stage starts, otherwise.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from adapt import paths
from adapt.config import ConfigError, RunConfig
from adapt.convert.safetensors_io import SafetensorsReader, write_file
from adapt.harness.evaluation import evaluate
from adapt.methods.recipes import wise_ft

THETA0_FILE = "wise_ft_theta0.safetensors"


def check(config: RunConfig) -> None:
    """Static checks of ``config.wise_ft``."""
    section = config.wise_ft
    if section is None:
        return
    alphas = section.alphas
    if not alphas or isinstance(alphas, str) or not hasattr(alphas, "__iter__"):
        raise ConfigError(f"wise_ft.alphas must be a non-empty list of numbers, got {alphas!r}")
    bad = [
        a
        for a in alphas
        if isinstance(a, bool) or not isinstance(a, int | float) or not 0.0 <= a <= 1.0
    ]
    if bad:
        raise ConfigError(f"wise_ft.alphas must lie in [0, 1]; got {bad} in {list(alphas)}")


def _host_copy(tree: dict) -> dict[str, np.ndarray]:
    """Flat host copies of the floating-point leaves (copies: later steps may donate buffers)."""
    flat = {p: np.array(jax.device_get(v)) for p, v in paths.flatten(tree).items()}
    return {p: v for p, v in flat.items() if jnp.issubdtype(v.dtype, jnp.inexact)}


class WiseCurve:
    """Records ``theta_0`` when the last stage starts; evaluates the curve at the end."""

    def __init__(self, alphas: list[float], workdir: Path, num_stages: int, initial: dict) -> None:
        self.alphas = [float(a) for a in alphas]
        self.path = Path(workdir) / THETA0_FILE
        self.num_stages = num_stages
        self.initial = initial  # the run's start (immutable arrays, never donated)
        self.theta_0: dict[str, np.ndarray] | None = None

    @classmethod
    def create(
        cls, config: RunConfig, workdir: Path, num_stages: int, initial: dict
    ) -> WiseCurve | None:
        section = config.wise_ft
        if section is None:
            return None
        return cls(list(section.alphas), workdir, num_stages, initial)

    def stage_start(self, stage_index: int, resumed: bool, params: dict) -> None:
        """Call when stage ``stage_index`` starts (``resumed``: from a checkpoint inside it) with
        the model's parameters at that point. Records theta_0 at a fresh start of the last stage
        (and saves it when that is not the run's start, which a resumed run cannot rebuild)."""
        if stage_index != self.num_stages - 1 or resumed:
            return
        self.theta_0 = _host_copy(params)
        if stage_index > 0 and jax.process_index() == 0:
            write_file(self.path, self.theta_0, {"format": "adapt-wise-ft-theta0"})

    def _resolve_theta_0(self) -> dict[str, np.ndarray]:
        if self.theta_0 is not None:
            return self.theta_0
        if self.num_stages == 1:  # resumed inside (or after) the only stage: theta_0 = the start
            return _host_copy(self.initial)
        if not self.path.exists():
            raise FileNotFoundError(
                f"{self.path} is missing: the run resumed inside its last stage but the weights "
                "at that stage's start (WiSE-FT's theta_0) were not saved"
            )
        reader = SafetensorsReader(self.path)
        return {p: np.asarray(reader[p]) for p in reader}

    def curve(self, params: dict, evaluate_params) -> list[dict]:
        """``[{"alpha": a, **evaluate_params(wise_ft(theta_0, params, a))}, ...]``."""
        theta_0 = paths.unflatten(self._resolve_theta_0())
        return [{"alpha": a, **evaluate_params(wise_ft(theta_0, params, a))} for a in self.alphas]


def evaluator(exp: Any, model_state: dict, batch_size: int):
    """``params -> eval-set metrics`` of the run ``exp`` (an :class:`~adapt.harness.experiment.Experiment`)."""

    def run(params):
        return evaluate(
            exp.task, exp.forward, params, model_state, exp.data.eval, batch_size, exp.mesh,
            exp.data.num_labels,
        )  # fmt: skip

    return run


__all__ = ["THETA0_FILE", "WiseCurve", "check", "evaluator"]
