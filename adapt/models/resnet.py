"""ResNets: the CIFAR ResNet-20 of He et al. (2016) and torchvision's ResNet-18/50, in linen.

Two families share one module because they differ only in the stem, the block and the shortcut:

- ``stem="cifar"`` (akamaster/pytorch_resnet_cifar10): a 3x3 conv to 16 channels, three stages of
  BasicBlocks (16/32/64 channels), **option-A shortcuts** (subsample and zero-pad channels; no
  parameters), a classifier named ``linear``.
- ``stem="imagenet"`` (torchvision): a 7x7/2 conv and a 3x3/2 max-pool, four stages, BasicBlocks
  (ResNet-18) or Bottlenecks (ResNet-50, stride on the 3x3 conv as in torchvision's "v1.5"),
  projection shortcuts (1x1 conv + BN, named ``downsample_0`` / ``downsample_1``), a classifier
  named ``fc``.

Module names mirror the PyTorch state dicts (``layer2_0/conv1`` <-> ``layer2.0.conv1``), so the
conversion table in :mod:`adapt.convert.resnet_cifar` is a list of one-liners and LoRA-style methods
can target ``fc`` / ``linear`` by path. Inputs are NHWC (Flax's layout; the converter transposes
PyTorch's OIHW kernels). BatchNorm statistics live in the ``batch_stats`` collection: call with
``train=True, mutable=["batch_stats"]`` to normalise with batch statistics and update the running
averages, ``train=False`` (default) to use them.

Known difference from PyTorch: ``nn.BatchNorm`` folds the *biased* batch variance into
``running_var``; PyTorch folds the unbiased one (times n/(n-1), n = batch*height*width). The
forward pass is identical; the running variance after a training step differs by that factor on
the updated part (1e-4 relative for a 8x32x32 batch).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class ResNetConfig:
    """Architecture of a ResNet. Use :func:`resnet20_cifar`, :func:`resnet18`, :func:`resnet50`.

    ``bn_momentum`` follows Flax's convention (weight of the old average): PyTorch's default
    ``momentum=0.1`` is Flax's ``0.9``.
    """

    stem: str = "cifar"  # "cifar" | "imagenet"
    block: str = "basic"  # "basic" | "bottleneck"
    depths: tuple[int, ...] = (3, 3, 3)
    widths: tuple[int, ...] = (16, 32, 64)  # planes per stage (bottleneck output is 4x)
    stem_width: int = 16
    num_channels: int = 3
    num_classes: int = 10
    bn_momentum: float = 0.9
    bn_eps: float = 1e-5
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    def __post_init__(self):
        if self.stem not in ("cifar", "imagenet"):
            raise ValueError(f"stem must be 'cifar' or 'imagenet', got {self.stem!r}")
        if self.block not in ("basic", "bottleneck"):
            raise ValueError(f"block must be 'basic' or 'bottleneck', got {self.block!r}")
        if len(self.depths) != len(self.widths):
            raise ValueError(f"depths {self.depths} and widths {self.widths} differ in length")
        if self.stem == "cifar" and self.block != "basic":
            raise ValueError("the CIFAR ResNet (option-A shortcut) is defined for BasicBlocks only")

    @property
    def classifier_name(self) -> str:
        """``linear`` in akamaster's CIFAR checkpoints, ``fc`` in torchvision's."""
        return "linear" if self.stem == "cifar" else "fc"

    @property
    def expansion(self) -> int:
        return 4 if self.block == "bottleneck" else 1


def resnet20_cifar(**overrides: Any) -> ResNetConfig:
    """ResNet-20 for 32x32 inputs (0.27M parameters), the akamaster CIFAR-10 checkpoint's shape."""
    return ResNetConfig(**overrides)


def resnet18(**overrides: Any) -> ResNetConfig:
    """torchvision ``resnet18`` (11.7M parameters at 1000 classes)."""
    kw = dict(stem="imagenet", block="basic", depths=(2, 2, 2, 2), widths=(64, 128, 256, 512))
    return ResNetConfig(**{**kw, "stem_width": 64, "num_classes": 1000, **overrides})


def resnet50(**overrides: Any) -> ResNetConfig:
    """torchvision ``resnet50`` v1.5 (25.6M parameters at 1000 classes)."""
    kw = dict(stem="imagenet", block="bottleneck", depths=(3, 4, 6, 3), widths=(64, 128, 256, 512))
    return ResNetConfig(**{**kw, "stem_width": 64, "num_classes": 1000, **overrides})


def _conv_init(config: ResNetConfig) -> nn.initializers.Initializer:
    # The reference implementations' choice: akamaster uses kaiming_normal_ (fan_in), torchvision
    # kaiming_normal_(mode="fan_out"); both are untruncated normals with gain sqrt(2).
    mode = "fan_in" if config.stem == "cifar" else "fan_out"
    return nn.initializers.variance_scaling(2.0, mode, "normal")


def _conv(config: ResNetConfig, features: int, kernel: int, stride: int, name: str) -> nn.Conv:
    pad = kernel // 2  # PyTorch's symmetric padding; "SAME" would pad (0, 1) at stride 2
    return nn.Conv(
        features,
        (kernel, kernel),
        strides=(stride, stride),
        padding=((pad, pad), (pad, pad)),
        use_bias=False,
        kernel_init=_conv_init(config),
        dtype=config.dtype,
        param_dtype=config.param_dtype,
        name=name,
    )


def _bn(config: ResNetConfig, train: bool, name: str) -> nn.BatchNorm:
    return nn.BatchNorm(
        use_running_average=not train,
        momentum=config.bn_momentum,
        epsilon=config.bn_eps,
        dtype=config.dtype,
        param_dtype=config.param_dtype,
        name=name,
    )


def option_a_shortcut(x: Array, planes: int) -> Array:
    """akamaster's parameter-free downsampling shortcut, in NHWC.

    PyTorch: ``F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, planes // 4, planes // 4))``: keep every
    second pixel, then zero-pad the channel axis by ``planes // 4`` on each side.
    """
    x = x[:, ::2, ::2, :]
    return jnp.pad(x, ((0, 0), (0, 0), (0, 0), (planes // 4, planes // 4)))


class BasicBlock(nn.Module):
    """Two 3x3 convs; the first carries the stride."""

    config: ResNetConfig
    planes: int
    stride: int = 1

    @nn.compact
    def __call__(self, x: Array, train: bool = False) -> Array:
        cfg = self.config
        out = _conv(cfg, self.planes, 3, self.stride, "conv1")(x)
        out = nn.relu(_bn(cfg, train, "bn1")(out))
        out = _conv(cfg, self.planes, 3, 1, "conv2")(out)
        out = _bn(cfg, train, "bn2")(out)
        return nn.relu(out + self._shortcut(x, train))

    def _shortcut(self, x: Array, train: bool) -> Array:
        if self.stride == 1 and x.shape[-1] == self.planes:
            return x
        if self.config.stem == "cifar":
            if self.stride != 2 or x.shape[-1] + 2 * (self.planes // 4) != self.planes:
                raise ValueError(
                    f"option-A shortcut cannot map {x.shape[-1]} channels at stride "
                    f"{self.stride} to {self.planes}; it only doubles channels at stride 2"
                )
            return option_a_shortcut(x, self.planes)
        return _projection(self.config, x, self.planes, self.stride, train)


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (with the stride, torchvision v1.5), 1x1 expand to ``4 * planes``."""

    config: ResNetConfig
    planes: int
    stride: int = 1

    @nn.compact
    def __call__(self, x: Array, train: bool = False) -> Array:
        cfg = self.config
        out = nn.relu(_bn(cfg, train, "bn1")(_conv(cfg, self.planes, 1, 1, "conv1")(x)))
        out = _conv(cfg, self.planes, 3, self.stride, "conv2")(out)
        out = nn.relu(_bn(cfg, train, "bn2")(out))
        out = _bn(cfg, train, "bn3")(_conv(cfg, 4 * self.planes, 1, 1, "conv3")(out))
        if self.stride != 1 or x.shape[-1] != 4 * self.planes:
            x = _projection(cfg, x, 4 * self.planes, self.stride, train)
        return nn.relu(out + x)


def _projection(config: ResNetConfig, x: Array, features: int, stride: int, train: bool) -> Array:
    """torchvision's ``downsample = Sequential(conv1x1(stride), BatchNorm2d)``, called from inside
    a block's compact method so the names land at ``<block>/downsample_0`` and ``_1``."""
    x = _conv(config, features, 1, stride, "downsample_0")(x)
    return _bn(config, train, "downsample_1")(x)


class ResNet(nn.Module):
    """A ResNet classifier. ``x``: float images (B, H, W, C), already normalised.

    Returns ``{"logits": (B, num_classes), "pooler_output": (B, features) (after global average
    pooling), "last_hidden_state": (B, h, w, features) (the last stage's feature map)}``.
    """

    config: ResNetConfig

    @nn.compact
    def __call__(self, x: Array, train: bool = False) -> dict[str, Array]:
        cfg = self.config
        if x.ndim != 4 or x.shape[-1] != cfg.num_channels:
            raise ValueError(
                f"expected NHWC images with {cfg.num_channels} channels, got shape {x.shape}"
            )
        x = x.astype(cfg.dtype)
        if cfg.stem == "cifar":
            x = _conv(cfg, cfg.stem_width, 3, 1, "conv1")(x)
            x = nn.relu(_bn(cfg, train, "bn1")(x))
        else:
            x = _conv(cfg, cfg.stem_width, 7, 2, "conv1")(x)
            x = nn.relu(_bn(cfg, train, "bn1")(x))
            x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
        block_cls = Bottleneck if cfg.block == "bottleneck" else BasicBlock
        for stage, (depth, planes) in enumerate(zip(cfg.depths, cfg.widths, strict=True)):
            for i in range(depth):
                stride = 2 if (i == 0 and stage > 0) else 1
                x = block_cls(cfg, planes, stride, name=f"layer{stage + 1}_{i}")(x, train)
        features = x
        pooled = jnp.mean(x.astype(jnp.float32), axis=(1, 2)).astype(cfg.dtype)
        logits = nn.Dense(
            cfg.num_classes,
            dtype=cfg.dtype,
            param_dtype=cfg.param_dtype,
            name=cfg.classifier_name,
        )(pooled)
        return {"logits": logits, "pooler_output": pooled, "last_hidden_state": features}


def dummy_input(config: ResNetConfig, size: int | None = None) -> Array:
    """A one-image batch for ``init`` / ``jax.eval_shape`` (32x32 for CIFAR, 64x64 otherwise:
    parameter shapes do not depend on the resolution)."""
    size = size or (32 if config.stem == "cifar" else 64)
    return jnp.zeros((1, size, size, config.num_channels), jnp.float32)


def num_params(params: Any) -> int:
    """Count parameters (not batch statistics) of a params tree."""
    return int(sum(x.size for x in jax.tree_util.tree_leaves(params)))


__all__ = [
    "BasicBlock",
    "Bottleneck",
    "ResNet",
    "ResNetConfig",
    "dummy_input",
    "num_params",
    "option_a_shortcut",
    "resnet18",
    "resnet20_cifar",
    "resnet50",
]
