"""ResNet-20 (CIFAR) and torchvision-style ResNet-18/50 against PyTorch references written here,
the torch-free legacy ``.th`` reader against torch.load and the vendored .npz, the checkpoint
conversion's error reporting, and the integrity of the vendored third_party assets."""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import pickle
import re
import struct

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
tnn = torch.nn
F = torch.nn.functional

from adapt import paths  # noqa: E402
from adapt.convert import resnet_cifar as rc  # noqa: E402
from adapt.convert import torch_legacy  # noqa: E402
from adapt.convert.mapping import CheckpointMismatchError  # noqa: E402
from adapt.models import resnet  # noqa: E402

TH = "resnet20-12fca82f.th"
NPZ = "resnet20-12fca82f.state_dict.npz"


# ------------------------------------------------------------------ PyTorch references (eval/train)
class LambdaLayer(tnn.Module):
    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, x):
        return self.fn(x)


class CifarBasicBlock(tnn.Module):
    """akamaster/pytorch_resnet_cifar10 resnet.py, option A."""

    def __init__(self, in_planes, planes, stride=1):
        super().__init__()
        self.conv1 = tnn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = tnn.BatchNorm2d(planes)
        self.conv2 = tnn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = tnn.BatchNorm2d(planes)
        self.shortcut = tnn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = LambdaLayer(
                lambda x: F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, planes // 4, planes // 4))
            )

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += self.shortcut(x)
        return F.relu(out)


class CifarResNet(tnn.Module):
    def __init__(self, num_blocks=(3, 3, 3), num_classes=10):
        super().__init__()
        self.in_planes = 16
        self.conv1 = tnn.Conv2d(3, 16, 3, stride=1, padding=1, bias=False)
        self.bn1 = tnn.BatchNorm2d(16)
        self.layer1 = self._make_layer(16, num_blocks[0], 1)
        self.layer2 = self._make_layer(32, num_blocks[1], 2)
        self.layer3 = self._make_layer(64, num_blocks[2], 2)
        self.linear = tnn.Linear(64, num_classes)

    def _make_layer(self, planes, n, stride):
        layers = []
        for s in [stride] + [1] * (n - 1):
            layers.append(CifarBasicBlock(self.in_planes, planes, s))
            self.in_planes = planes
        return tnn.Sequential(*layers)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        out = F.avg_pool2d(out, out.size()[3])
        return self.linear(out.view(out.size(0), -1))


class TVBasicBlock(tnn.Module):
    """torchvision.models.resnet.BasicBlock."""

    expansion = 1

    def __init__(self, inplanes, planes, stride=1, downsample=None):
        super().__init__()
        self.conv1 = tnn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = tnn.BatchNorm2d(planes)
        self.conv2 = tnn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = tnn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + identity)


class TVBottleneck(tnn.Module):
    """torchvision.models.resnet.Bottleneck (v1.5: stride on the 3x3)."""

    expansion = 4

    def __init__(self, inplanes, planes, stride=1, downsample=None):
        super().__init__()
        self.conv1 = tnn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = tnn.BatchNorm2d(planes)
        self.conv2 = tnn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = tnn.BatchNorm2d(planes)
        self.conv3 = tnn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = tnn.BatchNorm2d(planes * 4)
        self.downsample = downsample

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return F.relu(out + identity)


class TVResNet(tnn.Module):
    """torchvision.models.resnet.ResNet with configurable widths (so a ResNet-50-shaped net can
    be tested cheaply)."""

    def __init__(self, block, layers, widths=(64, 128, 256, 512), stem=64, num_classes=1000):
        super().__init__()
        self.inplanes = stem
        self.conv1 = tnn.Conv2d(3, stem, 7, 2, 3, bias=False)
        self.bn1 = tnn.BatchNorm2d(stem)
        self.maxpool = tnn.MaxPool2d(3, 2, 1)
        for i, (n, w) in enumerate(zip(layers, widths, strict=True)):
            setattr(self, f"layer{i + 1}", self._make_layer(block, w, n, 1 if i == 0 else 2))
        self.n_stages = len(layers)
        self.fc = tnn.Linear(widths[-1] * block.expansion, num_classes)

    def _make_layer(self, block, planes, blocks, stride):
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = tnn.Sequential(
                tnn.Conv2d(self.inplanes, planes * block.expansion, 1, stride, bias=False),
                tnn.BatchNorm2d(planes * block.expansion),
            )
        layers = [block(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * block.expansion
        layers += [block(self.inplanes, planes) for _ in range(1, blocks)]
        return tnn.Sequential(*layers)

    def forward(self, x):
        x = self.maxpool(F.relu(self.bn1(self.conv1(x))))
        for i in range(self.n_stages):
            x = getattr(self, f"layer{i + 1}")(x)
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


# ---------------------------------------------------------------------------------------- helpers
def _randomize_bn(model: tnn.Module, seed: int) -> None:
    """Non-trivial running statistics and affine parameters, so the test sees BN conversion."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, tnn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(n, generator=g) * 0.1)


def _numpy_state(model: tnn.Module) -> dict[str, np.ndarray]:
    return {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}


def _torch_logits(model: tnn.Module, x_nhwc: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.tensor(x_nhwc).permute(0, 3, 1, 2).contiguous()).numpy()


def _images(shape, seed=0) -> np.ndarray:
    """Random [0, 1] RGB images, normalised as the CIFAR checkpoint expects."""
    x = np.random.default_rng(seed).random(shape, dtype=np.float32)
    return np.asarray(rc.normalize(x))


@pytest.fixture(scope="module")
def resnet20_dir(third_party):
    return third_party / "resnet20_cifar10"


@pytest.fixture(scope="module")
def torch_resnet20(resnet20_dir):
    """The reference architecture loaded by torch itself from the original .th file."""
    ckpt = torch.load(resnet20_dir / TH, map_location="cpu", weights_only=True)
    model = CifarResNet()
    state = {k.removeprefix("module."): v for k, v in ckpt["state_dict"].items()}
    model.load_state_dict(state, strict=True)
    return model.eval(), ckpt


@pytest.fixture(scope="module")
def jax_resnet20(resnet20_dir):
    """(variables from the .npz, one jitted eval-mode apply shared by the tests: one compile)."""
    module, variables, config = rc.load_resnet20_cifar10(resnet20_dir / NPZ)
    assert config == resnet.resnet20_cifar()
    return variables, jax.jit(module.apply)


# ----------------------------------------------------------------------------- legacy .th reader
def test_legacy_reader_equals_npz_and_torch(resnet20_dir, torch_resnet20):
    _, ckpt = torch_resnet20
    ours = torch_legacy.load_legacy(resnet20_dir / TH)
    assert set(ours) == {"state_dict", "best_prec1"}
    assert ours["best_prec1"] == pytest.approx(91.78, abs=1e-4)
    state = ours["state_dict"]
    with np.load(resnet20_dir / NPZ) as npz:
        assert list(state) == list(npz.files)
        assert len(state) == 97
        for k in npz.files:
            assert state[k].dtype == npz[k].dtype == np.float32, k
            np.testing.assert_array_equal(state[k], npz[k], err_msg=k)
    for k, v in ckpt["state_dict"].items():
        np.testing.assert_array_equal(state[k], v.numpy(), err_msg=k)


def test_legacy_reader_general_tensors(tmp_path):
    """Shared storages, views, non-contiguous strides, offsets, several dtypes, scalars, nesting:
    whatever torch's own legacy writer produces, we read back equal to torch's values."""
    base = torch.arange(24, dtype=torch.float32).reshape(4, 6)
    obj = {
        "sd": {
            "base": base,
            "transposed": base.t(),  # same storage, strides (1, 6)
            "slice": base[1:, 2:5],  # same storage, offset 8
            "long": torch.tensor([[-(2**40), 7]], dtype=torch.int64),
            "half": torch.linspace(-2, 2, 5, dtype=torch.float16),
            "bf16": torch.linspace(-2, 2, 5, dtype=torch.bfloat16),
            "bool": torch.tensor([True, False, True]),
            "scalar": torch.tensor(3.5, dtype=torch.float64),
            "param": tnn.Parameter(torch.ones(2, 2)),
        },
        "meta": [1, "two", (3.0, None)],
    }
    path = tmp_path / "legacy.pt"
    torch.save(obj, path, _use_new_zipfile_serialization=False)
    assert torch_legacy.is_legacy_torch_file(path)
    got = torch_legacy.load_legacy(path)
    assert got["meta"] == [1, "two", (3.0, None)]
    for k, v in obj["sd"].items():
        want = v.detach().float().numpy() if v.dtype == torch.bfloat16 else v.detach().numpy()
        assert got["sd"][k].shape == tuple(v.shape), k
        np.testing.assert_array_equal(np.asarray(got["sd"][k], want.dtype), want, err_msg=k)
    assert got["sd"]["bf16"].dtype.name == "bfloat16"
    got["sd"]["base"][0, 0] = 100.0  # arrays are independent copies, not views of one storage
    assert got["sd"]["transposed"][0, 0] == 0.0


def test_legacy_reader_refuses_code_and_bad_files(tmp_path, resnet20_dir):
    class Evil:
        def __reduce__(self):
            return (os.getcwd, ())

    evil = tmp_path / "evil.th"
    with open(evil, "wb") as f:
        for part in (torch_legacy.MAGIC_NUMBER, torch_legacy.PROTOCOL_VERSION, {}, Evil(), []):
            pickle.dump(part, f, protocol=2)
    with pytest.raises(torch_legacy.LegacyFormatError, match="refusing to unpickle posix.getcwd"):
        torch_legacy.load_legacy(evil)

    truncated = tmp_path / "truncated.th"
    truncated.write_bytes((resnet20_dir / TH).read_bytes()[:-100])
    with pytest.raises(torch_legacy.LegacyFormatError, match="file ends inside storage"):
        torch_legacy.load_legacy(truncated)

    zipped = tmp_path / "new.pt"
    torch.save({"w": torch.ones(2)}, zipped)
    with pytest.raises(torch_legacy.LegacyFormatError, match="zip-based"):
        torch_legacy.load_legacy(zipped)
    not_torch = tmp_path / "x.th"
    not_torch.write_bytes(pickle.dumps({"a": 1}))
    assert not torch_legacy.is_legacy_torch_file(not_torch)
    with pytest.raises(torch_legacy.LegacyFormatError, match="bad magic number"):
        torch_legacy.load_legacy(not_torch)


# ---------------------------------------------------------------------------- ResNet-20 parity
def test_resnet20_pretrained_matches_torch(resnet20_dir, torch_resnet20, jax_resnet20):
    model_t, _ = torch_resnet20
    variables, apply = jax_resnet20
    assert resnet.num_params(variables["params"]) == 269_722
    x = _images((4, 32, 32, 3))
    want = _torch_logits(model_t, x)
    out = apply(variables, x)
    np.testing.assert_allclose(np.asarray(out["logits"]), want, atol=1e-5, rtol=1e-5)
    assert out["pooler_output"].shape == (4, 64)
    assert out["last_hidden_state"].shape == (4, 8, 8, 64)
    assert np.abs(want).max() > 1.0  # pretrained logits, not a degenerate all-zero network
    # The legacy .th, read without torch, gives the very same variables, hence the same logits.
    _, from_th, _ = rc.load_resnet20_cifar10(resnet20_dir / TH)
    flat_npz, flat_th = paths.flatten(variables), paths.flatten(from_th)
    assert set(flat_npz) == set(flat_th)
    for k, v in flat_th.items():
        np.testing.assert_array_equal(v, flat_npz[k], err_msg=k)
    np.testing.assert_array_equal(apply(from_th, x)["logits"], out["logits"])


def test_resnet20_train_mode_updates_batch_stats(torch_resnet20, jax_resnet20):
    model_t, _ = torch_resnet20
    variables, _ = jax_resnet20
    module = resnet.ResNet(resnet.resnet20_cifar())
    x = _images((4, 32, 32, 3), seed=1)
    train_step = jax.jit(lambda v, x: module.apply(v, x, train=True, mutable=["batch_stats"]))
    out, updates = train_step(variables, x)
    ref = CifarResNet()
    ref.load_state_dict(model_t.state_dict())
    ref.train()
    want = _torch_logits(ref, x)  # normalises with batch statistics, updates running stats
    np.testing.assert_allclose(np.asarray(out["logits"]), want, atol=1e-4, rtol=1e-4)
    new = paths.flatten(updates["batch_stats"])
    old = paths.flatten(variables["batch_stats"])
    assert set(new) == set(old) and len(new) == 2 * 19
    assert all(not np.allclose(new[k], old[k]) for k in new)
    torch_state = rc.strip_data_parallel(_numpy_state(ref))
    for k in new:
        hf_key = re.sub(r"layer(\d)_(\d)", r"layer\1.\2", k.removeprefix("batch_stats/"))
        hf_key = hf_key.replace("/", ".").replace(".mean", ".running_mean")
        hf_key = hf_key.replace(".var", ".running_var")
        # Flax folds the biased batch variance in, PyTorch the unbiased one (module docstring):
        # a <= 0.1/(n-1) relative difference, n >= 4*8*8.
        rtol = 1e-5 if k.endswith("mean") else 1e-3
        np.testing.assert_allclose(new[k], torch_state[hf_key], rtol=rtol, atol=1e-5, err_msg=k)


def test_resnet20_new_head_and_bfloat16(resnet20_dir, jax_resnet20):
    ref_vars, apply = jax_resnet20
    _, variables, config = rc.load_resnet20_cifar10(
        resnet20_dir / TH, num_classes=7, rng=jax.random.key(3)
    )
    assert config.num_classes == 7
    assert variables["params"]["linear"]["kernel"].shape == (64, 7)
    assert float(jnp.abs(variables["params"]["linear"]["kernel"]).max()) > 0
    np.testing.assert_array_equal(variables["params"]["linear"]["bias"], np.zeros(7))
    body = {k: v for k, v in paths.flatten(variables).items() if "/linear/" not in k}
    ref = paths.flatten(ref_vars)
    assert len(body) == len(ref) - 2
    for k, v in body.items():
        np.testing.assert_array_equal(v, ref[k], err_msg=k)

    module, v16, _ = rc.load_resnet20_cifar10(
        resnet20_dir / NPZ, dtype=jnp.bfloat16, param_dtype=jnp.bfloat16
    )
    assert v16["params"]["conv1"]["kernel"].dtype == jnp.bfloat16
    assert v16["batch_stats"]["bn1"]["var"].dtype == jnp.float32  # Flax keeps BN stats in fp32
    x = _images((4, 32, 32, 3))
    logits = jax.jit(module.apply)(v16, x)["logits"]
    assert logits.dtype == jnp.bfloat16
    fp32 = apply(ref_vars, x)["logits"]
    err = float(jnp.abs(logits.astype(jnp.float32) - fp32).max())
    assert err < 0.05 * float(jnp.abs(fp32).max()), err


# ------------------------------------------------------------------ torchvision-style ResNet-18/50
def _tv_roundtrip(model_t, config, x):
    """Import a torch state dict, compare logits, export, and load the export back into torch."""
    model_t.eval()
    state = _numpy_state(model_t)
    module, variables, _ = rc.load_resnet(state, config)
    want = _torch_logits(model_t, x)
    assert np.ptp(want) > 0.05  # logits that differ between classes and images: not degenerate
    got = np.asarray(jax.jit(module.apply)(variables, x)["logits"])
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)
    exported = rc.export_state_dict(variables, config)
    weights = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    assert set(exported) == set(weights)
    for k, v in weights.items():
        np.testing.assert_array_equal(exported[k], v, err_msg=k)
    return exported


def test_resnet18_matches_torchvision_reference():
    torch.manual_seed(0)
    model_t = TVResNet(TVBasicBlock, [2, 2, 2, 2], num_classes=10)
    _randomize_bn(model_t, seed=1)
    config = resnet.resnet18(num_classes=10)
    exported = _tv_roundtrip(model_t, config, _images((2, 32, 32, 3)))
    fresh = TVResNet(TVBasicBlock, [2, 2, 2, 2], num_classes=10)
    missing, unexpected = fresh.load_state_dict(
        {k: torch.tensor(v) for k, v in exported.items()}, strict=True
    )
    assert not missing and not unexpected


def test_resnet50_shaped_bottleneck_matches_reference():
    torch.manual_seed(0)
    widths = (8, 16, 32, 64)
    # ResNet-50's blocks at 1/8 width and fewer repeats (XLA compile time); the full [3, 4, 6, 3]
    # layout is checked by parameter count below. Stage 1 has a stride-1 projection (64 -> 4x).
    depths = [1, 2, 1, 1]
    model_t = TVResNet(TVBottleneck, depths, widths=widths, stem=8, num_classes=5)
    _randomize_bn(model_t, seed=2)
    config = resnet.resnet50(depths=tuple(depths), widths=widths, stem_width=8, num_classes=5)
    _tv_roundtrip(model_t, config, _images((2, 64, 64, 3)))


def test_full_size_parameter_counts_and_shapes():
    """Exact torchvision parameter counts (eval_shape: nothing allocated or run)."""
    for config, n in [(resnet.resnet18(), 11_689_512), (resnet.resnet50(), 25_557_032)]:
        variables = rc.abstract_variables(config)
        assert resnet.num_params(variables["params"]) == n
        out = jax.eval_shape(
            resnet.ResNet(config).apply, variables, jnp.zeros((2, 224, 224, 3), jnp.float32)
        )
        assert out["logits"].shape == (2, 1000)
        assert out["last_hidden_state"].shape == (2, 7, 7, 512 * config.expansion)
    table_keys = {r.hf for r in rc.state_dict_table(resnet.resnet50())}
    assert "layer{s}.{b}.downsample.0.weight" in table_keys and "fc.weight" in table_keys


# ----------------------------------------------------------------------------------- bad input
def test_mismatch_lists_missing_unexpected_and_misshaped(resnet20_dir):
    state = dict(rc.read_state_dict(resnet20_dir / NPZ))
    del state["module.layer2.1.bn2.running_var"]
    state["module.layer3.0.conv1.weight"] = np.zeros((64, 16, 3, 3), np.float32)  # in: 32
    state["module.layer3.0.downsample.0.weight"] = np.zeros((64, 32, 1, 1), np.float32)
    with pytest.raises(CheckpointMismatchError) as e:
        rc.import_state_dict(state, resnet.resnet20_cifar())
    msg = str(e.value)
    assert "missing from the checkpoint (1)" in msg and "batch_stats/layer2_1/bn2/var" in msg
    assert "unexpected in the checkpoint (1)" in msg
    assert "layer3.0.downsample.0.weight" in msg  # option-A blocks have no projection
    assert "wrong shape (1)" in msg and "layer3.0.conv1.weight [64, 16, 3, 3]" in msg
    assert "model expects [3, 3, 32, 64]" in msg

    with pytest.raises(CheckpointMismatchError, match="unexpected in the checkpoint"):
        rc.import_state_dict(dict(rc.read_state_dict(resnet20_dir / NPZ)), resnet.resnet18())


# ------------------------------------------------------------------------ vendored third_party/
def _metadata_hashes(text: str) -> dict[str, str]:
    return dict(
        (name, digest)
        for digest, name in re.findall(r"^\s+([0-9a-f]{64})\s+(\S+)", text, flags=re.MULTILINE)
    )


@pytest.mark.parametrize("name", ["resnet20_cifar10", "sst2", "banking77", "fashion_mnist"])
def test_vendored_assets_match_metadata(third_party, name):
    folder = third_party / name
    assert (folder / "LICENSE").stat().st_size > 500
    hashes = _metadata_hashes((folder / "METADATA").read_text())
    data_files = {p.name for p in folder.iterdir()} - {"LICENSE", "METADATA"}
    assert set(hashes) == data_files
    for fname, digest in hashes.items():
        blob = (folder / fname).read_bytes()
        assert len(blob) <= 8 * 2**20, fname
        assert hashlib.sha256(blob).hexdigest() == digest, fname


def _read_idx(path) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        data = f.read()
    (magic,) = struct.unpack(">I", data[:4])
    dims = struct.unpack(">" + "I" * (magic & 0xFF), data[4 : 4 + 4 * (magic & 0xFF)])
    return np.frombuffer(io.BytesIO(data).getbuffer()[4 + 4 * len(dims) :], np.uint8).reshape(dims)


def test_fashion_mnist_train_slice_is_stratified(third_party):
    folder = third_party / "fashion_mnist"
    images = _read_idx(folder / "train-images-idx3-ubyte.gz")
    labels = _read_idx(folder / "train-labels-idx1-ubyte.gz")
    assert images.shape == (6000, 28, 28) and labels.shape == (6000,)
    np.testing.assert_array_equal(np.bincount(labels, minlength=10), np.full(10, 600))
    assert _read_idx(folder / "t10k-images-idx3-ubyte.gz").shape == (10000, 28, 28)


def test_fashion_mnist_slice_reproduces_from_source(third_party):
    """METADATA's recipe, re-run on the full source where ../shared is available."""
    source = third_party.parent.parent / "shared" / "data" / "fashion_mnist"
    if not (source / "train-labels-idx1-ubyte.gz").exists():
        pytest.skip("full Fashion-MNIST source (../shared/data) not present")
    labels = _read_idx(source / "train-labels-idx1-ubyte.gz")
    rank = np.zeros(len(labels), np.int64)
    for c in range(10):
        idx = np.flatnonzero(labels == c)
        rank[idx] = np.arange(len(idx))
    keep = np.flatnonzero(rank < 600)
    folder = third_party / "fashion_mnist"
    np.testing.assert_array_equal(_read_idx(folder / "train-labels-idx1-ubyte.gz"), labels[keep])
    images = _read_idx(source / "train-images-idx3-ubyte.gz")
    np.testing.assert_array_equal(_read_idx(folder / "train-images-idx3-ubyte.gz"), images[keep])
