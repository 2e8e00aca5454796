"""Tables of examples read through Hugging Face ``datasets``: local files or (online) the hub.

``source`` is a file (``.csv``, ``.tsv``, ``.json``/``.jsonl``, ``.parquet``, ``.array_record`` of
JSON records, :mod:`adapt.data.records`), a folder holding
``{split}.<one of those>``, ``"hub:<name>"`` for a hub data set (needs the network; nothing
in adapt requires it), or ``"tfds:<name>"`` for a prepared TensorFlow Datasets data set under
``data_dir`` (:mod:`adapt.data.tfds_source`; its class labels keep their names as a
``ClassLabel`` feature). ``.tsv`` is read GLUE-style: tab-separated with no quoting. CSV cells such
as ``NA`` stay text rather than becoming missing values. ``datasets`` caches its Arrow copy under
``cache_dir`` (default: its own cache folder), never beside the data.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from adapt.data.dataset import DataError, require_path
from adapt.data.tfds_source import read_prepared

FORMATS = {".csv": "csv", ".tsv": "csv", ".json": "json", ".jsonl": "json", ".parquet": "parquet",
           ".array_record": "array_record"}  # fmt: skip


def _find_file(source: Path, split: str) -> Path:
    if source.is_file():
        return source
    candidates = [source / f"{split}{ext}" for ext in FORMATS]
    for path in candidates:
        if path.is_file():
            return path
    present = sorted(p.name for p in source.iterdir())
    raise DataError(
        f"no file for split {split!r} in {source}: looked for "
        f"{', '.join(p.name for p in candidates)}; the folder contains: {', '.join(present)}"
    )


def read_table(
    source: str | os.PathLike,
    split: str,
    *,
    delimiter: str | None,
    cache_dir: str | os.PathLike | None,
    dataset_config: str | None,
    data_dir: str | os.PathLike | None = None,
) -> tuple[Any, str]:
    """A ``datasets.Dataset`` and a description of where it came from (for error messages)."""
    import datasets  # heavy; only text/LM loading needs it

    if isinstance(source, str) and source.startswith("tfds:"):
        name = source.removeprefix("tfds:")
        columns, class_names = read_prepared(name, split, data_dir)
        table = datasets.Dataset.from_dict(columns)
        for key, names in class_names.items():
            table = table.cast_column(key, datasets.ClassLabel(names=names))
        return table, f"TFDS data set {name} ({split})"

    if isinstance(source, str) and source.startswith("hub:"):
        name = source.removeprefix("hub:")
        try:
            table = datasets.load_dataset(name, dataset_config, split=split, cache_dir=cache_dir)
        except Exception as e:  # noqa: BLE001 - offline, unknown name, bad split: say so plainly
            raise DataError(
                f"could not load hub data set {name!r} (split {split!r}): {e}. Offline, download "
                "it once elsewhere and pass the local file instead"
            ) from e
        return table, f"hub data set {name} ({split})"
    path = _find_file(require_path(source, "data file or folder"), split)
    suffix = path.suffix.lower()
    if suffix not in FORMATS:
        raise DataError(
            f"cannot read {path}: unknown extension {suffix!r}; use one of {list(FORMATS)}"
        )
    if path.stat().st_size == 0:
        raise DataError(f"{path} is empty (0 bytes); it should hold a header and examples")
    if FORMATS[suffix] == "array_record":  # JSON records (adapt.data.records), read whole
        from adapt.data.records import open_records

        records = open_records(str(path), split)
        rows = records.get(range(len(records)))
        if not rows:
            raise DataError(f"{path} has no examples")
        return datasets.Dataset.from_list(rows), str(path)
    kwargs: dict[str, Any] = {}
    if FORMATS[suffix] == "csv":
        kwargs["keep_default_na"] = False  # a text cell "NA" is text, not a missing value
        kwargs["delimiter"] = delimiter or ("\t" if suffix == ".tsv" else ",")
        if suffix == ".tsv":
            kwargs["quoting"] = 3  # csv.QUOTE_NONE: GLUE's TSVs contain bare quotes
    try:
        table = datasets.load_dataset(
            FORMATS[suffix],
            data_files={"train": str(path)},
            split="train",
            cache_dir=cache_dir,
            **kwargs,
        )
    except Exception as e:  # noqa: BLE001 - datasets raises many kinds; name the file always
        if "corresponds to no data" in str(e):  # datasets' way of saying the file has no rows
            raise DataError(f"{path} has no examples (only a header, or nothing at all)") from e
        cause = e.__cause__ or e.__context__
        detail = f"{e}" + (f" ({type(cause).__name__}: {cause})" if cause else "")
        raise DataError(f"could not read {path} as {FORMATS[suffix]}: {detail}") from e
    return table, str(path)


def column(table: Any, name: str, role: str, where: str) -> list:
    if name not in table.column_names:
        raise DataError(
            f"{role} column {name!r} not found in {where}; available columns: {table.column_names}"
            f" (set data.{role}_column)"
        )
    return list(table.select_columns([name])[:][name])  # one batched read; iterating is slow


def class_names(table: Any, name: str) -> list[str] | None:
    """The names of a column that is a ``ClassLabel`` (TFDS, many hub data sets), in id order."""
    feature = getattr(table, "features", {}).get(name)
    return list(feature.names) if type(feature).__name__ == "ClassLabel" else None


__all__ = ["FORMATS", "class_names", "column", "read_table"]
