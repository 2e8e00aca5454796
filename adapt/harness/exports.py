"""A run's exports, checked before training and written at its end: ``export.hf`` (a Hugging
Face directory, methods merged, tokenizer files carried), ``export.native`` (adapt's format, any
pooling) and ``export.peft`` (the adapter alone, as PEFT loads it over the base checkpoint).
"""

from __future__ import annotations

import shutil
from pathlib import Path

from adapt.config import ConfigError, RunConfig
from adapt.harness.model_setup import Model


def check(config: RunConfig, model: Model) -> None:
    """A full-model export folds the methods into the base weights: refuse, before training,
    a method that cannot be folded (adapters, prompts add computation, not a weight delta)."""
    from adapt.convert import hf
    from adapt.methods.base import Method

    export = config.export
    if export.peft:
        _check_peft(config, model)
    if not (export.hf or export.native):
        return
    if export.hf:
        try:  # what Hugging Face cannot represent (a classifier's pooling) is refused now
            hf.to_hf_config(model.config, model.architecture)
        except (hf.UnsupportedConfigError, ValueError) as e:
            raise ConfigError(f"export.hf: {e}") from None
    unmergeable = [type(m).__name__ for m in model.methods if type(m).merge is Method.merge]
    if unmergeable:
        raise ConfigError(
            f"export.hf/export.native write the whole model with the method folded in, which "
            f"{', '.join(unmergeable)} cannot be; drop the export, or export the adapter "
            "(adapt.peft_format.export_adapter)"
        )


def _check_peft(config: RunConfig, model: Model) -> None:
    """export.peft: PEFT loads the adapter over the Hugging Face base model, so the model must be
    one transformers builds the same way, and the method one PEFT has (checked before training)."""
    from adapt.convert import hf
    from adapt.methods import IA3, LoRA, PromptTuning, QLoRA

    if model.architecture is None:
        raise ConfigError("export.peft needs a Hugging Face model (model.kind='hf')")
    try:
        hf.to_hf_config(model.config, model.architecture)
    except (hf.UnsupportedConfigError, ValueError) as e:
        raise ConfigError(
            f"export.peft: the base model as transformers builds it differs: {e}"
        ) from None
    supported = (LoRA, IA3, PromptTuning)
    methods = model.methods
    if len(methods) != 1 or not isinstance(methods[0], supported) or isinstance(methods[0], QLoRA):
        names = [type(m).__name__ for m in methods] or [config.method.name]
        raise ConfigError(
            f"export.peft writes one LoRA (DoRA, rsLoRA), IA3 or prompt-tuning adapter; this run "
            f"has {', '.join(names)}. Use export.hf or export.native for the whole model"
        )


def write(config: RunConfig, model: Model, workdir: Path) -> None:
    """The exports the config asks for, into ``workdir/export_{hf,native,peft}``."""
    export = config.export
    if export.peft:
        export_peft(config, model, workdir / "export_peft")
    if not (export.hf or export.native):
        return
    from adapt.convert import hf, native
    from adapt.methods import merge_all

    params = merge_all(model.params, model.methods)
    if export.hf:
        hf.save_pretrained(
            params, model.config, workdir / "export_hf", architecture=model.architecture,
            tokenizer_from=tokenizer_folder(config),
        )  # fmt: skip
    if export.native:
        native.save_native(
            params, model.config, workdir / "export_native", architecture=model.architecture
        )


def tokenizer_folder(config: RunConfig) -> Path | None:
    """The folder of the run's Hugging Face tokenizer files (data.tokenizer's, else the model's),
    which an HF export carries along; None for models without one (images, scratch)."""
    from adapt import weights
    from adapt.convert.hf import TOKENIZER_FILES
    from adapt.errors import AdaptError

    for given in (config.data.tokenizer, config.model.path):
        if not given:
            continue
        try:
            path = weights.resolve(given)
        except AdaptError:
            continue
        folder = path if path.is_dir() else path.parent
        if any((folder / name).is_file() for name in TOKENIZER_FILES):
            return folder
    return None


def export_peft(config: RunConfig, model: Model, out: Path) -> Path:
    """The run's adapter (and trained head) as a PEFT directory, with the tokenizer files."""
    from adapt import weights
    from adapt.convert.hf import TOKENIZER_FILES
    from adapt.peft_format import export_adapter

    base = weights.resolve(config.model.path)
    out = export_adapter(
        model.params, model.methods, model.config, model.architecture, out,
        base_model_name_or_path=str(base.absolute()),
    )  # fmt: skip
    folder = tokenizer_folder(config)
    for name in TOKENIZER_FILES if folder is not None else ():
        if (folder / name).is_file():
            shutil.copyfile(folder / name, out / name)
    return out


__all__ = ["check", "export_peft", "tokenizer_folder", "write"]
