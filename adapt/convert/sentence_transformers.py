"""What a sentence-transformers folder says about pooling (``modules.json``, ``1_Pooling``).

A sentence-transformers model (all-MiniLM-L6-v2, the MPNet and E5 families ...) is a Hugging
Face encoder plus a ``Pooling`` module whose ``config.json`` names the one vector it was trained
to produce: the masked mean of the token vectors, or the [CLS] vector. A classifier on such a
checkpoint should pool the same way (its tanh pooler, if the folder has one, was never trained
with the sentence objective), so :func:`pooling_of` gives the loader that default.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from adapt.convert.hf_config import UnsupportedConfigError

MODES = {  # sentence-transformers' flag -> adapt's pooling
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_cls_token": "cls",
}
UNSUPPORTED = ("pooling_mode_max_tokens", "pooling_mode_mean_sqrt_len_tokens",
               "pooling_mode_weightedmean_tokens", "pooling_mode_lasttoken")  # fmt: skip


def pooling_of(path: str | os.PathLike) -> str | None:
    """``"mean"`` or ``"cls"`` if ``path`` is a sentence-transformers folder, else None.

    A folder whose Pooling module uses a mode adapt does not implement (max, sqrt-length,
    weighted mean, last token) is an error naming it: defaulting to another pooling would
    silently give the classifier features the model was not trained to produce.
    """
    modules = Path(path) / "modules.json"
    if not modules.is_file():
        return None
    try:
        entries = json.loads(modules.read_text())
    except json.JSONDecodeError as e:
        raise UnsupportedConfigError(f"{modules} is not valid JSON ({e})") from None
    pooling = [m for m in entries if str(m.get("type", "")).endswith(".Pooling")]
    if not pooling:
        return None
    config_path = Path(path) / pooling[0].get("path", "") / "config.json"
    if not config_path.is_file():
        raise UnsupportedConfigError(
            f"{modules} names a Pooling module but {config_path} is missing"
        )
    config = json.loads(config_path.read_text())
    chosen = [mode for flag, mode in MODES.items() if config.get(flag)]
    other = [flag for flag in UNSUPPORTED if config.get(flag)]
    if other or len(chosen) != 1:
        raise UnsupportedConfigError(
            f"{config_path} pools with {other + [f for f in MODES if config.get(f)]}; adapt "
            "implements one of mean or cls pooling: set model.pooling explicitly"
        )
    return chosen[0]


__all__ = ["pooling_of"]
