"""`python -m experiments.convert`: llama2.c -> HF -> adapt native -> HF, every step verified."""

import subprocess
import sys

import numpy as np
import pytest

from adapt import paths
from adapt.convert import native
from adapt.convert.hf import load_pretrained
from adapt.convert.llama2c import load_llama2c


def _run(*args):
    out = subprocess.run(
        [sys.executable, "-m", "experiments.convert", *args],
        capture_output=True,
        text=True,
        check=False,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout


@pytest.mark.slow
def test_convert_cli_round_trip(tmp_path, third_party):
    src = third_party / "stories260K" / "stories260K.bin"
    assert "verified" in _run(f"--input={src}", f"--output={tmp_path / 'hf'}", "--target=hf")
    assert "verified" in _run(f"--input={tmp_path / 'hf'}", f"--output={tmp_path / 'native'}")
    assert native.is_native(tmp_path / "native")
    assert "verified" in _run(
        f"--input={tmp_path / 'native'}", f"--output={tmp_path / 'hf2'}", "--target=hf"
    )
    _, ref, _ = load_llama2c(src)
    _, back, _ = load_pretrained(tmp_path / "hf2")
    for p, v in paths.flatten(ref).items():
        np.testing.assert_array_equal(np.asarray(paths.flatten(back)[p]), np.asarray(v))


def test_convert_cli_reports_a_bad_directory(tmp_path):
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "experiments.convert",
            f"--input={tmp_path}",
            f"--output={tmp_path / 'o'}",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert out.returncode != 0
    assert "config.json" in out.stderr
