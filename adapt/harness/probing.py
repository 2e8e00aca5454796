"""Fitting a classifier's head on the frozen model's features, in the run itself.

Three uses, one mechanism (the features are what the model feeds its final linear layer, the
pooled vector, captured by :func:`adapt.methods.probe.head_input`; they are computed once over
the training examples, never the validation or eval ones):

- ``method.name="linear_probe"``: the head fitted to convergence by adapt's L-BFGS logistic
  regression (:func:`adapt.methods.probe.fit_logistic_regression`), nothing else trained;
- ``method.name="logistic_regression"``: the same fit by scikit-learn's ``LogisticRegression``,
  the baseline a reviewer runs first (``C=method.probe_c``, 10 by default);
- ``method.head_init="probe"`` with any other method: the L-BFGS fit gives the head its start
  before training (Kumar et al. 2022's LP-FT: a converged probe, then fine-tuning). Methods are
  identities at initialisation (LoRA's B = 0, adapters and prefixes gated to 0), so the features
  are those of the pretrained model.
"""

from __future__ import annotations

import re
from typing import Any

import jax
import numpy as np

from adapt import paths
from adapt.config import ConfigError
from adapt.data import eval_batches
from adapt.harness.model_setup import head_pattern
from adapt.methods.probe import extract_features, fit_logistic_regression, head_input


def head_module(model: Any, method_cfg: Any) -> str:
    """The module path of the head's single linear layer (``classifier``)."""
    pattern = head_pattern(model, method_cfg)
    leaves = sorted(p for p in paths.flatten(model.params) if pattern and re.fullmatch(pattern, p))
    modules = sorted({p.rsplit("/", 1)[0] for p in leaves})
    if len(modules) != 1 or set(leaves) != {f"{modules[0]}/kernel", f"{modules[0]}/bias"}:
        raise ConfigError(
            f"fitting the head on cached features needs a head that is one linear layer (kernel "
            f"and bias); {pattern!r} matches {leaves[:6]} (a checkpoint's own two-layer "
            "head, dense then out_proj, is not: set model.pooling to 'mean' for a one-layer head)"
        )
    return modules[0]


def features(
    exp: Any, data: Any, batch_size: int, module: str | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """``(features (N, D), labels (N,))`` of every example of ``data`` under the run's model;
    ``module`` is the head's path when the caller has it (else found by :func:`head_module`)."""
    model = exp.model
    module = module or head_module(model, exp.config.method)
    forward = head_input(lambda p, s, b: exp.forward(p, s, b, False, None), module)
    params, state = model.params, model.model_state
    return extract_features(
        lambda batch: forward(params, state, batch), eval_batches(data, batch_size)
    )


def fit_head(exp: Any, solver: str) -> dict:
    """Fit the head on the training examples' features and put it into ``exp.model.params``;
    returns what was fitted (for results.json)."""
    model, method = exp.model, exp.config.method
    module = head_module(model, method)
    x, y = features(exp, exp.data.train, exp.config.train.eval_batch, module)
    num_classes = exp.data.num_labels
    if solver == "lbfgs":
        head = jax.tree.map(
            np.asarray, fit_logistic_regression(x, y, num_classes, c=method.probe_c)
        )
    elif solver == "sklearn":
        head = _sklearn(x, y, num_classes, method.probe_c)
    else:  # pragma: no cover - the callers pass one of the two
        raise ValueError(f"unknown solver {solver!r}")
    flat = paths.flatten(model.params)
    for leaf in ("kernel", "bias"):
        old = flat[f"{module}/{leaf}"]
        flat[f"{module}/{leaf}"] = np.asarray(head[leaf], dtype=np.asarray(old).dtype)
    model.params = paths.unflatten(flat)
    accuracy = float(np.mean(np.argmax(x @ head["kernel"] + head["bias"], -1) == y))
    return {"solver": solver, "c": method.probe_c, "examples": len(y), "train_accuracy": accuracy}


def _sklearn(x: np.ndarray, y: np.ndarray, num_classes: int, c: float) -> dict[str, np.ndarray]:
    try:
        from sklearn.linear_model import LogisticRegression
    except ImportError as e:
        raise ConfigError(
            "method 'logistic_regression' runs scikit-learn; install it (pip install "
            "scikit-learn, or the project's [studies] extra)"
        ) from e
    fitted = LogisticRegression(C=c, max_iter=1000).fit(x.astype(np.float64), y)
    kernel = np.zeros((x.shape[1], num_classes), np.float64)
    bias = np.zeros((num_classes,), np.float64)
    classes = fitted.classes_
    if len(classes) == 2 and fitted.coef_.shape[0] == 1:  # binary: one logit for classes_[1]
        kernel[:, classes[1]], bias[classes[1]] = fitted.coef_[0], fitted.intercept_[0]
    else:
        kernel[:, classes], bias[classes] = fitted.coef_.T, fitted.intercept_
        missing = sorted(set(range(num_classes)) - set(classes.tolist()))
        bias[missing] = -1e9  # a class absent from the training examples is never predicted
    return {"kernel": kernel.astype(np.float32), "bias": bias.astype(np.float32)}


__all__ = ["features", "fit_head", "head_module"]
