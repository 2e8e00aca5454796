"""The import graph of adapt/: no cycle (counting the imports inside functions too), and the
layers import downwards only: no module outside adapt/harness imports the harness (the studies
read the config schema from adapt.config and run runs as processes) except the command line
(adapt/cli, the top layer that nothing imports), and the harness does not import the studies."""

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _modules() -> dict[str, Path]:
    out = {}
    for f in (REPO / "adapt").rglob("*.py"):
        parts = list(f.relative_to(REPO).with_suffix("").parts)
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = f
    return out


def import_graph() -> dict[str, set[str]]:
    """Module -> the adapt modules it imports anywhere in its file (``from a import b`` counts
    as importing ``a.b`` when that is a module)."""
    modules = _modules()
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for name, f in modules.items():
        for node in ast.walk(ast.parse(f.read_text())):
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
            graph[name] |= {t for t in targets if t in modules and t != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_adapt_has_no_import_cycle():
    assert cycles(import_graph()) == []


def test_layers_import_downwards():
    graph = import_graph()
    into_harness = {
        module: sorted(t for t in targets if t.startswith("adapt.harness"))
        for module, targets in graph.items()
        if not module.startswith(("adapt.harness", "adapt.cli"))
    }
    assert {m: t for m, t in into_harness.items() if t} == {}
    into_studies = {
        m: sorted(t for t in targets if t.startswith("adapt.studies"))
        for m, targets in graph.items()
        if m.startswith("adapt.harness")
    }
    assert {m: t for m, t in into_studies.items() if t} == {}
    into_cli = {m: sorted(t for t in ts if t.startswith("adapt.cli")) for m, ts in graph.items()}
    assert {m: t for m, t in into_cli.items() if t and not m.startswith("adapt.cli")} == {}
    assert len(graph) > 80
