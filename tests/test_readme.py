"""The README's library example runs as written (docs that drift are a bug)."""

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


@pytest.mark.slow
def test_readme_library_example_runs(tmp_path, monkeypatch):
    text = README.read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert blocks, "README lost its library example"
    example = blocks[0]
    assert len(example.strip().splitlines()) <= 20  # ten lines of code plus imports
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(compile(example, "README.md", "exec"), scope)  # noqa: S102 - that is the point
    assert (tmp_path / "out" / "config.json").exists()
    # the logits are those of the sentences, not of the sentences plus 120-odd padding tokens
    # (the packaged tokenizer.json pads to 128: without the attention mask they differ)
    import numpy as np
    from tokenizers import Tokenizer

    from adapt.methods import apply

    tokenizer = Tokenizer.from_file(str(scope["path"] / "tokenizer.json"))
    tokenizer.no_padding()
    for row, text in enumerate(["a gripping film", "flat and lifeless"]):
        ids = np.asarray([tokenizer.encode(text).ids])
        alone = apply(scope["model"], scope["params"], [scope["lora"]], ids)["logits"]
        np.testing.assert_allclose(scope["logits"][row], alone[0], atol=1e-5)


@pytest.mark.slow
def test_readme_own_project_example_trains_only_what_the_methods_add(capsys):
    """ "Use adapt inside your own JAX project": the user's model, LoRA + IA3 + EWC, their loop."""
    import numpy as np

    import adapt

    text = README.read_text().split("## Use adapt inside your own JAX project", 1)[1]
    example = re.findall(r"```python\n(.*?)```", text, flags=re.S)[0]
    scope: dict = {}
    exec(compile(example, "README.md", "exec"), scope)  # noqa: S102 - that is the point
    first, last = (float(v) for v in re.findall(r"loss (\S+) -> (\S+)", capsys.readouterr().out)[0])
    assert last < 0.5 * first
    trained = adapt.paths.flatten(scope["trainable"])
    assert sorted(trained) == ["hidden/ia3_l", "hidden/lora_a", "hidden/lora_b", "out/bias",
                               "out/kernel"]  # fmt: skip
    frozen, start = adapt.paths.flatten(scope["frozen"]), adapt.paths.flatten(scope["start"])
    assert sorted(frozen) == ["hidden/bias", "hidden/kernel"]
    assert not np.allclose(trained["hidden/lora_b"], start["hidden/lora_b"])

    # the pmap block continues the example: adapt's step per device, the same methods
    pmap_example = re.findall(r"```python\n(.*?)```", text, flags=re.S)[1]
    assert "jax.pmap(adapt.train_step" in pmap_example
    exec(compile(pmap_example, "README.md", "exec"), scope)  # noqa: S102
    pmap_loss = float(re.findall(r"pmap loss (\S+)", capsys.readouterr().out)[0])
    assert scope["n"] == 8 and pmap_loss < last  # 8 devices, and it kept training


def _numbers_in(path: Path) -> set[str]:
    """Every number in a results CSV, as the README may quote it: 3 decimals, a percent with 1
    decimal, or exact (accuracy 0.4956 -> "0.496" or "49.6"; alpha 0.5 -> "0.5")."""
    out: set[str] = set()
    for cell in re.findall(r"-?\d+\.\d+(?:e-?\d+)?", path.read_text()):
        value = float(cell)
        out |= {f"{value:.3f}", f"{100 * value:.1f}", f"{value:+.3f}", f"{value:g}"}
    return out


def test_readme_results_quote_the_committed_csvs():
    """Each paragraph of "## Results" names its sweep's folder (results/<name>/); every decimal
    number in it must be one of that folder's CSV values, rounded as quoted."""
    section = README.read_text().split("\n## Results\n", 1)[1].split("\n## ", 1)[0]
    paragraphs = [p for p in section.split("\n\n") if re.search(r"results/\w+/", p)]
    assert paragraphs, "README lost its results section"
    for paragraph in paragraphs:
        folders = set(re.findall(r"results/(\w+)/", paragraph))
        csvs = [f for name in folders for f in (README.parent / "results" / name).glob("*.csv")]
        assert csvs, f"no committed CSVs for {sorted(folders)}"
        known = set().union(*(_numbers_in(f) for f in csvs))
        quoted = re.findall(r"(?<![\w.])[+-]?\d+\.\d+", paragraph)
        unknown = [q for q in quoted if q not in known and q.lstrip("+") not in known]
        assert not unknown, f"README quotes {unknown}, not in {[f.name for f in csvs]}"


def test_import_adapt_is_light_and_lists_its_entry_points():
    import subprocess
    import sys

    code = (
        "import sys, adapt; heavy = [m for m in ('jax', 'flax', 'optax') if m in sys.modules]; "
        "assert not heavy, heavy; names = dir(adapt); "
        "assert {'LoRA', 'IA3', 'partition', 'run', 'ewc_penalty'} <= set(names), names; "
        "assert all(getattr(adapt, n) is not None for n in adapt.__all__)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
