"""Two-way conversion as a mapping table: our path pattern <-> HF key pattern, plus a transform.

Each family (``hf_bert``, ``hf_llama``, ...) declares a list of :class:`Rule`. A rule's patterns
may hold integer placeholders such as ``{i}`` (the layer index), so one line covers every layer::

    Rule("bert/encoder/layer_{i}/attention/self/query/kernel",
         "bert.encoder.layer.{i}.attention.self.query.weight", TRANSPOSE)

Import runs each transform forwards, export runs it backwards, so the same table proves both
directions. Import checks every name and shape before it reads a single tensor, and raises one
error listing all missing, unexpected and mis-shaped keys.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from adapt.convert.safetensors_io import aligned_empty
from adapt.errors import AdaptError
from adapt.paths import shorten_list


class CheckpointMismatchError(AdaptError, ValueError):
    """The checkpoint's keys or shapes do not fit the model."""


# ----------------------------------------------------------------------------------- transforms
@dataclass(frozen=True)
class Permute:
    """Reorder axes. ``Permute((1, 0))`` turns an HF ``(out, in)`` Linear weight into a Flax
    ``(in, out)`` kernel; ``Permute((2, 3, 1, 0))`` turns a torch OIHW conv into Flax HWIO."""

    axes: tuple[int, ...]

    def to_ours(self, x: np.ndarray) -> np.ndarray:
        view = np.transpose(x, self.axes)
        out = aligned_empty(view.shape, view.dtype)
        np.copyto(out, view)
        return out

    def to_hf(self, x: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(np.transpose(x, np.argsort(self.axes)))

    def shape_to_ours(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        if len(shape) != len(self.axes):
            return shape + (-1,)  # rank mismatch: guarantees a reported shape error
        return tuple(shape[a] for a in self.axes)


@dataclass(frozen=True)
class Reshape:
    """Reshape between two layouts, e.g. HF ``(heads*dim, hidden)`` and a split-head kernel.
    ``ours`` and ``hf`` are the full shapes of each side."""

    ours: tuple[int, ...]
    hf: tuple[int, ...]

    def to_ours(self, x: np.ndarray) -> np.ndarray:
        return x.reshape(self.ours)

    def to_hf(self, x: np.ndarray) -> np.ndarray:
        return x.reshape(self.hf)

    def shape_to_ours(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        return self.ours if tuple(shape) == self.hf else tuple(shape)


@dataclass(frozen=True)
class Custom:
    """Any pair of mutually inverse functions (e.g. a RoPE layout permutation)."""

    forward: Callable[[np.ndarray], np.ndarray]
    backward: Callable[[np.ndarray], np.ndarray]
    shape_fn: Callable[[tuple[int, ...]], tuple[int, ...]] = lambda s: tuple(s)

    def to_ours(self, x: np.ndarray) -> np.ndarray:
        return self.forward(x)

    def to_hf(self, x: np.ndarray) -> np.ndarray:
        return self.backward(x)

    def shape_to_ours(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        return self.shape_fn(tuple(shape))


IDENTITY = Permute(())  # special-cased below: rank-agnostic no-op
TRANSPOSE = Permute((1, 0))
CONV_OIHW_TO_HWIO = Permute((2, 3, 1, 0))


def _apply(transform, x, direction: str) -> np.ndarray:
    if transform is IDENTITY:
        return x
    return getattr(transform, direction)(x)


def _shape(transform, shape: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(shape) if transform is IDENTITY else transform.shape_to_ours(tuple(shape))


# ----------------------------------------------------------------------------------------- rules
_PLACEHOLDER = re.compile(r"\{(\w+)\}")


def _compile(pattern: str, sep: str) -> re.Pattern:
    parts, pos = [], 0
    for m in _PLACEHOLDER.finditer(pattern):
        parts.append(re.escape(pattern[pos : m.start()]))
        parts.append(f"(?P<{m.group(1)}>\\d+)")
        pos = m.end()
    parts.append(re.escape(pattern[pos:]))
    return re.compile("".join(parts))


@dataclass(frozen=True)
class Rule:
    """One line of a conversion table."""

    ours: str
    hf: str
    transform: object = IDENTITY
    _ours_re: re.Pattern = field(init=False, repr=False, compare=False)
    _hf_re: re.Pattern = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        object.__setattr__(self, "_ours_re", _compile(self.ours, "/"))
        object.__setattr__(self, "_hf_re", _compile(self.hf, "."))

    def hf_to_ours(self, hf_key: str) -> str | None:
        m = self._hf_re.fullmatch(hf_key)
        return self.ours.format(**m.groupdict()) if m else None

    def ours_to_hf(self, path: str) -> str | None:
        m = self._ours_re.fullmatch(path)
        return self.hf.format(**m.groupdict()) if m else None


def _match(table: Sequence[Rule], key: str, direction: str) -> tuple[Rule, str] | None:
    for rule in table:
        target = getattr(rule, direction)(key)
        if target is not None:
            return rule, target
    return None


# ---------------------------------------------------------------------------------- conversion
_SAME_NAME = Rule("<same>", "<same>")


def plan_import(
    hf_shapes: Mapping[str, tuple[int, ...]],
    table: Sequence[Rule] | None,
    expected: Mapping[str, tuple[int, ...]],
    *,
    ignore: Iterable[str] = (),
    allow_missing: Iterable[str] = (),
) -> tuple[dict[str, tuple[str, Rule]], list[str]]:
    """Check names and shapes without reading tensors.

    ``table=None`` means the checkpoint already uses our names (adapt's native format).
    Returns ``(plan, missing_allowed)`` where ``plan`` maps our path -> (hf key, rule) and
    ``missing_allowed`` lists our leaves absent from the checkpoint but matching ``allow_missing``
    (new heads the caller initialises; also head leaves whose shape changed, e.g. another
    ``num_labels``). Raises :class:`CheckpointMismatchError` listing every
    problem at once.
    """
    ignore_res = [re.compile(p) for p in ignore]
    allow_res = [re.compile(p) for p in allow_missing]
    plan: dict[str, tuple[str, Rule]] = {}
    unexpected, misshaped = [], []
    for hf_key, hf_shape in hf_shapes.items():
        hit = (_SAME_NAME, hf_key) if table is None else _match(table, hf_key, "hf_to_ours")
        if hit is None or hit[1] not in expected:
            if not any(r.fullmatch(hf_key) for r in ignore_res):
                unexpected.append(f"{hf_key} {list(hf_shape)}")
            continue
        rule, path = hit
        got = _shape(rule.transform, hf_shape)
        if tuple(got) != tuple(expected[path]) and any(r.fullmatch(path) for r in allow_res):
            continue  # a head re-sized for a new task (e.g. num_labels changed): initialise anew
        if tuple(got) != tuple(expected[path]):
            misshaped.append(
                f"{hf_key} {list(hf_shape)} -> {path}: converts to {list(got)}, "
                f"model expects {list(expected[path])}"
            )
        plan[path] = (hf_key, rule)
    absent = [p for p in expected if p not in plan]
    missing = [p for p in absent if not any(r.fullmatch(p) for r in allow_res)]
    allowed = [p for p in absent if p not in missing]
    if missing or unexpected or misshaped:
        raise CheckpointMismatchError(
            "checkpoint does not fit the model:"
            + (
                f"\nmissing from the checkpoint ({len(missing)}):{shorten_list(missing)}"
                if missing
                else ""
            )
            + (
                f"\nunexpected in the checkpoint ({len(unexpected)}):{shorten_list(unexpected)}"
                if unexpected
                else ""
            )
            + (f"\nwrong shape ({len(misshaped)}):{shorten_list(misshaped)}" if misshaped else "")
            + "\nCheck that the config matches the weights (model type, sizes, architecture/head)."
        )
    return plan, allowed


def import_tensors(
    hf_tensors: Mapping[str, np.ndarray],
    table: Sequence[Rule] | None,
    expected: Mapping[str, tuple[tuple[int, ...], np.dtype]],
    *,
    ignore: Iterable[str] = (),
    allow_missing: Iterable[str] = (),
    convert_leaf: Callable[[np.ndarray], object] = lambda x: x,
) -> tuple[dict[str, object], list[str]]:
    """Convert an HF state dict to our flat ``{path: array}``.

    ``expected`` maps our path -> (shape, dtype). ``hf_tensors`` may be lazy
    (:class:`~adapt.convert.safetensors_io.SafetensorsReader`): each tensor is read once,
    transformed, cast and handed to ``convert_leaf`` (e.g. ``jnp.asarray``) before the next is
    read, which keeps peak memory near one copy of the weights.
    """
    shapes = (
        hf_tensors.shapes()
        if hasattr(hf_tensors, "shapes")
        else {k: tuple(np.shape(v)) for k, v in hf_tensors.items()}
    )
    plan, allowed = plan_import(
        shapes,
        table,
        {p: s for p, (s, _) in expected.items()},
        ignore=ignore,
        allow_missing=allow_missing,
    )
    out: dict[str, object] = {}
    for path, (hf_key, rule) in plan.items():
        arr = _apply(rule.transform, np.asarray(hf_tensors[hf_key]), "to_ours")
        dtype = expected[path][1]
        if arr.dtype != dtype:
            arr, src = aligned_empty(arr.shape, dtype), arr
            np.copyto(arr, src, casting="unsafe")
            del src
        out[path] = convert_leaf(arr)
    return out, allowed


def export_tensors(
    flat_params: Mapping[str, np.ndarray],
    table: Sequence[Rule],
    *,
    skip: Iterable[str] = (),
) -> dict[str, np.ndarray]:
    """Convert our flat ``{path: array}`` to an HF state dict; every leaf must map somewhere."""
    skip_res = [re.compile(p) for p in skip]
    out, unmapped = {}, []
    for path, value in flat_params.items():
        if any(r.fullmatch(path) for r in skip_res):
            continue
        hit = _match(table, path, "ours_to_hf")
        if hit is None:
            unmapped.append(path)
            continue
        rule, hf_key = hit
        out[hf_key] = _apply(rule.transform, np.asarray(value), "to_hf")
    if unmapped:
        raise CheckpointMismatchError(
            f"no Hugging Face name for {len(unmapped)} parameters:{shorten_list(unmapped)}\n"
            "Merge or strip method parameters (e.g. LoRA) before a full-model export."
        )
    return out
