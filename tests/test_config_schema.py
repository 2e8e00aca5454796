"""Every key of the run config's schema has its default and is settable from the command line
(``--config.<section>.<key>=...``, the override path of adapt-finetune, adapt/cli/finetune.py)."""

import dataclasses
import types
import typing

import pytest

from adapt.config import ConfigError, apply_overrides, schema

SECTIONS = schema._SECTIONS


def _sample(hint):
    """``(text as typed on a command line, the value it must become)`` for a field's type; None
    for free-form dicts (their keys are set one level down)."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        hint = next(a for a in typing.get_args(hint) if a is not type(None))
    if hint is bool:
        return "true", True
    if hint is int:
        return "3", 3
    if hint is float:
        return "0.25", 0.25
    if hint is str:
        return "xyz", "xyz"
    if hint is list or typing.get_origin(hint) is list:
        return "[[1, 2]]", [[1, 2]]
    return None


def _keys():
    """``(dotted key, its type hint)`` for every key of every section (nested typed sections
    such as optim.default included), and the top-level scalars."""
    top = typing.get_type_hints(schema.RunConfig)
    out = [(name, hint) for name, hint in top.items() if name not in SECTIONS]
    for name, cls in SECTIONS.items():
        for field, hint in _fields(cls).items():
            if dataclasses.is_dataclass(hint):
                out += [(f"{name}.{field}.{k}", h) for k, h in _fields(hint).items()]
            else:
                out.append((f"{name}.{field}", hint))
    return out


def _fields(cls) -> dict:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def test_every_field_has_a_default():
    for cls in (schema.RunConfig, *SECTIONS.values()):
        missing = [
            f.name
            for f in dataclasses.fields(cls)
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        ]
        assert not missing, f"{cls.__name__} fields without a default: {missing}"


@pytest.mark.parametrize("key,hint", _keys(), ids=[k for k, _ in _keys()])
def test_every_key_is_settable_through_the_override_path(key, hint):
    sample = _sample(hint)
    path = key.split(".")
    if sample is None:  # a free-form dict: any key below it (a group's: its settings)
        below = ["mine", "lr"] if key == "optim.groups" else ["anything"]
        path, (text, value) = [*path, *below], ("7", 7)
    else:
        text, value = sample
    out = apply_overrides({}, [(".".join(path), text)])
    for part in path:
        out = out[part]
    assert out == value


def test_an_unknown_key_is_named_with_a_suggestion():
    with pytest.raises(ConfigError, match="unknown config key train.batch_szie"):
        apply_overrides({}, [("train.batch_szie", "8")])
