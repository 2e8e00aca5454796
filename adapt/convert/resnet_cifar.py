"""PyTorch ResNet checkpoints <-> adapt's ``{"params", "batch_stats"}``.

Covers akamaster's CIFAR ResNets (the vendored ResNet-20 CIFAR-10 checkpoint, a legacy ``.th``
file or the same arrays as ``.npz``) and torchvision-style ResNet-18/50 state dicts (from
safetensors, npz, or any dict of numpy arrays). Conversion is one table of
:class:`~adapt.convert.mapping.Rule` lines, used in both directions; names and shapes are checked
before anything is converted, and a mismatch raises
:class:`~adapt.convert.mapping.CheckpointMismatchError` listing every missing, unexpected and
mis-shaped key.

Our flat names carry the collection first (``params/layer1_0/conv1/kernel``,
``batch_stats/layer1_0/bn1/mean``), so BatchNorm's running statistics go through the same table as
the weights::

    module, variables, config = load_resnet20_cifar10("third_party/resnet20_cifar10")
    x = normalize(images_uint8)                       # NHWC, CIFAR10_MEAN / CIFAR10_STD
    logits = module.apply(variables, x)["logits"]
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from adapt import paths
from adapt.convert import mapping, torch_legacy
from adapt.convert.mapping import CONV_OIHW_TO_HWIO, TRANSPOSE, Rule
from adapt.convert.safetensors_io import SafetensorsReader
from adapt.models.families import Loaded, ModelOptionError
from adapt.models.resnet import ResNet, ResNetConfig, dummy_input, resnet20_cifar

# akamaster trained on [0, 1] RGB normalised with the ImageNet statistics (not CIFAR-10's own).
CIFAR10_MEAN = (0.485, 0.456, 0.406)
CIFAR10_STD = (0.229, 0.224, 0.225)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# Buffers in torchvision state dicts that carry no weights.
IGNORE = (r".*num_batches_tracked",)
DATA_PARALLEL_PREFIX = "module."
RESNET20_FILES = ("resnet20-12fca82f.state_dict.npz", "resnet20-12fca82f.th")


def normalize(
    images: np.ndarray | jax.Array,
    mean: tuple[float, ...] = CIFAR10_MEAN,
    std: tuple[float, ...] = CIFAR10_STD,
) -> jax.Array:
    """``(x - mean) / std`` over the last (channel) axis. uint8 images are scaled to [0, 1] first;
    float images must already be in [0, 1]."""
    x = jnp.asarray(images)
    x = x.astype(jnp.float32) / 255.0 if x.dtype == jnp.uint8 else x.astype(jnp.float32)
    return (x - jnp.asarray(mean, jnp.float32)) / jnp.asarray(std, jnp.float32)


# ------------------------------------------------------------------------------------- the table
def _bn_rules(ours: str, theirs: str) -> list[Rule]:
    return [
        Rule(f"params/{ours}/scale", f"{theirs}.weight"),
        Rule(f"params/{ours}/bias", f"{theirs}.bias"),
        Rule(f"batch_stats/{ours}/mean", f"{theirs}.running_mean"),
        Rule(f"batch_stats/{ours}/var", f"{theirs}.running_var"),
    ]


def state_dict_table(config: ResNetConfig, *, head: bool = True) -> list[Rule]:
    """Our ``collection/path`` <-> PyTorch state-dict key, for akamaster's and torchvision's
    layouts (they share everything but the classifier's name and the shortcut). ``head=False``
    leaves the classifier out (it is then neither read nor shape-checked)."""
    block = "layer{s}_{b}"
    theirs = "layer{s}.{b}"
    fc = config.classifier_name
    head_rules = [
        Rule(f"params/{fc}/kernel", f"{fc}.weight", TRANSPOSE),
        Rule(f"params/{fc}/bias", f"{fc}.bias"),
    ]
    return [
        Rule("params/conv1/kernel", "conv1.weight", CONV_OIHW_TO_HWIO),
        *_bn_rules("bn1", "bn1"),
        Rule(f"params/{block}/conv{{c}}/kernel", f"{theirs}.conv{{c}}.weight", CONV_OIHW_TO_HWIO),
        *_bn_rules(f"{block}/bn{{c}}", f"{theirs}.bn{{c}}"),
        Rule(
            f"params/{block}/downsample_0/kernel",
            f"{theirs}.downsample.0.weight",
            CONV_OIHW_TO_HWIO,
        ),
        *_bn_rules(f"{block}/downsample_1", f"{theirs}.downsample.1"),
        *(head_rules if head else []),
    ]


# --------------------------------------------------------------------------------------- reading
class _Unprefixed(Mapping[str, np.ndarray]):
    """A view of a state dict with a prefix (DataParallel's ``module.``) dropped from every key;
    keeps a lazy reader lazy (shapes without reading)."""

    def __init__(self, base: Mapping[str, Any], prefix: str):
        self.base, self.prefix = base, prefix

    def __getitem__(self, key: str) -> np.ndarray:
        return np.asarray(self.base[self.prefix + key])

    def __iter__(self) -> Iterator[str]:
        return (k[len(self.prefix) :] for k in self.base)

    def __len__(self) -> int:
        return len(self.base)

    def shapes(self) -> dict[str, tuple[int, ...]]:
        if hasattr(self.base, "shapes"):
            base = self.base.shapes()
        else:
            base = {k: tuple(np.shape(v)) for k, v in self.base.items()}
        return {k[len(self.prefix) :]: s for k, s in base.items()}


def strip_data_parallel(state_dict: Mapping[str, Any]) -> Mapping[str, Any]:
    """Drop ``module.`` when every key has it (checkpoints saved from ``nn.DataParallel``)."""
    keys = list(state_dict)
    if keys and all(k.startswith(DATA_PARALLEL_PREFIX) for k in keys):
        return _Unprefixed(state_dict, DATA_PARALLEL_PREFIX)
    return state_dict


def read_state_dict(path: str | os.PathLike) -> Mapping[str, np.ndarray]:
    """Read a PyTorch-layout state dict without torch: ``.npz``, a legacy ``.th``/``.pt``/``.pth``
    (pre-1.6 ``torch.save``), a ``.safetensors`` file, or a directory holding one of these
    (``model.safetensors`` first, then the vendored ResNet-20 files)."""
    path = Path(path)
    if path.is_dir():
        candidates = [path / "model.safetensors", path / "model.safetensors.index.json"]
        candidates += [path / name for name in RESNET20_FILES]
        found = next((p for p in candidates if p.exists()), None)
        if found is None:
            raise FileNotFoundError(
                f"{path}: no model.safetensors or {' / '.join(RESNET20_FILES)} here "
                f"(found: {sorted(p.name for p in path.iterdir())})"
            )
        return (
            SafetensorsReader(path) if found.name.startswith("model.") else read_state_dict(found)
        )
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file")
    if path.suffix == ".npz":
        with np.load(path, allow_pickle=False) as npz:
            return {k: npz[k] for k in npz.files}
    if path.suffix == ".safetensors":
        return SafetensorsReader(path)
    if torch_legacy.is_legacy_torch_file(path):
        return torch_legacy.load_state_dict(path)
    raise ValueError(
        f"{path}: unknown checkpoint format; expected .npz, .safetensors or a legacy torch file"
    )


# ------------------------------------------------------------------------------------ conversion
def abstract_variables(config: ResNetConfig) -> dict[str, Any]:
    """``{"params", "batch_stats"}`` shapes and dtypes, nothing allocated."""
    module = ResNet(config)
    return jax.eval_shape(lambda: module.init(jax.random.key(0), dummy_input(config)))


def _fresh_head(config: ResNetConfig, rng: jax.Array) -> dict[str, Any]:
    """A newly initialised classifier, as ``ResNet`` itself would initialise it. Only the head is
    built (not the whole network under ``jit``): the rest is what we just loaded."""
    fc = config.classifier_name
    features = config.widths[-1] * config.expansion
    dense = nn.Dense(config.num_classes, dtype=config.dtype, param_dtype=config.param_dtype)
    head = dense.init(rng, jnp.zeros((1, features), config.dtype))["params"]
    return {f"params/{fc}/{k}": v for k, v in head.items()}


def import_state_dict(
    state_dict: Mapping[str, Any],
    config: ResNetConfig,
    *,
    new_head: bool = False,
    rng: jax.Array | None = None,
) -> dict[str, Any]:
    """A PyTorch ResNet state dict (numpy arrays, or a lazy reader) -> ``{"params",
    "batch_stats"}`` for ``ResNet(config)``.

    ``new_head=True`` drops the checkpoint's classifier and initialises ours from ``rng`` (e.g. to
    fine-tune the CIFAR-10 model on another 10- or 100-class task).
    """
    state = strip_data_parallel(state_dict)
    expected = {
        p: (tuple(s.shape), np.dtype(s.dtype))
        for p, s in paths.flatten(abstract_variables(config)).items()
    }
    fc = re.escape(config.classifier_name)
    flat, fresh = mapping.import_tensors(
        state,
        state_dict_table(config, head=not new_head),
        expected,
        ignore=IGNORE + ((rf"{fc}\.(weight|bias)",) if new_head else ()),
        allow_missing=(rf"params/{fc}/(kernel|bias)",) if new_head else (),
        convert_leaf=jnp.asarray,
    )
    if fresh:
        head = _fresh_head(config, jax.random.key(0) if rng is None else rng)
        flat.update({p: head[p] for p in fresh})
    return paths.unflatten(flat)


def export_state_dict(
    variables: Mapping[str, Any], config: ResNetConfig, *, prefix: str = ""
) -> dict[str, np.ndarray]:
    """``{"params", "batch_stats"}`` -> a PyTorch state dict (numpy, OIHW / (out, in) layouts)
    that ``load_state_dict`` of the matching torch model accepts (``prefix="module."`` for a
    DataParallel-style checkpoint like akamaster's)."""
    flat = {p: np.asarray(v) for p, v in paths.flatten(variables).items()}
    out = mapping.export_tensors(flat, state_dict_table(config))
    return {prefix + k: v for k, v in out.items()}


def load_resnet(
    path: str | os.PathLike | Mapping[str, Any],
    config: ResNetConfig,
    *,
    new_head: bool = False,
    rng: jax.Array | None = None,
) -> tuple[ResNet, dict[str, Any], ResNetConfig]:
    """``(module, variables, config)`` from a checkpoint file/directory or an in-memory state
    dict; see :func:`read_state_dict` for the formats."""
    state = path if isinstance(path, Mapping) else read_state_dict(path)
    variables = import_state_dict(state, config, new_head=new_head, rng=rng)
    return ResNet(config), variables, config


def load_resnet20_cifar10(
    path: str | os.PathLike, *, rng: jax.Array | None = None, **overrides: Any
) -> tuple[ResNet, dict[str, Any], ResNetConfig]:
    """akamaster's ResNet-20 CIFAR-10 checkpoint (``third_party/resnet20_cifar10``: the directory,
    its ``.npz`` or its legacy ``.th``) as ``(module, variables, config)``.

    ``overrides`` set config fields (``dtype=jnp.bfloat16``); a ``num_classes`` other than 10
    gets a freshly initialised classifier from ``rng``.
    """
    config = resnet20_cifar(**overrides)
    return load_resnet(path, config, new_head=config.num_classes != 10, rng=rng)


def load_for_run(
    path: str | os.PathLike,
    *,
    num_labels: int | None,
    pooling: str | None,
    overrides: dict[str, Any],
    rng: jax.Array,
) -> Loaded:
    """``model.kind="resnet_cifar"`` (the family registry's loader)."""
    if pooling is not None:
        raise ModelOptionError("model.pooling: the ResNet pools globally (average) by design")
    if num_labels is not None:
        overrides = {**overrides, "num_classes": num_labels}
    module, variables, config = load_resnet20_cifar10(path, rng=rng, **overrides)
    state = {"batch_stats": variables["batch_stats"]}
    return Loaded(module, variables["params"], state, config, None)


__all__ = [
    "CIFAR10_MEAN",
    "CIFAR10_STD",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "abstract_variables",
    "export_state_dict",
    "import_state_dict",
    "load_resnet",
    "load_for_run",
    "load_resnet20_cifar10",
    "normalize",
    "read_state_dict",
    "state_dict_table",
    "strip_data_parallel",
]
