"""The README's library example runs as written (docs that drift are a bug)."""

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_library_example_runs(tmp_path, monkeypatch):
    text = README.read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert blocks, "README lost its library example"
    example = blocks[0]
    assert len(example.strip().splitlines()) <= 18  # ten lines of code plus imports
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(compile(example, "README.md", "exec"), scope)  # noqa: S102 - that is the point
    assert (tmp_path / "out" / "config.json").exists()
