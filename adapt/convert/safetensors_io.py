"""Read and write Hugging Face safetensors checkpoints without torch, one tensor at a time.

Why our own reader: ``safetensors.safe_open`` memory-maps the whole file, and every page it touches
stays in the process's resident set, so converting a checkpoint would cost file size (mapped) plus
file size (converted copies). Reading each tensor with ``readinto`` from its byte range keeps peak
memory at about one copy of the weights plus the largest tensor. The format is tiny: an 8-byte
little-endian header length, a JSON header ``{name: {dtype, shape, data_offsets}}`` and raw
little-endian bytes.

Both layouts Hugging Face writes are handled: a single ``model.safetensors`` and a sharded
checkpoint described by ``model.safetensors.index.json``.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import ml_dtypes
import numpy as np

from adapt.errors import AdaptError

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"

_DTYPES: dict[str, np.dtype] = {
    "F64": np.dtype(np.float64),
    "F32": np.dtype(np.float32),
    "F16": np.dtype(np.float16),
    "BF16": np.dtype(ml_dtypes.bfloat16),
    "I64": np.dtype(np.int64),
    "I32": np.dtype(np.int32),
    "I16": np.dtype(np.int16),
    "I8": np.dtype(np.int8),
    "U8": np.dtype(np.uint8),
    "BOOL": np.dtype(np.bool_),
}
_DTYPE_NAMES = {v: k for k, v in _DTYPES.items()}
_MAX_HEADER_BYTES = 100 * 1024 * 1024


class CheckpointFormatError(AdaptError, ValueError):
    """A checkpoint file is missing, truncated or not valid safetensors."""


@dataclass(frozen=True)
class TensorInfo:
    """Where one tensor lives: its file, byte range, dtype and shape."""

    path: Path
    dtype: np.dtype
    shape: tuple[int, ...]
    start: int  # absolute byte offset in the file
    end: int


def _read_header(path: Path) -> dict[str, TensorInfo]:
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            raw_len = f.read(8)
            if len(raw_len) != 8:
                raise CheckpointFormatError(
                    f"{path}: file is shorter than the 8-byte header length"
                )
            (header_len,) = struct.unpack("<Q", raw_len)
            if header_len > min(size - 8, _MAX_HEADER_BYTES):
                raise CheckpointFormatError(
                    f"{path}: header length {header_len} does not fit in a {size}-byte file; "
                    "the file is truncated or not safetensors"
                )
            header = json.loads(f.read(header_len))
    except FileNotFoundError as e:
        raise CheckpointFormatError(f"{path}: no such file") from e
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointFormatError(f"{path}: the header is not valid JSON ({e})") from e
    if not isinstance(header, dict):
        raise CheckpointFormatError(f"{path}: the header is not a JSON object")
    data_start = 8 + header_len
    infos = {}
    for name, meta in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype = _DTYPES[meta["dtype"]]
            shape = tuple(int(d) for d in meta["shape"])
            begin, end = (int(o) for o in meta["data_offsets"])
        except (KeyError, TypeError, ValueError) as e:
            raise CheckpointFormatError(f"{path}: bad header entry for {name!r}: {meta}") from e
        expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        if end - begin != expected or data_start + end > size:
            raise CheckpointFormatError(
                f"{path}: tensor {name!r} {meta['dtype']}{list(shape)} needs {expected} bytes at "
                f"[{begin}, {end}) but the file holds {size - data_start} data bytes; "
                "the file is truncated or corrupt"
            )
        infos[name] = TensorInfo(path, dtype, shape, data_start + begin, data_start + end)
    return infos


def aligned_empty(shape: tuple[int, ...], dtype: np.dtype, align: int = 64) -> np.ndarray:
    """An uninitialised array whose data starts on an ``align``-byte boundary.

    XLA's CPU client adopts a 64-byte-aligned host buffer in ``jax.device_put`` without copying;
    numpy's own allocations are only 16-byte aligned, which costs a staging copy (and
    ``jnp.asarray`` copies once more), up to three live copies of a tensor during conversion.
    """
    dtype = np.dtype(dtype)
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    raw = np.empty(nbytes + align, np.uint8)
    start = (-raw.ctypes.data) % align
    return raw[start : start + nbytes].view(dtype).reshape(shape)


class SafetensorsReader(Mapping[str, np.ndarray]):
    """A read-only mapping ``name -> np.ndarray`` over a checkpoint; each access reads one tensor.

    Accepts a ``.safetensors`` file or a directory holding ``model.safetensors`` or a sharded
    ``model.safetensors.index.json``.
    """

    def __init__(self, path: str | os.PathLike):
        path = Path(path)
        self.infos: dict[str, TensorInfo] = {}
        if path.is_dir():
            if (path / INDEX_FILE).exists():
                self._read_index(path / INDEX_FILE)
            elif (path / SINGLE_FILE).exists():
                self.infos = _read_header(path / SINGLE_FILE)
            else:
                found = sorted(p.name for p in path.iterdir())
                raise CheckpointFormatError(
                    f"{path}: no {SINGLE_FILE} or {INDEX_FILE} here (found: {found}). "
                    "Point at a Hugging Face model directory saved with safetensors."
                )
        else:
            self.infos = _read_header(path)

    def _read_index(self, index_path: Path) -> None:
        try:
            weight_map = json.loads(index_path.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError) as e:
            raise CheckpointFormatError(f"{index_path}: not a valid index ({e})") from e
        headers: dict[str, dict[str, TensorInfo]] = {}
        for name, shard in weight_map.items():
            if shard not in headers:
                headers[shard] = _read_header(index_path.parent / shard)
            if name not in headers[shard]:
                raise CheckpointFormatError(
                    f"{index_path}: index says {name!r} is in {shard}, but that shard lacks it"
                )
            self.infos[name] = headers[shard][name]

    def __getitem__(self, name: str) -> np.ndarray:
        info = self.infos[name]
        out = aligned_empty(info.shape, info.dtype)
        with open(info.path, "rb") as f:
            f.seek(info.start)
            view = memoryview(out.reshape(-1).view(np.uint8))
            if f.readinto(view) != info.end - info.start:
                raise CheckpointFormatError(f"{info.path}: short read for tensor {name!r}")
        return out

    def __iter__(self) -> Iterator[str]:
        return iter(self.infos)

    def __len__(self) -> int:
        return len(self.infos)

    def shapes(self) -> dict[str, tuple[int, ...]]:
        return {k: v.shape for k, v in self.infos.items()}

    @property
    def nbytes(self) -> int:
        return sum(v.end - v.start for v in self.infos.values())


def write_file(path: Path, tensors: Mapping[str, np.ndarray], metadata: dict | None = None) -> None:
    """Write one safetensors file atomically (a temp file renamed into place)."""
    header: dict = {}
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    offset = 0
    arrays = {}
    for name, value in tensors.items():
        arr = np.asarray(value)
        if arr.dtype not in _DTYPE_NAMES:
            raise TypeError(f"cannot write tensor {name!r} of dtype {arr.dtype} to safetensors")
        arrays[name] = arr
        header[name] = {
            "dtype": _DTYPE_NAMES[arr.dtype],
            "shape": list(arr.shape),
            "data_offsets": [offset, offset + arr.nbytes],
        }
        offset += arr.nbytes
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)  # align the data section as the reference writer does
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(blob)))
        f.write(blob)
        for arr in arrays.values():
            # Raw bytes (safetensors is little-endian, as are all hosts JAX runs on); the uint8
            # view also covers bfloat16, which has no buffer-protocol format code.
            f.write(np.ascontiguousarray(arr).reshape(-1).view(np.uint8).data)
    os.replace(tmp, path)  # never leave a half-written checkpoint under the final name


def save_safetensors(
    tensors: Mapping[str, np.ndarray],
    directory: str | os.PathLike,
    *,
    max_shard_bytes: int | None = None,
    metadata: dict | None = None,
) -> list[Path]:
    """Write ``tensors`` as Hugging Face does: one ``model.safetensors`` or shards plus an index."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    metadata = {"format": "pt", **(metadata or {})}
    sizes = {k: np.asarray(v).nbytes for k, v in tensors.items()}
    if max_shard_bytes is None or sum(sizes.values()) <= max_shard_bytes:
        write_file(directory / SINGLE_FILE, tensors, metadata)
        return [directory / SINGLE_FILE]
    shards: list[list[str]] = [[]]
    used = 0
    for name, size in sizes.items():
        if shards[-1] and used + size > max_shard_bytes:
            shards.append([])
            used = 0
        shards[-1].append(name)
        used += size
    paths, weight_map = [], {}
    for i, names in enumerate(shards):
        fname = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        write_file(directory / fname, {n: tensors[n] for n in names}, metadata)
        weight_map.update(dict.fromkeys(names, fname))
        paths.append(directory / fname)
    index = {"metadata": {"total_size": sum(sizes.values())}, "weight_map": weight_map}
    (directory / INDEX_FILE).write_text(json.dumps(index, indent=2))
    return paths
