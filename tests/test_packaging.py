"""The distribution: dependencies declared exactly as adapt imports them, and a wheel whose console
scripts run from any directory with the shipped configs found by name."""

import ast
import importlib.metadata
import json
import os
import re
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
SCRIPTS = ["adapt-convert", "adapt-evaluate", "adapt-export", "adapt-finetune", "adapt-sweep"]


def _normalise(requirement: str) -> str:
    name = re.match(r"[A-Za-z0-9_.\-]+", requirement).group(0)
    return re.sub(r"[-_.]+", "-", name).lower()


def imported_modules() -> dict[str, set[str]]:
    """Top-level third-party modules imported anywhere in adapt/ (in functions too) -> files."""
    out: dict[str, set[str]] = {}
    for f in (REPO / "adapt").rglob("*.py"):
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top != "adapt" and top not in sys.stdlib_module_names:
                    out.setdefault(top, set()).add(str(f.relative_to(REPO)))
    return out


def test_the_import_scan_sees_adapts_imports():
    found = imported_modules()
    assert {"jax", "flax", "optax", "numpy"} <= set(found)  # the scan works
    assert "adapt/data/tfds_source.py" in found["tensorflow_datasets"]  # inside functions too


def test_declared_dependencies_are_exactly_what_adapt_imports():
    distributions = importlib.metadata.packages_distributions()
    required = {_normalise(r) for r in PYPROJECT["project"]["dependencies"]}
    optional = {
        extra: {_normalise(r) for r in reqs}
        for extra, reqs in PYPROJECT["project"]["optional-dependencies"].items()
    }
    # imports that only optional features reach, each behind an error naming its extra
    only_optional = {"sklearn": "studies", "tensorflow_datasets": "tfds", "submitit": "cluster",
                     "grain": "streaming", "array_record": "streaming"}  # fmt: skip
    imported: set[str] = set()
    for module, files in imported_modules().items():
        if module in only_optional:
            extra = only_optional[module]
            dists = {_normalise(d) for d in distributions.get(module, [])} or optional[extra]
            assert dists & optional[extra], f"{module} ({files}) is not in the [{extra}] extra"
            continue
        assert module in distributions, f"{module} ({sorted(files)}) is imported but not installed"
        dists = {_normalise(d) for d in distributions[module]}
        assert dists & required, f"{module} ({sorted(files)}) is imported but not declared"
        imported |= dists & required
    # jax's own plugins are not imported by name; everything else declared must be used
    assert required - imported == set(), "declared but never imported"


def test_the_extras_name_the_accelerators_and_the_name_is_not_adapt():
    project = PYPROJECT["project"]
    assert project["name"] == "adapt-jax"  # "adapt" on PyPI is an unrelated project
    extras = project["optional-dependencies"]
    assert any(r.startswith("jax[cuda12]") for r in extras["cuda"])
    assert any(r.startswith("jax[tpu]") for r in extras["tpu"])
    assert sorted(project["scripts"]) == SCRIPTS


@pytest.mark.slow
def test_the_wheel_runs_its_console_scripts_from_anywhere(tmp_path):
    dist = tmp_path / "dist"
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
         "-w", str(dist), str(REPO)],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert build.returncode == 0, build.stderr[-3000:]
    (wheel,) = dist.glob("adapt_jax-*.whl")
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        info = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
        entry_points = z.read(info).decode()
    assert {"adapt/configs/text/classify.py", "adapt/configs/sweeps/transfer.py",
            "adapt/cli/finetune.py"} <= names  # fmt: skip
    assert not any(n.startswith(("tests/", "experiments/", "configs/")) for n in names)
    for script in SCRIPTS:
        assert f"{script} = adapt.cli." in entry_points

    # A fresh virtualenv outside the checkout with the wheel installed: its dependencies come
    # from this environment's site-packages (a path entry: the editable checkout's .pth finder
    # there is not run), so the test needs no network and adapt can only come from the wheel.
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    site_dir = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    deps = [p for p in sys.path if p.endswith("site-packages")]
    (Path(site_dir) / "deps_from_test_env.pth").write_text("\n".join(deps) + "\n")
    install = subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps",
         str(wheel)],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert install.returncode == 0, install.stderr[-3000:]
    elsewhere = tmp_path / "elsewhere"  # no configs/ or adapt/ folder here
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(JAX_PLATFORMS="cpu", XLA_FLAGS="")
    bin_dir = venv / "bin"

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [*args], cwd=elsewhere, env=env, capture_output=True, text=True, timeout=900
        )

    where = run(str(python), "-c", "import adapt; print(adapt.__file__)")
    assert where.stdout.strip().startswith(site_dir), where  # the wheel, not the checkout

    missing = run(str(bin_dir / "adapt-finetune"), "--config=text/nope.py", "--workdir=w")
    assert missing.returncode == 2 and "Traceback" not in missing.stderr
    assert "text/classify.py" in missing.stderr  # the error lists the shipped configs
    assert not (elsewhere / "w").exists()

    rows = ["text,label"] + [f"great film {i},good\nawful film {i},bad" for i in range(12)]
    (elsewhere / "mine.csv").write_text("\n".join(rows) + "\n")
    workdir = elsewhere / "w"
    out = run(
        str(bin_dir / "adapt-finetune"), f"--workdir={workdir}",
        "--config=text/classify.py:train=mine.csv,smoke",
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    results = json.loads((workdir / "results.json").read_text())
    assert results["steps"] > 0 and "accuracy" in results["eval"]

    evaluated = run(str(bin_dir / "adapt-evaluate"), f"--workdir={workdir}")
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    evaluation = json.loads(evaluated.stdout)  # the newest checkpoint, on the eval split
    assert evaluation["step"] == results["steps"] and 0 <= evaluation["eval"]["accuracy"] <= 1
    for script in ("adapt-convert", "adapt-export", "adapt-sweep"):
        usage = run(str(bin_dir / script), "--help")  # absl exits 1 after printing it
        assert f"  {script} --" in usage.stdout, (script, usage.stderr[-2000:])  # the docstring


def test_configs_are_found_by_path_or_by_shipped_name(tmp_path, monkeypatch):
    from adapt.config import ConfigError, find_config, shipped_configs

    shipped = shipped_configs() / "text" / "minilm.py"
    monkeypatch.chdir(tmp_path)  # no configs/ folder here
    for name in ("configs/text/minilm.py", "text/minilm.py", "text/minilm"):
        assert find_config(name) == shipped
    mine = tmp_path / "configs" / "text" / "minilm.py"  # a file of that path wins
    mine.parent.mkdir(parents=True)
    mine.write_text("def get_config(arg=None):\n    return {}\n")
    assert find_config("configs/text/minilm.py") == mine
    with pytest.raises(ConfigError, match=r"not found: text/nope.py .*sweeps/transfer.py"):
        find_config("text/nope.py")
    with pytest.raises(ConfigError, match="not found"):
        find_config(str(tmp_path / "text" / "minilm.py"))  # an absolute path is only a path
