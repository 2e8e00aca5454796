"""adapt's own on-disk model format: a converted model that loads without a conversion table.

A directory holding
- ``config.json``: the Hugging Face config of the model (read back strictly, so the family,
  architecture and every field are checked the same way as for a Hugging Face checkpoint);
- ``adapt_params.safetensors``: the parameters under adapt's ``/``-joined names;
- ``adapt.json``: ``{"format": "adapt", "version": 1, "architecture": ...}``.

Loading checks names and shapes against ``jax.eval_shape`` of the model, like any other import.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import jax
import numpy as np

from adapt import paths
from adapt.convert import hf, mapping
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
    write_file(directory / PARAMS_FILE, flat, {"format": "adapt"})
    (directory / "config.json").write_text(
        json.dumps(hf.to_hf_config(config, architecture), indent=2, sort_keys=True)
    )
    marker = {"format": "adapt", "version": VERSION, "architecture": architecture}
    (directory / MARKER_FILE).write_text(json.dumps(marker, indent=2))
    return directory


def load_native(path: str | os.PathLike, **overrides: Any) -> tuple[Any, dict, Any]:
    path = Path(path)
    marker = json.loads((path / MARKER_FILE).read_text())
    if marker.get("format") != "adapt" or marker.get("version") != VERSION:
        raise ValueError(f"{path / MARKER_FILE}: not an adapt v{VERSION} model directory: {marker}")
    architecture = marker["architecture"]
    hf_cfg = hf.read_config(path)
    fam = hf.family_for(hf_cfg.get("model_type", "<missing>"))
    config = fam.config_from_hf(hf_cfg, **overrides)
    module = fam.build(config, architecture)
    expected = {
        p: (tuple(s.shape), np.dtype(s.dtype))
        for p, s in paths.flatten(
            hf.abstract_params(module, fam.dummy_inputs(config, architecture))
        ).items()
    }
    reader = SafetensorsReader(path / PARAMS_FILE)
    # device_put adopts the reader's fresh 64-byte-aligned buffers without a copy (see hf.py).
    flat, _ = mapping.import_tensors(reader, None, expected, convert_leaf=jax.device_put)
    return module, paths.unflatten(flat), config


def architecture_of(path: str | os.PathLike) -> str:
    return json.loads((Path(path) / MARKER_FILE).read_text())["architecture"]
