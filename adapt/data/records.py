"""Examples as records read at random: ArrayRecord files of JSON records (through Grain's
``ArrayRecordDataSource``) or a prepared TFDS data set (``tfds.data_source``).

:mod:`adapt.data.streaming` reads training batches from these without loading them; the table
reader (:mod:`adapt.data.tables`) reads a small ``.array_record`` file whole. A source is an
``.array_record`` file, a folder holding ``{split}.array_record`` or shards
``{split}-*.array_record``, a glob, or ``"tfds:<name>"``; each ArrayRecord record is one example
as a UTF-8 JSON object (:func:`write_array_record` writes them).
"""

from __future__ import annotations

import dataclasses
import glob
import json
import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from adapt.data.dataset import DataError, require_path

_HINT = "pip install 'adapt-jax[streaming]' (in a checkout: pip install -e '.[streaming]')"


def _plain(value: Any) -> Any:
    """numpy values as JSON values (an image array as nested lists of ints)."""
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def write_array_record(path: str | os.PathLike, rows: Iterable[dict]) -> int:
    """Write ``rows`` (JSON-serialisable dicts) as one ``.array_record`` file of JSON records,
    one record per row, readable at random (``group_size:1``); returns the number written."""
    try:
        from array_record.python.array_record_module import ArrayRecordWriter
    except ImportError as e:
        raise DataError(f"writing ArrayRecord files needs array_record; {_HINT}") from e
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = ArrayRecordWriter(str(path), "group_size:1")
    count = 0
    try:
        for row in rows:
            writer.write(json.dumps(row, ensure_ascii=False, default=_plain).encode("utf-8"))
            count += 1
    finally:
        writer.close()
    return count


@dataclasses.dataclass(frozen=True, eq=False)
class Records:
    """Random access to the examples of one split: ``get(indices)`` decodes those records only.

    ``source`` has ``__len__`` and ``__getitem__`` (Grain's and TFDS's data sources);
    ``decode`` turns one record into ``{column: value}``; ``where`` names it in errors."""

    source: Any
    decode: Callable[[Any], dict]
    where: str
    class_names: dict[str, list[str]] = dataclasses.field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.source)

    def get(self, indices: Sequence[int]) -> list[dict]:
        keys = [int(i) for i in indices]
        getitems = getattr(self.source, "__getitems__", None)
        raw = getitems(keys) if getitems is not None else [self.source[k] for k in keys]
        return [self.decode(r) for r in raw]


def _json_record(where: str) -> Callable[[bytes], dict]:
    def decode(record: bytes) -> dict:
        try:
            row = json.loads(record)
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise DataError(
                f"a record of {where} is not a UTF-8 JSON object ({e}); streamed ArrayRecord "
                "files hold one JSON object per record (adapt.data.streaming.write_array_record)"
            ) from None
        if not isinstance(row, dict):
            raise DataError(f"a record of {where} is JSON {type(row).__name__}, not an object")
        return row

    return decode


def _array_record_files(source: str, split: str) -> list[str]:
    if glob.has_magic(source):
        files = sorted(glob.glob(source))
        if not files:
            raise DataError(f"no file matches {source}")
        return files
    path = require_path(source, "ArrayRecord file or folder")
    if path.is_file():
        return [str(path)]
    files = sorted({*glob.glob(str(path / f"{split}.array_record")),
                    *glob.glob(str(path / f"{split}-*.array_record"))})  # fmt: skip
    if not files:
        present = sorted(p.name for p in path.iterdir())
        raise DataError(
            f"no ArrayRecord file for split {split!r} in {path}: looked for {split}.array_record "
            f"and {split}-*.array_record; the folder contains: {', '.join(present[:30])}"
        )
    return files


def _tfds_records(name: str, split: str, data_dir: str | None) -> Records:
    from adapt.data.tfds_source import open_prepared

    source, class_names, text_keys = open_prepared(name, split, data_dir)

    def decode(record: dict) -> dict:
        return {
            k: (v.decode("utf-8") if k in text_keys and isinstance(v, bytes) else v)
            for k, v in record.items()
        }

    return Records(source, decode, f"TFDS data set {name} ({split})", class_names)


def open_records(source: str, split: str, data_dir: str | None = None) -> Records:
    """The records of ``split`` of ``source`` (module docstring), opened for random access."""
    source = str(source)
    if source.startswith("tfds:"):
        return _tfds_records(source.removeprefix("tfds:"), split, data_dir)
    if source.startswith("hub:"):
        raise DataError(
            "streaming reads ArrayRecord files or prepared tfds: data sets, not hub: names; "
            "save the data set as ArrayRecord (adapt.data.streaming.write_array_record)"
        )
    files = _array_record_files(source, split)
    if any(not f.endswith(".array_record") for f in files):
        raise DataError(
            f"streaming reads .array_record files; got {[f for f in files if not f.endswith('.array_record')][:3]}"
            " (convert a table with adapt.data.streaming.write_array_record, or set "
            "data.streaming=False to read it into memory)"
        )
    try:
        from grain.sources import ArrayRecordDataSource
    except ImportError as e:
        raise DataError(f"streaming needs Grain; {_HINT}") from e
    where = files[0] if len(files) == 1 else f"{len(files)} ArrayRecord shards ({files[0]}, ...)"
    return Records(ArrayRecordDataSource(files), _json_record(where), where)


__all__ = ["Records", "open_records", "write_array_record"]
