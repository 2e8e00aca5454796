"""Config files: ``get_config(arg)`` files loaded by path, their big_vision-style argument
(``"method=lora,smoke"``), and the key check of sweep configs."""

from __future__ import annotations

import importlib.util
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import ml_collections

from adapt.config.schema import ConfigError, suggest
from adapt.errors import AdaptError


def shipped_configs() -> Path:
    """The folder of the configs shipped with adapt (:mod:`adapt.configs`)."""
    return Path(__file__).resolve().parents[1] / "configs"


def find_config(name: str) -> Path:
    """A config file's path: ``name`` itself when it is a file, else the shipped config of that
    name (``text/minilm.py``, ``configs/text/minilm.py`` or ``text/minilm``), so commands run
    from any directory and from an installed wheel. Neither is a :class:`ConfigError` that lists
    the shipped names."""
    path = Path(name)
    if path.is_file():
        return path.resolve()
    root = shipped_configs()
    relative = Path(*path.parts[1:]) if path.parts[:1] == ("configs",) else path
    for candidate in (root / relative, root / relative.with_suffix(".py")):
        if not path.is_absolute() and candidate.is_file():
            return candidate
    known = sorted(str(f.relative_to(root)) for f in root.rglob("*.py") if f.name != "__init__.py")
    raise ConfigError(
        f"config file not found: {name} (looked at {path.resolve()} and among the shipped "
        f"configs: {', '.join(known)})"
    )


def load_config_file(path: str, arg: str | None = None) -> Any:
    """``get_config(arg)`` of a config file (a path, or a shipped config's name: see
    :func:`find_config`); a missing file, a file without ``get_config`` or a bad argument is a
    :class:`ConfigError`."""
    resolved = find_config(path)
    spec = importlib.util.spec_from_file_location(f"adapt_config_{resolved.stem}", resolved)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except SyntaxError as e:
        raise ConfigError(f"config file {path} does not parse: {e}") from e
    if not hasattr(module, "get_config"):
        raise ConfigError(f"config file {path} defines no get_config(arg)")
    try:
        return module.get_config(arg) if arg is not None else module.get_config()
    except AdaptError:
        raise
    except (ValueError, KeyError, TypeError) as e:  # a config's own argument checks
        raise ConfigError(f"{path}:{arg or ''}: {e}") from e


def parse_arg(arg: str | None, **defaults: Any) -> ml_collections.ConfigDict:
    """big_vision-style ``get_config`` argument: ``"method=lora,smoke=True,steps=200"``.

    Values are parsed as the type of their default (bool accepts true/false/1/0); a key without a
    default is an error naming the nearest known one.
    """
    out = ml_collections.ConfigDict(defaults)
    if not arg:
        return out
    for item in arg.split(","):
        if not item.strip():
            continue
        key, sep, value = item.partition("=")
        key = key.strip()
        if key not in defaults:
            raise ConfigError(f"unknown config argument {key!r}{suggest(key, list(defaults))}")
        if not sep:  # a bare name is a true flag ("smoke")
            value = "true"
        default = defaults[key]
        try:
            if isinstance(default, bool):
                if value.lower() not in ("true", "false", "1", "0"):
                    raise ValueError
                out[key] = value.lower() in ("true", "1")
            elif isinstance(default, int):
                out[key] = int(value)
            elif isinstance(default, float):
                out[key] = float(value)
            else:
                out[key] = value
        except ValueError:
            kind = type(default).__name__
            raise ConfigError(
                f"config argument {key}={value!r} is not a {kind} (default {default!r})"
            ) from None
    return out


def check(
    config: Mapping[str, Any] | ml_collections.ConfigDict,
    schema: Mapping[str, set[str] | None],
    kind: str = "config",
) -> None:
    """Raise naming every key of ``config`` that ``schema`` does not list (top level and within
    the sections it details): the sweep configs' check (adapt.studies.sweep)."""
    problems = []
    for key, value in config.items():
        if key not in schema:
            problems.append(f"unknown {kind} key {key!r}{suggest(key, list(schema))}")
            continue
        allowed = schema[key]
        if allowed is None or value is None:
            continue
        if not isinstance(value, Mapping | ml_collections.ConfigDict):
            problems.append(f"{key} must be a dict of settings, got {type(value).__name__}")
            continue
        for sub in value:
            if sub not in allowed:
                problems.append(f"unknown {kind} key {key}.{sub}{suggest(sub, list(allowed))}")
    if problems:
        raise ConfigError(f"{kind} problems:\n  " + "\n  ".join(problems))


__all__ = ["check", "find_config", "load_config_file", "parse_arg", "shipped_configs"]
