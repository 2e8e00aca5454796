"""Read PyTorch's legacy (pre-1.6, non-zip) ``torch.save`` files without torch, into numpy.

Why: released checkpoints such as akamaster's CIFAR ResNets are in this format, and adapt should
load them without a 2 GB torch install. Why not plain ``pickle.load``: a torch file is a pickle,
and unpickling runs whatever callables the file names. This reader resolves only a short allow
list of names (``collections.OrderedDict``, torch's tensor-rebuild functions and storage types)
and rebuilds tensors as numpy arrays; anything else raises :class:`LegacyFormatError`.

The format, as written by ``torch.serialization._legacy_save``: five consecutive pickles, then raw
storages::

    pickle(MAGIC_NUMBER = 0x1950a86a20f9469cfc6c)
    pickle(PROTOCOL_VERSION = 1001)
    pickle(sys_info = {"little_endian": bool, "type_sizes": {...}, ...})
    pickle(obj)           # storages appear as persistent ids:
                          #   ("storage", StorageType, key, location, numel, view_metadata)
    pickle(storage_keys)  # the keys of the storages that follow, in file order
    for each key: int64 element count, then count * itemsize raw bytes (byte order: sys_info)

Tensors in ``obj`` are ``torch._utils._rebuild_tensor[_v2](storage, offset, size, stride, ...)``
calls. Those run before the storages are read, so they return placeholders that are replaced by
numpy arrays once the data is in.
"""

from __future__ import annotations

import os
import pickle
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import ml_dtypes
import numpy as np

from adapt.errors import AdaptError

MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
PROTOCOL_VERSION = 1001

_STORAGE_DTYPES: dict[str, np.dtype] = {
    "DoubleStorage": np.dtype(np.float64),
    "FloatStorage": np.dtype(np.float32),
    "HalfStorage": np.dtype(np.float16),
    "BFloat16Storage": np.dtype(ml_dtypes.bfloat16),
    "LongStorage": np.dtype(np.int64),
    "IntStorage": np.dtype(np.int32),
    "ShortStorage": np.dtype(np.int16),
    "CharStorage": np.dtype(np.int8),
    "ByteStorage": np.dtype(np.uint8),
    "BoolStorage": np.dtype(np.bool_),
}


class LegacyFormatError(AdaptError, ValueError):
    """Not a legacy torch file, a truncated one, or one that names code we refuse to run."""


@dataclass(frozen=True)
class _StorageType:
    """Stands in for ``torch.FloatStorage`` & co. while unpickling."""

    name: str
    dtype: np.dtype


class _Storage:
    """A storage (or a view into one); ``data`` is filled once the raw bytes have been read."""

    def __init__(self, key: str, dtype: np.dtype, numel: int):
        self.key, self.dtype, self.numel = key, dtype, numel
        self.data: np.ndarray | None = None
        self.root: _Storage | None = None  # set for views
        self.offset = 0

    def array(self) -> np.ndarray:
        if self.root is not None:
            return self.root.array()[self.offset : self.offset + self.numel]
        if self.data is None:
            raise LegacyFormatError(f"storage {self.key!r} is used but its data was never written")
        return self.data


@dataclass
class _TensorRef:
    storage: _Storage
    offset: int
    size: tuple[int, ...]
    stride: tuple[int, ...]

    def materialize(self) -> np.ndarray:
        flat = self.storage.array()
        if not self.size:
            return flat[self.offset : self.offset + 1].reshape(()).copy()
        last = self.offset + sum((n - 1) * s for n, s in zip(self.size, self.stride, strict=True))
        if self.offset < 0 or (min(self.size) > 0 and last >= flat.size):
            raise LegacyFormatError(
                f"tensor of size {self.size}, stride {self.stride} at offset {self.offset} "
                f"runs past its storage of {flat.size} elements"
            )
        view = np.lib.stride_tricks.as_strided(
            flat[self.offset :],
            shape=self.size,
            strides=tuple(s * flat.itemsize for s in self.stride),
            writeable=False,
        )
        return np.array(view)  # own, contiguous copy: no aliasing between tensors


def _rebuild_tensor(storage, storage_offset, size, stride, *_ignored) -> _TensorRef:
    # _rebuild_tensor_v2 adds requires_grad, backward_hooks[, metadata]: irrelevant to the values.
    if not isinstance(storage, _Storage):
        raise LegacyFormatError(f"tensor rebuilt from {type(storage).__name__}, not a storage")
    return _TensorRef(storage, int(storage_offset), tuple(size), tuple(stride))


def _rebuild_parameter(data, requires_grad=None, backward_hooks=None, *_ignored):
    return data


_ALLOWED: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): OrderedDict,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    **{("torch", name): _StorageType(name, dt) for name, dt in _STORAGE_DTYPES.items()},
}


class _Unpickler(pickle.Unpickler):
    def __init__(self, f: BinaryIO, storages: dict[str, _Storage]):
        super().__init__(f, encoding="latin1")  # latin1: Python 2 pickles' str keys
        self.storages = storages

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise LegacyFormatError(
                f"refusing to unpickle {module}.{name}: only state dicts of tensors (and plain "
                "Python values) are read without torch. Load the file with torch and save its "
                "state_dict() instead."
            ) from None

    def persistent_load(self, pid: Any) -> Any:
        if not isinstance(pid, tuple) or not pid:
            raise LegacyFormatError(f"unexpected persistent id {pid!r}")
        kind = pid[0].decode("ascii") if isinstance(pid[0], bytes) else pid[0]
        if kind == "module":
            raise LegacyFormatError(
                "the file pickles a whole nn.Module; only state dicts can be read without torch"
            )
        if kind != "storage" or len(pid) != 6:
            raise LegacyFormatError(f"unexpected persistent id {pid!r}")
        storage_type, key, _location, numel, view = pid[1:]
        if not isinstance(storage_type, _StorageType):
            raise LegacyFormatError(f"unexpected storage type {storage_type!r}")
        root = self.storages.get(key)
        if root is None:
            root = self.storages[key] = _Storage(key, storage_type.dtype, int(numel))
        if view is None:
            return root
        view_key, offset, view_numel = view
        if view_key not in self.storages:
            sub = _Storage(view_key, root.dtype, int(view_numel))
            sub.root, sub.offset = root, int(offset)
            self.storages[view_key] = sub
        return self.storages[view_key]


def _replace_refs(obj: Any) -> Any:
    if isinstance(obj, _TensorRef):
        return obj.materialize()
    if isinstance(obj, dict):  # OrderedDict keeps its type and order
        out = type(obj)()
        for k, v in obj.items():
            out[k] = _replace_refs(v)
        return out
    if isinstance(obj, list):
        return [_replace_refs(v) for v in obj]
    if isinstance(obj, tuple):
        return tuple(_replace_refs(v) for v in obj)
    return obj


def is_legacy_torch_file(path: str | os.PathLike) -> bool:
    """Whether ``path`` starts with the legacy format's pickled magic number."""
    try:
        with open(path, "rb") as f:
            return _safe_plain_load(f) == MAGIC_NUMBER
    except (LegacyFormatError, OSError, pickle.UnpicklingError, EOFError, ValueError):
        return False


def _safe_plain_load(f: BinaryIO) -> Any:
    """Unpickle a header value; no globals or persistent ids may appear in it."""
    return _Unpickler(f, {}).load()


def _read_storage(f: BinaryIO, storage: _Storage, little_endian: bool) -> None:
    order = "<" if little_endian else ">"
    head = f.read(8)
    if len(head) != 8:
        raise LegacyFormatError(f"file ends before storage {storage.key!r}")
    count = int(np.frombuffer(head, np.dtype(f"{order}i8"))[0])
    if count != storage.numel:
        raise LegacyFormatError(
            f"storage {storage.key!r}: {count} elements on disk, {storage.numel} in the pickle"
        )
    out = np.empty(count, storage.dtype)
    got = f.readinto(memoryview(out.view(np.uint8)))
    if got != out.nbytes:
        raise LegacyFormatError(
            f"file ends inside storage {storage.key!r} ({got} of {out.nbytes} bytes)"
        )
    if not little_endian and out.dtype.itemsize > 1:
        out = out.view(out.dtype.newbyteorder(">")).astype(storage.dtype)
    storage.data = out


def load_legacy(path: str | os.PathLike) -> Any:
    """Load a legacy ``torch.save`` file; every tensor comes back as a numpy array.

    >>> ckpt = load_legacy("third_party/resnet20_cifar10/resnet20-12fca82f.th")
    >>> ckpt["state_dict"]["module.conv1.weight"].shape
    (16, 3, 3, 3)
    """
    path = Path(path)
    with open(path, "rb") as f:
        head = f.read(4)
        if head.startswith(b"PK\x03\x04"):
            raise LegacyFormatError(
                f"{path}: a zip-based torch.save file (torch >= 1.6), not the legacy format; "
                "read it with torch.load(weights_only=True) and save the arrays as safetensors"
            )
        f.seek(0)
        try:
            magic = _safe_plain_load(f)
            if magic != MAGIC_NUMBER:
                raise LegacyFormatError(f"{path}: not a legacy torch file (bad magic number)")
            version = _safe_plain_load(f)
            if version != PROTOCOL_VERSION:
                raise LegacyFormatError(f"{path}: unsupported protocol version {version!r}")
            sys_info = _safe_plain_load(f)
            storages: dict[str, _Storage] = {}
            obj = _Unpickler(f, storages).load()
            keys = _safe_plain_load(f)
        except (pickle.UnpicklingError, EOFError, TypeError, AttributeError, IndexError) as e:
            raise LegacyFormatError(f"{path}: not a readable legacy torch file ({e})") from e
        little_endian = bool(sys_info.get("little_endian", True))
        if not isinstance(keys, list) or set(keys) - set(storages):
            raise LegacyFormatError(f"{path}: storage key list does not match the pickled object")
        for key in keys:
            _read_storage(f, storages[key], little_endian)
    return _replace_refs(obj)


def load_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """The tensors of a legacy checkpoint: the object itself if it is a state dict, else its
    ``"state_dict"`` entry (the common ``{"state_dict": ..., "epoch": ...}`` layout)."""
    obj = load_legacy(path)
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, np.ndarray) for v in obj.values()):
        raise LegacyFormatError(f"{path}: holds no state dict of tensors")
    return dict(obj)


__all__ = ["LegacyFormatError", "is_legacy_torch_file", "load_legacy", "load_state_dict"]
