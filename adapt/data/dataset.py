"""In-memory classification data, the errors every loader raises, and few-label selection.

Our data sets are small, so every loader reads them whole into numpy: a :class:`ClassificationData`
holds per-example ``inputs`` (equal-shape arrays, or Python lists for ragged things such as
token ids and raw text), integer ``labels`` and the ``label_names`` that give them meaning.
Modalities subclass it (``TextClassificationData``, ``ImageClassificationData``) to say how a
batch is built; selection (:func:`select`) works the same on all of them because it only indexes.

Few-label budgets (10/50/200 examples per class) are chosen by :func:`select_per_class`: each
class is permuted by its own generator seeded with ``(seed, class id)`` and its first ``k`` are
kept, so for one seed the 10-per-class set is contained in the 50-per-class set, and adding a
class does not change which examples the others get. Chosen indices are returned sorted, so
selected data keeps file order.

Every user-facing mistake raises :class:`DataError` (a ``ValueError``) with the bad value, where
it was found and how to fix it; loaders only read, so an error leaves nothing changed on disk.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Self

import numpy as np

from adapt.errors import AdaptError


class DataError(AdaptError, ValueError):
    """Bad data or bad data options; the message says what was wrong and how to fix it."""


def require_path(path: str | os.PathLike, what: str = "data file") -> Path:
    """``path`` as a Path if it exists; otherwise a DataError listing what exists nearby."""
    path = Path(path)
    if path.exists():
        return path
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    try:
        nearby = sorted(p.name + ("/" if p.is_dir() else "") for p in parent.iterdir())
    except OSError:
        nearby = []
    listing = ", ".join(nearby[:30]) + (
        f", ... ({len(nearby) - 30} more)" if len(nearby) > 30 else ""
    )
    raise DataError(
        f"{what} not found: {path}\n  nearest existing folder: {parent.resolve()}\n"
        f"  it contains: {listing or '(nothing)'}"
    )


def _show_labels(names: Sequence[Any], limit: int = 80) -> str:
    shown = ", ".join(repr(n) for n in list(names)[:limit])
    return shown + (f", ... ({len(names) - limit} more)" if len(names) > limit else "")


@dataclasses.dataclass(frozen=True, eq=False)
class ClassificationData:
    """Examples, integer labels in ``[0, len(label_names))`` and the names of those labels.

    ``inputs`` maps a name to one entry per example: a numpy array whose first axis is the
    example, or a list (ragged token ids, raw text). The base class batches equal-shape array
    inputs as they are; subclasses override :meth:`collate` (padding, preprocessing).

    ``regression=True``: the labels are float targets (one number per example, finite) and
    ``label_names`` is empty; everything that only indexes (selection of examples, batching)
    works the same, what needs classes (per-class budgets, stratified hold-outs) does not.
    """

    inputs: dict[str, np.ndarray | list]
    labels: np.ndarray
    label_names: list[str]
    regression: bool = False

    def __post_init__(self) -> None:
        if self.regression:
            self._check_targets()
            return
        labels = np.asarray(self.labels)
        if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
            raise DataError(
                f"labels must be a 1-D integer array; got {labels.dtype} {labels.shape}"
            )
        object.__setattr__(self, "labels", labels.astype(np.int32))
        object.__setattr__(self, "label_names", [str(n) for n in self.label_names])
        for key, value in self.inputs.items():
            if len(value) != len(labels):
                raise DataError(
                    f"input {key!r} has {len(value)} entries but there are {len(labels)} labels"
                )
        if labels.size and (labels.min() < 0 or labels.max() >= len(self.label_names)):
            raise DataError(
                f"labels must lie in [0, {len(self.label_names)}) (one per label name); "
                f"got values from {labels.min()} to {labels.max()}"
            )

    def _check_targets(self) -> None:
        targets = np.asarray(self.labels)
        if targets.ndim != 1 or not np.issubdtype(targets.dtype, np.number):
            raise DataError(
                f"targets must be a 1-D numeric array; got {targets.dtype} {targets.shape}"
            )
        if not np.isfinite(targets).all():
            bad = int(np.flatnonzero(~np.isfinite(targets))[0])
            raise DataError(f"target {bad} is {targets[bad]}; regression targets must be finite")
        if self.label_names:
            raise DataError("regression data has no label names; leave label_names empty")
        object.__setattr__(self, "labels", targets.astype(np.float32))
        object.__setattr__(self, "label_names", [])
        for key, value in self.inputs.items():
            if len(value) != len(targets):
                raise DataError(
                    f"input {key!r} has {len(value)} entries but there are {len(targets)} targets"
                )

    @property
    def num_examples(self) -> int:
        return len(self.labels)

    @property
    def num_classes(self) -> int:
        return len(self.label_names)

    def class_counts(self) -> np.ndarray:
        """Examples per class, indexed by label id."""
        if self.regression:
            raise DataError("regression data has no classes to count")
        return np.bincount(self.labels, minlength=self.num_classes)

    def select(self, indices: Sequence[int] | np.ndarray) -> Self:
        """The examples at ``indices`` (in that order), with every other field kept."""
        indices = np.asarray(indices, dtype=np.int64)
        inputs = {
            k: [v[i] for i in indices] if isinstance(v, list) else v[indices]
            for k, v in self.inputs.items()
        }
        return dataclasses.replace(self, inputs=inputs, labels=self.labels[indices])

    def lengths(self) -> np.ndarray | None:
        """Per-example lengths for length-grouped batching; None when examples have one shape."""
        return None

    def collate(
        self, indices: np.ndarray, rows: slice, *, seed: int, step: int, train: bool
    ) -> dict[str, np.ndarray]:
        """The rows ``rows`` of the global batch made of examples ``indices``.

        ``indices`` is the whole global batch so that shape decisions (padding) agree on every
        process; only the rows this process owns are materialised. ``seed``/``step`` seed
        augmentation (unused here), ``train`` turns it on.
        """
        del seed, step, train
        local = indices[rows]
        batch = {}
        for key, value in self.inputs.items():
            if isinstance(value, list):
                raise DataError(
                    f"input {key!r} is ragged (a list); this data must be converted first "
                    "(e.g. text: adapt.data.text.tokenize)"
                )
            batch[key] = value[local]
        batch["labels"] = self.labels[local]
        return batch


def map_labels(
    values: Sequence[Any], label_names: Sequence[str] | None, *, source: str = "data"
) -> tuple[np.ndarray, list[str]]:
    """Raw label values -> (int32 ids, label names).

    With ``label_names`` given, string values are looked up by name and integer values are taken
    as ids (``0 <= id < len(label_names)``). Without, the names are the sorted unique values and
    each value's id is its position among them. Anything else raises a DataError naming the row.
    """
    values = list(values)
    empty = [
        row for row, v in enumerate(values) if v is None or (isinstance(v, str) and not v.strip())
    ]
    if empty:
        rows = ", ".join(str(r + 1) for r in empty[:10]) + (" ..." if len(empty) > 10 else "")
        raise DataError(
            f"{len(empty)} example(s) of {source} have an empty label: data row(s) {rows} "
            "(1 = the first row after the header); fill in their labels or remove those rows"
        )
    kinds = set()
    clean: list[Any] = []
    for row, v in enumerate(values):
        if isinstance(v, float) and v.is_integer():
            v = int(v)
        if isinstance(v, np.integer):
            v = int(v)
        if isinstance(v, bool) or not isinstance(v, int | str):
            raise DataError(
                f"label {v!r} in row {row} of {source} is neither a string nor an integer "
                "(a missing value?); fix or drop that row"
            )
        kinds.add(type(v))
        clean.append(v)
    if len(kinds) > 1:
        raise DataError(f"labels in {source} mix strings and integers; use one kind")
    if label_names is None:
        uniques = sorted(set(clean))
        index = {v: i for i, v in enumerate(uniques)}
        return np.array([index[v] for v in clean], np.int32), [str(v) for v in uniques]
    names = [str(n) for n in label_names]
    if len(set(names)) != len(names):
        raise DataError(f"label_names contain duplicates: {names}")
    if kinds == {int}:
        for row, v in enumerate(clean):
            if not 0 <= v < len(names):
                raise DataError(
                    f"integer label {v} in row {row} of {source} is not a valid id for the "
                    f"{len(names)} known labels [{_show_labels(names)}]; integer labels are ids"
                )
        return np.array(clean, np.int32), names
    index = {n: i for i, n in enumerate(names)}
    ids = np.empty(len(clean), np.int32)
    for row, v in enumerate(clean):
        if v not in index:
            raise DataError(
                f"label {v!r} in row {row} of {source} is not a known label; known labels: "
                f"[{_show_labels(names)}]. Add it to label_names (or the label names file), "
                "or remove the row"
            )
        ids[row] = index[v]
    return ids, names


def select_per_class(
    labels: np.ndarray, examples_per_class: int, seed: int, label_names: Sequence[str]
) -> np.ndarray:
    """Sorted indices of ``examples_per_class`` examples of every class (see module docstring)."""
    if examples_per_class < 1:
        raise DataError(f"examples_per_class must be >= 1; got {examples_per_class}")
    chosen = []
    for c, name in enumerate(label_names):
        members = np.flatnonzero(labels == c)
        if len(members) < examples_per_class:
            counts = np.bincount(labels, minlength=len(label_names))
            smallest = int(counts.min())
            fix = (
                f"lower examples_per_class to at most {smallest} (the smallest class) or leave "
                "the class out with classes=[...]"
                if smallest
                else f"class {label_names[int(counts.argmin())]!r} has no examples at all: leave "
                "it out with classes=[...] (or check label_names)"
            )
            raise DataError(
                f"examples_per_class={examples_per_class} but class {name!r} (id {c}) has only "
                f"{len(members)} examples; {fix}"
            )
        order = np.random.default_rng([seed, c]).permutation(len(members))
        chosen.append(members[order[:examples_per_class]])
    return np.sort(np.concatenate(chosen)) if chosen else np.zeros(0, np.int64)


def select(
    data: ClassificationData,
    *,
    classes: Sequence[int | str] | None = None,
    examples_per_class: int | None = None,
    max_examples: int | None = None,
    seed: int = 0,
    source: str = "data",
) -> ClassificationData:
    """Keep ``classes`` (remapped to ids 0..k-1 in the order given), then ``examples_per_class``
    per class, then a random ``max_examples``; deterministic in ``seed``; file order is kept.

    Raises DataError if nothing is left (or nothing was there), naming ``source``.
    """
    if data.regression and (classes is not None or examples_per_class is not None):
        what = "classes" if classes is not None else "examples_per_class"
        raise DataError(f"{what} selects by class; {source} holds regression targets (use "
                        "max_examples to take fewer examples)")  # fmt: skip
    if classes is not None:
        ids = []
        for c in classes:
            if isinstance(c, str):
                if c not in data.label_names:
                    raise DataError(
                        f"class {c!r} is not a label of {source}; labels: "
                        f"[{_show_labels(data.label_names)}]"
                    )
                c = data.label_names.index(c)
            if not 0 <= int(c) < data.num_classes:
                raise DataError(f"class id {c} out of range for {data.num_classes} classes")
            ids.append(int(c))
        if len(set(ids)) != len(ids) or not ids:
            raise DataError(f"classes must be non-empty and distinct; got {list(classes)}")
        remap = np.full(data.num_classes, -1, np.int32)
        remap[ids] = np.arange(len(ids), dtype=np.int32)
        keep = np.flatnonzero(remap[data.labels] >= 0)
        data = data.select(keep)
        data = dataclasses.replace(
            data, labels=remap[data.labels], label_names=[data.label_names[i] for i in ids]
        )
    if examples_per_class is not None:
        data = data.select(
            select_per_class(data.labels, examples_per_class, seed, data.label_names)
        )
    if max_examples is not None:
        if max_examples < 1:
            raise DataError(f"max_examples must be >= 1; got {max_examples}")
        if data.num_examples > max_examples:
            keep = np.random.default_rng([seed, 0x5E1EC7]).permutation(data.num_examples)
            data = data.select(np.sort(keep[:max_examples]))
    if data.num_examples == 0:
        filters = {"classes": classes, "examples_per_class": examples_per_class}
        used = {k: v for k, v in filters.items() if v is not None}
        raise DataError(
            f"{source} has no examples" + (f" after filtering with {used}" if used else "")
        )
    return data


__all__ = [
    "ClassificationData",
    "DataError",
    "map_labels",
    "require_path",
    "select",
    "select_per_class",
]
