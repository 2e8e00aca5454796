r"""Convert a model directory between Hugging Face, llama2.c and adapt's native format.

  adapt-convert --input=path/to/hf_model --output=/tmp/minilm_adapt
  adapt-convert --input=/tmp/minilm_adapt --output=/tmp/minilm_hf --target=hf
  adapt-convert --input=third_party/stories260K/stories260K.bin \
      --output=/tmp/stories260K_hf --target=hf

The source format is detected (adapt.json -> adapt; config.json -> Hugging Face; a .bin file ->
llama2.c). Every conversion checks names and shapes and, with --verify (default), reads the
output back and compares every tensor.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from absl import flags, logging

from adapt import paths, xla_defaults
from adapt.convert import hf, llama2c, native
from adapt.errors import AdaptError
from adapt.harness import command_line


class ConversionError(AdaptError):
    """The input cannot be converted, or the output did not read back equal."""


_INPUT = flags.DEFINE_string("input", None, "HF model dir, adapt model dir or llama2.c .bin file.")
_OUTPUT = flags.DEFINE_string("output", None, "Directory to write.")
_TARGET = flags.DEFINE_enum("target", "adapt", ["adapt", "hf"], "Format to write.")
_ARCH = flags.DEFINE_string("architecture", None, "Architecture to build (default: the input's).")
_VERIFY = flags.DEFINE_bool("verify", True, "Read the output back and compare every tensor.")
_SHARD = flags.DEFINE_integer("max_shard_mb", None, "Shard HF safetensors above this size.")


def load_any(path: Path, architecture: str | None):
    if not path.exists():
        raise ConversionError(f"--input {path} does not exist")
    if path.is_file() and path.suffix == ".bin":
        module, params, config = llama2c.load_llama2c(path)
        return params, config, "LlamaForCausalLM"
    if native.is_native(path):
        _, params, config = native.load_native(path)
        return params, config, native.architecture_of(path)
    cfg = hf.read_config(path)
    architecture = architecture or (cfg.get("architectures") or [None])[0]
    _, params, config = hf.load_pretrained(path, architecture=architecture)
    return params, config, architecture or hf.family_for(cfg["model_type"]).architectures[0]


def main(argv):
    del argv
    xla_defaults.apply()
    if not _INPUT.value or not _OUTPUT.value:
        raise ConversionError("--input and --output are required")
    src, out = Path(_INPUT.value), Path(_OUTPUT.value)
    params, config, architecture = load_any(src, _ARCH.value)
    if _TARGET.value == "hf":
        shard = _SHARD.value * 2**20 if _SHARD.value else None
        hf.save_pretrained(params, config, out, architecture=architecture, max_shard_bytes=shard)
        reread = lambda: hf.load_pretrained(out, architecture=architecture)[1]
    else:
        native.save_native(params, config, out, architecture=architecture)
        reread = lambda: native.load_native(out)[1]
    n = sum(int(np.prod(np.shape(v))) for v in paths.flatten(params).values())
    logging.info("wrote %s (%s, %s, %d parameters)", out, _TARGET.value, architecture, n)
    if _VERIFY.value:
        a, b = paths.flatten(params), paths.flatten(reread())
        bad = [p for p in a if p not in b or not np.array_equal(np.asarray(a[p]), np.asarray(b[p]))]
        if bad or set(a) != set(b):
            raise ConversionError(f"verification failed for {bad or sorted(set(a) ^ set(b))}")
        print(
            f"converted {src} -> {out} [{_TARGET.value}, {architecture}]: {n:,} parameters, verified"
        )
    else:
        print(f"converted {src} -> {out} [{_TARGET.value}, {architecture}]: {n:,} parameters")


def run() -> None:
    """The ``adapt-convert`` console script."""
    command_line.main(main, doc=__doc__)


if __name__ == "__main__":
    run()
