"""``--config.a.b=value`` overrides: every key of the schema (:mod:`adapt.config.schema`) set
from the command line, the value read as the field's type, unknown keys named with the nearest
known one."""

from __future__ import annotations

import ast
import dataclasses
import typing
from collections.abc import Mapping, Sequence
from typing import Any

from adapt.config.schema import (
    _SECTIONS,
    ConfigError,
    GroupSpec,
    OptimSection,
    RunConfig,
    _normalise,
    _options,
    suggest,
)


def _hint_at(path: Sequence[str]) -> tuple[Any, bool]:
    """``(annotation, free_form)`` of the value at ``path`` (free-form: any key, any value)."""
    node: Any = RunConfig
    for i, key in enumerate(path):
        if node is None:  # inside a free-form dict
            return None, True
        if node is _GROUP:  # optim.groups.<label>: any label (checked against the partition)
            if i == len(path) - 1:
                return dict, False
            node = GroupSpec
            continue
        if not (isinstance(node, type) and dataclasses.is_dataclass(node)):
            return None, True
        hints = typing.get_type_hints(node)
        if key not in hints:
            raise KeyError(key)
        hint = hints[key]
        section = next((o for o in _options(hint) if isinstance(o, type) and
                        dataclasses.is_dataclass(o)), None)  # fmt: skip
        if section is not None:
            node = section
            continue
        free = key in getattr(node, "FREE_FORM", ()) or (node is OptimSection and key == "groups")
        if i == len(path) - 1:
            return hint, False
        node = _GROUP if (node is OptimSection and key == "groups") else None if free else hint
    return node, False


_GROUP = object()  # marker: the next key is an optimizer-group label


def _coerce(text: str, hint: Any) -> Any:
    """A command-line string as a value of type ``hint`` (free-form: a Python literal, else
    the string itself)."""
    options = [o for o in _options(hint)] if hint is not None else []
    if type(None) in options and text.strip() in ("None", "none", "null"):
        return None
    for option in options:
        origin = typing.get_origin(option) or option
        try:
            if origin is bool:
                if text.lower() in ("true", "1", "yes"):
                    return True
                if text.lower() in ("false", "0", "no"):
                    return False
                continue
            if origin is int:
                return int(text)
            if origin is float:
                return float(text)
            if origin in (list, tuple, dict):
                value = ast.literal_eval(text)
                if isinstance(value, list | tuple | dict):
                    return _normalise(value)
                continue
        except (ValueError, SyntaxError):
            continue
    if str in options or hint is None or not options:
        if hint is None:
            try:
                return _normalise(ast.literal_eval(text))
            except (ValueError, SyntaxError):
                return text
        return text
    names = " or ".join(getattr(o, "__name__", str(o)) for o in options)
    raise ConfigError(f"cannot read {text!r} as {names.replace('NoneType', 'None')}")


def apply_overrides(config: Any, overrides: Sequence[tuple[str, str]]) -> dict[str, Any]:
    """``config`` (any form :meth:`RunConfig.parse` takes) with ``key.path=value`` overrides,
    as a plain dict with every default filled in. Unknown keys are :class:`ConfigError` with a
    suggestion; values are read as the field's type (``None``/``none`` clears an optional one).
    """
    full = RunConfig.parse(config).to_dict()
    for dotted, text in overrides:
        path = [p for p in dotted.split(".") if p]
        if not path:
            raise ConfigError(f"empty config override {dotted!r}")
        try:
            hint, _ = _hint_at(path)
        except KeyError as e:
            bad = e.args[0]
            where = path[: path.index(bad)]
            known = _known_at(where, full)
            prefix = ".".join(where)
            raise ConfigError(
                f"unknown config key {'.'.join([*where, bad])}"
                + (suggest(bad, known) if known else "")
                + (f" (--config.{prefix}.<key>)" if prefix and not known else "")
            ) from None
        node = full
        for i, key in enumerate(path[:-1]):
            if node.get(key) is None:
                sub = path[: i + 1]
                node[key] = _SECTIONS[key]().to_dict() if len(sub) == 1 and key in _SECTIONS else {}
            if not isinstance(node[key], dict):
                raise ConfigError(
                    f"cannot set {dotted}: {'.'.join(path[: i + 1])} is {node[key]!r}, not a dict"
                )
            node = node[key]
        try:
            node[path[-1]] = _coerce(text, hint)
        except ConfigError as e:
            raise ConfigError(f"--config.{dotted}: {e}") from None
    return RunConfig.parse(full).to_dict()


def _known_at(path: Sequence[str], full: Mapping[str, Any]) -> list[str]:
    node: Any = full
    for key in path:
        node = node.get(key) if isinstance(node, Mapping) else None
    if isinstance(node, Mapping) and node:
        return list(node)
    if not path:
        return [f.name for f in dataclasses.fields(RunConfig)]
    if path[-1] in _SECTIONS:
        return _SECTIONS[path[-1]].keys()
    if len(path) == 3 and path[:2] == ["optim", "groups"]:
        return GroupSpec.keys()
    return []


__all__ = ["apply_overrides"]
