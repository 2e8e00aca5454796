"""Parameter paths: the one naming scheme every regex in adapt matches against.

Parameters are plain nested dicts. A leaf's name is its keys joined by ``/``
(``bert/encoder/layer_3/attention/self/query/kernel``). Partition rules, LoRA targets,
conversion tables and error messages all speak in these names.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

SEP = "/"


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{'a': {'b': x}} -> {'a/b': x}``. Empty sub-dicts vanish (they hold no parameters)."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        key = str(key)
        if SEP in key:
            raise ValueError(f"parameter key {key!r} contains {SEP!r}; paths would be ambiguous")
        path = f"{prefix}{SEP}{key}" if prefix else key
        if isinstance(value, Mapping):
            flat.update(flatten(value, path))
        else:
            flat[path] = value
    return flat


def unflatten(flat: Mapping[str, Any]) -> dict[str, Any]:
    """Inverse of :func:`flatten`."""
    tree: dict[str, Any] = {}
    for path, value in flat.items():
        node = tree
        *parents, leaf = path.split(SEP)
        for part in parents:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ValueError(f"path {path!r} runs through leaf {part!r}")
            node = child
        if leaf in node:
            raise ValueError(f"duplicate parameter path {path!r}")
        node[leaf] = value
    return tree


def map_with_path(fn: Callable[[str, Any], Any], tree: Mapping[str, Any]) -> dict[str, Any]:
    """Apply ``fn(path, leaf)`` to every leaf, keeping the nesting."""
    return unflatten({p: fn(p, v) for p, v in flatten(tree).items()})


def shorten_list(items: list[str], limit: int = 40) -> str:
    """Render a list of paths for an error message without flooding the terminal."""
    shown = "\n  ".join(items[:limit])
    more = f"\n  ... and {len(items) - limit} more" if len(items) > limit else ""
    return f"\n  {shown}{more}" if items else " (none)"
