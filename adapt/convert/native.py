"""adapt's own on-disk model format: a converted model that loads without a conversion table.

A directory holding
- ``config.json``: the Hugging Face config of the model (read back strictly, so the family,
  architecture and every field are checked the same way as for a Hugging Face checkpoint);
- ``adapt_params.safetensors``: the parameters under adapt's ``/``-joined names;
- ``adapt.json``: ``{"format": "adapt", "version": 1, "architecture": ..., "config": {...}}``,
  where ``config`` holds the fields a Hugging Face ``config.json`` cannot say (a classifier's
  ``pooling`` other than the architecture's own).

Loading checks names and shapes against ``jax.eval_shape`` of the model, like any other import;
as from a Hugging Face directory, a task head whose shape changed (``num_labels``) is initialised
afresh from ``rng``.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

import jax
import numpy as np

from adapt import paths
from adapt.convert import hf, mapping
from adapt.convert.hf_config import UnsupportedConfigError
from adapt.convert.safetensors_io import SafetensorsReader, write_file

PARAMS_FILE = "adapt_params.safetensors"
MARKER_FILE = "adapt.json"
VERSION = 1


def is_native(path: str | os.PathLike) -> bool:
    return (Path(path) / MARKER_FILE).exists()


def save_native(
    params: dict, config: Any, directory: str | os.PathLike, *, architecture: str
) -> Path:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    flat = {p: np.asarray(v) for p, v in paths.flatten(params).items()}
    extra = {}
    if getattr(config, "pooling", None) is not None:  # not expressible in config.json
        extra["pooling"] = config.pooling
        config = dataclasses.replace(config, pooling=None)
    write_file(directory / PARAMS_FILE, flat, {"format": "adapt"})
    (directory / "config.json").write_text(
        json.dumps(hf.to_hf_config(config, architecture), indent=2, sort_keys=True)
    )
    marker = {"format": "adapt", "version": VERSION, "architecture": architecture, "config": extra}
    (directory / MARKER_FILE).write_text(json.dumps(marker, indent=2))
    return directory


def load_native(
    path: str | os.PathLike,
    *,
    architecture: str | None = None,
    rng: jax.Array | None = None,
    **overrides: Any,
) -> tuple[Any, dict, Any]:
    """``(module, params, config)`` of an adapt model directory; ``architecture`` defaults to
    the saved one (another one of the same family builds a new head, as from Hugging Face)."""
    path = Path(path)
    marker = json.loads((path / MARKER_FILE).read_text())
    if marker.get("format") != "adapt" or marker.get("version") != VERSION:
        raise UnsupportedConfigError(
            f"{path / MARKER_FILE}: not an adapt v{VERSION} model directory: {marker}"
        )
    architecture = architecture or marker["architecture"]
    hf_cfg = hf.read_config(path)
    fam = hf.family_for(hf_cfg.get("model_type", "<missing>"))
    saved = dict(marker.get("config") or {})
    try:
        config = fam.config_from_hf(
            hf_cfg, **{**saved, **{k: v for k, v in overrides.items() if v is not None}}
        )
    except (TypeError, ValueError) as e:
        if isinstance(e, UnsupportedConfigError):
            raise
        raise UnsupportedConfigError(f"{path}: {e}") from None
    module = fam.build(config, architecture)
    expected = {
        p: (tuple(s.shape), np.dtype(s.dtype))
        for p, s in paths.flatten(
            hf.abstract_params(module, fam.dummy_inputs(config, architecture))
        ).items()
    }
    reader = SafetensorsReader(path / PARAMS_FILE)
    # device_put adopts the reader's fresh 64-byte-aligned buffers without a copy (see hf.py).
    flat, fresh = mapping.import_tensors(
        reader,
        None,
        expected,
        ignore=_other_heads(reader, expected, fam.new_head(architecture)),
        allow_missing=fam.new_head(architecture),
        convert_leaf=jax.device_put,
    )
    if fresh:
        inputs = fam.dummy_inputs(config, architecture)
        flat.update(
            hf.init_subset(module, inputs, fresh, jax.random.key(0) if rng is None else rng)
        )
    return module, paths.unflatten(flat), config


def _other_heads(reader: Any, expected: dict, heads: list[str]) -> list[str]:
    """Saved head leaves the requested model does not have (a classifier of another
    architecture): dropped, as their Hugging Face counterparts are."""
    import re

    return [
        re.escape(k) for k in reader if k not in expected and any(re.fullmatch(h, k) for h in heads)
    ]


def architecture_of(path: str | os.PathLike) -> str:
    return json.loads((Path(path) / MARKER_FILE).read_text())["architecture"]
