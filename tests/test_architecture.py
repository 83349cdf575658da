"""The layers of docs/architecture.md hold: no import goes up a layer, no import cycle, ``cli`` imported by
nothing but ``__main__`` (imports inside functions and under ``TYPE_CHECKING`` count)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "bayesmeta"


def layer_table() -> dict[str, int]:
    """``{top-level module or package: layer}`` from the table in docs/architecture.md."""
    layers = {}
    for line in (ROOT / "docs" / "architecture.md").read_text().splitlines():
        m = re.match(r"\|\s*(\d+)\s*\|([^|]*)\|", line)
        if m:
            for name in re.findall(r"`([\w.]+)`", m.group(2)):
                layers[name] = int(m.group(1))
    return layers


def modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def imports(name: str, path: Path, known) -> set[str]:
    """The package's modules that ``name`` imports anywhere in its file."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            subs = [f"{target}.{a.name}" for a in node.names if f"{target}.{a.name}" in known]
            found.update(subs or [target])
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
    return {t for t in found if t == "bayesmeta" or t.startswith("bayesmeta.")}


def top(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


@pytest.fixture(scope="module")
def graph():
    known = modules()
    edges = {}
    for name, path in known.items():
        targets = imports(name, path, known)
        unknown = sorted(t for t in targets if t not in known)
        assert not unknown, f"{name} imports {unknown}, which do not exist"
        edges[name] = targets
    return edges


def test_the_table_places_every_module(graph):
    layers = layer_table()
    assert layers, "docs/architecture.md has no layer table"
    unplaced = sorted({top(m) for m in graph} - set(layers))
    assert not unplaced, f"add these to the layer table in docs/architecture.md: {unplaced}"


def test_no_import_goes_up_a_layer(graph):
    layers = layer_table()
    upward = sorted(f"{a} (layer {layers[top(a)]}) imports {b} (layer {layers[top(b)]})"
                    for a, targets in graph.items() for b in targets if layers[top(b)] > layers[top(a)])
    assert not upward, "\n".join(upward)


def test_no_import_cycles(graph):
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles = []

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    assert not cycles, f"import cycles: {cycles}"


def test_cli_is_imported_by_nothing_but_main(graph):
    users = sorted(a for a, targets in graph.items()
                   if top(a) not in ("cli", "__main__") and any(top(b) == "cli" for b in targets))
    assert not users, f"library modules import the command line: {users}"


def test_the_checker_sees_imports_inside_functions(tmp_path):
    """The parser is not blind to the imports it must police (a check that can fail)."""
    path = tmp_path / "m.py"
    path.write_text("def f():\n    from ..cli import main\n    import bayesmeta.runs\n")
    found = imports("bayesmeta.inference.m", path, {"bayesmeta.cli", "bayesmeta.runs"})
    assert found == {"bayesmeta.cli", "bayesmeta.runs"}


def test_no_module_is_over_500_lines():
    long = sorted(f"{p.relative_to(ROOT)} ({n} lines)" for p in PACKAGE.rglob("*.py")
                  if (n := len(p.read_text().splitlines())) > 500)
    assert not long, f"split these (one concept per module): {long}"
