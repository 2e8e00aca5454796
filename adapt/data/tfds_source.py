"""Prepared TensorFlow Datasets data sets (``"tfds:<name>"`` sources), read without TensorFlow
and without the network.

TFDS reads an ``array_record`` (or ``parquet``) preparation with random access
(``tfds.data_source``), so a data set built once where there is network (``tfds build <name>
--file_format=array_record``) or by your own ``GeneratorBasedBuilder``, then copied into
``data_dir``, is read here column by column. Nothing is ever downloaded or generated: a data set
that is not prepared under ``data_dir`` (default: TFDS's, ``~/tensorflow_datasets`` or
``$TFDS_DATA_DIR``) is a :class:`DataError` that says how to prepare it. A folder of prepared
data holds its ``dataset_info.json``, so a data set built by a builder class the reading process
never imported is read from its files alone.

``name`` may carry TFDS's config and version (``"my_set/small:1.0.0"``). Text features are
decoded to ``str``; class labels stay integer ids, and their names (in id order) come back
beside the columns.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from adapt.data.dataset import DataError

_HINT = "pip install 'adapt-jax[tfds]' (in a checkout: pip install -e '.[tfds]')"


def _tfds():
    try:
        import tensorflow_datasets as tfds
    except ImportError as e:
        raise DataError(f"tfds: sources need tensorflow_datasets; {_HINT}") from e
    return tfds


def open_prepared(
    name: str, split: str, data_dir: str | os.PathLike | None = None
) -> tuple[Any, dict[str, list[str]], set[str]]:
    """``(source, class_names, text_features)``: the random-access ``tfds.data_source`` of one
    split (records are dicts of features, text as bytes), the names of each class-label
    feature, and which features are text."""
    tfds = _tfds()
    where = f"under data_dir={data_dir}" if data_dir else "in TFDS's default data_dir"
    builder = None
    try:
        builder = tfds.builder(name, data_dir=data_dir)
        source = tfds.data_source(name, split=split, data_dir=data_dir, download=False)
    except Exception as e:  # noqa: BLE001 - tfds raises many kinds
        reason = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        slice_error = _slice_error(builder, name, split)
        if slice_error:  # prepared, but the split's slice selects nothing or is out of range
            raise DataError(slice_error) from e
        raise DataError(
            f"TFDS data set {name!r} split {split!r} is not prepared {where} ({reason}); prepare "
            f"it where you have network (tfds build {name} --file_format=array_record) and copy "
            "it there"
        ) from e
    features = builder.info.features
    names = {
        key: list(feature.names)
        for key, feature in features.items()
        if isinstance(feature, tfds.features.ClassLabel)
    }
    text = {key for key, feature in features.items() if isinstance(feature, tfds.features.Text)}
    return source, names, text


def _slice_error(builder: Any, name: str, split: str) -> str | None:
    """The error for a prepared split whose slice (``"train[40:]"``) selects no records or lies
    outside it, or None when the split itself is what is missing. Looks only at the prepared
    files (a builder with no prepared version is left to the "not prepared" error)."""
    try:
        if builder is None or not builder.data_path.exists():
            return None
        prepared = dict(builder.info.splits)
    except Exception:  # noqa: BLE001 - anything here means: not a prepared data set
        return None
    if split.split("[")[0] not in prepared:
        return None
    sizes = ", ".join(f"{key} ({info.num_examples} records)" for key, info in prepared.items())
    try:
        count = builder.info.splits[split].num_examples
    except Exception as e:  # noqa: BLE001 - TFDS says what is wrong with the slice
        return (
            f"TFDS data set {name!r} split {split!r}: {str(e).splitlines()[0]}; prepared: {sizes}"
        )
    if count == 0:
        return (
            f"TFDS data set {name!r} split {split!r} selects no records (prepared: {sizes}); "
            "choose a slice that holds some"
        )
    return None


def read_prepared(
    name: str, split: str, data_dir: str | os.PathLike | None = None
) -> tuple[dict[str, list], dict[str, list[str]]]:
    """``(columns, class_names)`` of one split: every top-level feature as a list of values in
    the prepared (deterministic) order, and the names of each class-label feature."""
    source, names, text = open_prepared(name, split, data_dir)
    records = [source[i] for i in range(len(source))]
    columns: dict[str, list[Any]] = {key: [] for key in (records[0] if records else {})}
    for record in records:
        for key in columns:
            value = record[key]
            if key in text:
                value = value.decode("utf-8") if isinstance(value, bytes) else str(value)
            elif isinstance(value, np.generic):
                value = value.item()
            columns[key].append(value)
    return columns, names


__all__ = ["open_prepared", "read_prepared"]
