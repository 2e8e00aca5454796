"""Image classification: IDX / npz / TFDS readers, preprocessing and augmentation per batch.

Images stay uint8 ``(N, H, W, C)`` in memory (a grayscale source gets ``C = 1``) and are turned
into model input one batch at a time, so a 28x28 data set is not stored again at 224x224 float32.
For every batch, in this order:

1. geometry to ``image_size``: ``"pad"`` centres the image on a zero canvas (Fashion-MNIST 28 ->
   32 for the CIFAR ResNet-20; an image larger than the canvas is an error), ``"resize"``
   resamples bilinearly with half-pixel centres (no antialiasing: meant for upsampling, e.g. to a
   ViT's input size);
2. channels: a 1-channel image is repeated to ``channels`` (3 for RGB models);
3. augmentation, training batches only: zero-pad ``crop_padding`` pixels on each side and crop
   back at a random offset, then flip horizontally with probability 1/2 (torchvision's
   ``RandomCrop(size, padding)`` + ``RandomHorizontalFlip``). The offsets and flips of a global
   batch are drawn from ``np.random.default_rng([seed, step, 0xA06])``, so an augmented batch is
   a pure function of (seed, step) and every process slices the same draws;
4. scale to [0, 1] and normalise per channel with ``mean`` / ``std``; the result is float32 NHWC
   under ``pixel_values`` (``labels`` int32 beside it).

Sources for :func:`load_image_classification`: a folder with IDX files (``{train,t10k,test}-
{images-idx3,labels-idx1}-ubyte[.gz]``), an ``.npz`` with ``images`` and ``labels``, or
``"tfds:<name>"`` for an already prepared TFDS data set read with ``tfds.data_source`` (optional
``tensorflow_datasets``; nothing is ever downloaded). ``classes`` and ``examples_per_class``
select as in :func:`adapt.data.dataset.select` (e.g. classes 0-4 to pretrain, 5-9 to transfer).
"""

from __future__ import annotations

import dataclasses
import gzip
import os
import struct
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from adapt.data.dataset import ClassificationData, DataError, require_path, select
from adapt.data.tfds_source import read_prepared

FASHION_MNIST_CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]  # fmt: skip
AUGMENT_TAG = 0xA06  # keeps augmentation draws apart from the shuffling generator's


@dataclasses.dataclass(frozen=True)
class ImagePreprocessing:
    """How stored uint8 images become model input (see the module docstring, steps 1, 2, 4)."""

    image_size: int | tuple[int, int] | None = None
    resize: str = "pad"  # "pad" or "resize"
    channels: int | None = None
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)

    def __post_init__(self) -> None:
        if self.resize not in ("pad", "resize"):
            raise DataError(f"resize must be 'pad' or 'resize'; got {self.resize!r}")
        if any(s <= 0 for s in self.std):
            raise DataError(f"std must be positive; got {self.std}")


@dataclasses.dataclass(frozen=True)
class Augmentation:
    """Random crop after zero padding, and horizontal flips (step 3 of the module docstring)."""

    crop_padding: int = 0
    horizontal_flip: bool = False


@dataclasses.dataclass(frozen=True, eq=False)
class ImageClassificationData(ClassificationData):
    """``inputs['images']``: uint8 ``(N, H, W, C)``; batches are preprocessed on the fly."""

    preprocessing: ImagePreprocessing = ImagePreprocessing()
    augmentation: Augmentation | None = None

    def collate(
        self, indices: np.ndarray, rows: slice, *, seed: int, step: int, train: bool
    ) -> dict[str, np.ndarray]:
        local = indices[rows]
        x = geometry(self.inputs["images"][local], self.preprocessing)
        aug = self.augmentation
        if train and aug is not None and (aug.crop_padding or aug.horizontal_flip):
            rng = np.random.default_rng([seed, step, AUGMENT_TAG])
            offsets = rng.integers(0, 2 * aug.crop_padding + 1, size=(len(indices), 2))
            flips = rng.random(len(indices)) < 0.5
            if not aug.horizontal_flip:
                flips[:] = False
            x = augment(x, offsets[rows], flips[rows], aug.crop_padding)
        return {"pixel_values": normalize(x, self.preprocessing), "labels": self.labels[local]}


def geometry(images: np.ndarray, prep: ImagePreprocessing) -> np.ndarray:
    """uint8 NHWC -> float32 NHWC at ``prep.image_size`` with ``prep.channels`` (steps 1-2)."""
    x = images.astype(np.float32)
    if prep.image_size is not None:
        size = prep.image_size
        out_h, out_w = (size, size) if isinstance(size, int) else size
        _, h, w, _ = x.shape
        if prep.resize == "pad":
            if h > out_h or w > out_w:
                raise DataError(
                    f"cannot pad images of {h}x{w} to the smaller image_size {out_h}x{out_w}; "
                    "use resize='resize'"
                )
            top, left = (out_h - h) // 2, (out_w - w) // 2
            x = np.pad(x, ((0, 0), (top, out_h - h - top), (left, out_w - w - left), (0, 0)))
        elif (h, w) != (out_h, out_w):
            x = resize_bilinear(x, out_h, out_w)
    if prep.channels is not None and x.shape[-1] != prep.channels:
        if x.shape[-1] != 1:
            raise DataError(
                f"cannot turn {x.shape[-1]}-channel images into {prep.channels} channels; only "
                "1 -> C replication is supported"
            )
        x = np.repeat(x, prep.channels, axis=-1)
    return x


def resize_bilinear(x: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """Bilinear resampling of float NHWC with half-pixel centres and clamped edges."""

    def taps(n_in: int, n_out: int):
        pos = np.clip((np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5, 0, n_in - 1)
        lo = np.floor(pos).astype(np.int64)
        return lo, np.minimum(lo + 1, n_in - 1), (pos - lo).astype(np.float32)

    ylo, yhi, wy = taps(x.shape[1], out_h)
    xlo, xhi, wx = taps(x.shape[2], out_w)
    wy, wx = wy[None, :, None, None], wx[None, None, :, None]
    rows = x[:, ylo] * (1 - wy) + x[:, yhi] * wy
    return rows[:, :, xlo] * (1 - wx) + rows[:, :, xhi] * wx


def augment(x: np.ndarray, offsets: np.ndarray, flips: np.ndarray, padding: int) -> np.ndarray:
    """Zero-pad by ``padding``, crop each image back at ``offsets[i]`` (y, x), flip where asked."""
    n, h, w, _ = x.shape
    if padding:
        padded = np.pad(x, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
        x = np.stack([padded[i, dy : dy + h, dx : dx + w] for i, (dy, dx) in enumerate(offsets)])
    return np.where(flips[:, None, None, None], x[:, :, ::-1], x)


def normalize(x: np.ndarray, prep: ImagePreprocessing) -> np.ndarray:
    """[0, 255] -> [0, 1] -> ``(x - mean) / std`` per channel, float32 (step 4)."""
    mean = np.asarray(prep.mean, np.float32)
    std = np.asarray(prep.std, np.float32)
    for name, v in (("mean", mean), ("std", std)):
        if v.size not in (1, x.shape[-1]):
            raise DataError(f"{name} has {v.size} values for {x.shape[-1]}-channel images")
    return ((x / 255.0 - mean) / std).astype(np.float32)


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """An IDX file (MNIST format; gzip or raw) as a uint8 array of its stated shape."""
    path = require_path(path, "IDX file")
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[:2] != b"\x00\x00" or data[2] != 0x08:
        raise DataError(f"{path} is not an unsigned-byte IDX file (bad magic {data[:4].hex()})")
    ndim = data[3]
    dims = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    payload = np.frombuffer(data, np.uint8, offset=4 + 4 * ndim)
    if payload.size != int(np.prod(dims)):
        raise DataError(f"{path}: header says shape {dims} but holds {payload.size} bytes")
    return payload.reshape(dims)


def _idx_pair(folder: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    prefixes = {"train": ["train"], "test": ["t10k", "test"]}.get(split, [split])
    for prefix in prefixes:
        for suffix in (".gz", ""):
            images = folder / f"{prefix}-images-idx3-ubyte{suffix}"
            labels = folder / f"{prefix}-labels-idx1-ubyte{suffix}"
            if images.exists() and labels.exists():
                return read_idx(images), read_idx(labels)
    raise DataError(
        f"no IDX files for split {split!r} in {folder} (looked for "
        f"{prefixes[0]}-images-idx3-ubyte[.gz] and {prefixes[0]}-labels-idx1-ubyte[.gz]); "
        f"the folder contains: {', '.join(sorted(p.name for p in folder.iterdir()))}"
    )


def _npz(path: Path) -> tuple[np.ndarray, np.ndarray]:
    with np.load(path) as f:
        missing = {"images", "labels"} - set(f.files)
        if missing:
            raise DataError(f"{path} lacks {sorted(missing)}; it holds {f.files}")
        return f["images"], f["labels"]


def _tfds(name: str, split: str, data_dir: str | os.PathLike | None):
    columns, class_names = read_prepared(name, split, data_dir)
    missing = {"image", "label"} - set(columns)
    if missing:
        raise DataError(
            f"TFDS data set {name!r} has no {sorted(missing)} feature; its features are "
            f"{sorted(columns)} (image classification reads 'image' and 'label')"
        )
    images = columns["image"]
    images = np.stack([np.asarray(i) for i in images]) if images else np.zeros((0, 1, 1), np.uint8)
    return images, np.asarray(columns["label"]), class_names.get("label")


def load_image_classification(
    source: str | os.PathLike,
    *,
    split: str = "train",
    label_names: Sequence[str] | None = None,
    image_shape: Sequence[int] | None = None,
    classes: Sequence[int | str] | None = None,
    examples_per_class: int | None = None,
    max_examples: int | None = None,
    seed: int = 0,
    preprocessing: ImagePreprocessing = ImagePreprocessing(),
    augmentation: Augmentation | None = None,
    data_dir: str | os.PathLike | None = None,
) -> ImageClassificationData:
    """Images and integer labels from ``source`` (module docstring), selected and configured.

    ``label_names`` defaults to TFDS's names, else ``"0".."K-1"`` for K = max label + 1.
    ``image_shape`` ((H, W) or (H, W, C)), when given, is checked against the stored images.
    """
    names: Sequence[str] | None = label_names
    if isinstance(source, str) and source.startswith("tfds:"):
        images, labels, tfds_names = _tfds(source.removeprefix("tfds:"), split, data_dir)
        names = names or tfds_names
        where = source
    else:
        path = require_path(source, "image data file or folder")
        where = str(path)
        if path.is_dir():
            images, labels = _idx_pair(path, split)
        elif path.suffix == ".npz":
            images, labels = _npz(path)
        else:
            raise DataError(f"{path}: expected a folder of IDX files or an .npz file")
    images = np.asarray(images)
    if images.ndim == 3:
        images = images[..., None]
    if images.ndim != 4 or images.dtype != np.uint8:
        raise DataError(
            f"images in {where} must be uint8 (N, H, W) or (N, H, W, C); got {images.dtype} "
            f"with shape {images.shape}"
        )
    if image_shape is not None:
        expected = tuple(image_shape) if len(image_shape) == 3 else (*image_shape, images.shape[3])
        if images.shape[1:] != expected:
            raise DataError(
                f"images in {where} have shape {images.shape[1:]} (H, W, C), expected {expected}"
            )
    labels = np.asarray(labels)
    if labels.shape != (len(images),) or not np.issubdtype(labels.dtype, np.integer):
        raise DataError(
            f"{where}: need one integer label per image; got labels {labels.dtype} "
            f"{labels.shape} for {len(images)} images"
        )
    if names is None:
        names = [str(i) for i in range(int(labels.max()) + 1 if labels.size else 0)]
    if labels.size and (labels.min() < 0 or labels.max() >= len(names)):
        bad = int(np.flatnonzero((labels < 0) | (labels >= len(names)))[0])
        raise DataError(
            f"label {labels[bad]} of image {bad} in {where} is outside the {len(names)} "
            f"label names {list(names)}"
        )
    data = ImageClassificationData(
        inputs={"images": images},
        labels=labels,
        label_names=list(names),
        preprocessing=preprocessing,
        augmentation=augmentation,
    )
    return select(
        data,
        classes=classes,
        examples_per_class=examples_per_class,
        max_examples=max_examples,
        seed=seed,
        source=where,
    )


__all__ = [
    "FASHION_MNIST_CLASSES",
    "Augmentation",
    "ImageClassificationData",
    "ImagePreprocessing",
    "augment",
    "geometry",
    "load_image_classification",
    "normalize",
    "read_idx",
    "resize_bilinear",
]
