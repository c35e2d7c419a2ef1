"""The package's shape: no import cycle among circuitcheck modules, no module too large to
hold in one's head, and the pytest plugin importable without torch."""
from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parent.parent / "circuitcheck"
MAX_LINES = 600


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PKG.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports() -> dict[str, set[str]]:
    """Module -> the circuitcheck modules it imports anywhere in its source (function-level,
    lazy and TYPE_CHECKING imports included: a cycle through a lazy import is still a cycle)."""
    files = {_module_name(p): p for p in PKG.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        is_pkg = path.name == "__init__.py"
        package = name if is_pkg else name.rsplit(".", 1)[0]
        out: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")
                    base = base[:len(base) - node.level + 1]
                    mod = ".".join(base + ([node.module] if node.module else []))
                else:
                    mod = node.module or ""
                targets = [mod] + [f"{mod}.{a.name}" for a in node.names]
            for t in targets:
                if t in files and t != name:
                    out.add(t)
        # ``from .x import y`` also runs x's package __init__s; ``import a.b`` runs a
        graph[name] = out
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(n: str) -> list[str] | None:
        state[n] = 1
        stack.append(n)
        for m in sorted(graph.get(n, ())):
            if state.get(m) == 1:
                return stack[stack.index(m):] + [m]
            if m not in state:
                found = visit(m)
                if found:
                    return found
        stack.pop()
        state[n] = 2
        return None

    for n in sorted(graph):
        if n not in state:
            found = visit(n)
            if found:
                return found
    return None


def _packages_of(name: str) -> set[str]:
    parts = name.split(".")
    return {".".join(parts[:i]) for i in range(2, len(parts))}


def test_no_import_cycle_among_circuitcheck_modules():
    graph = _imports()
    # importing a.b.c runs the __init__ of a.b first: an edge to a submodule is an edge to its
    # package too (the top-level ``circuitcheck`` is lazy, so it is left out)
    for deps in graph.values():
        deps |= {p for d in list(deps) for p in _packages_of(d)}
    for name in graph:  # a package's own __init__ importing its submodules is no cycle
        graph[name] = {d for d in graph[name] if d != name and not name.startswith(d + ".")}
    assert _cycle(graph) is None, "import cycle: " + " -> ".join(_cycle(graph))


def test_the_detector_finds_a_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_layering_engine_below_assertions():
    graph = _imports()
    engine = [n for n in graph if n.count(".") and n.split(".")[1] in
              ("measures", "interventions", "tasks", "models", "stats", "circuit")]
    above = ("circuitcheck.assertions", "circuitcheck.assertions_patching",
             "circuitcheck.claimfile", "circuitcheck.claimkinds", "circuitcheck.plugin",
             "circuitcheck.report", "circuitcheck.cli")
    for n in engine:
        bad = {d for d in graph[n] if d.startswith(above)}
        assert not bad, f"{n} imports the layer above it: {sorted(bad)}"
    tasks = [n for n in graph if n.startswith("circuitcheck.tasks")]
    for n in tasks:
        bad = {d for d in graph[n] if d.startswith(("circuitcheck.measures",
                                                    "circuitcheck.interventions"))}
        assert not bad, f"{n} (a task builder) imports the engine: {sorted(bad)}"


def test_no_module_is_too_large():
    sizes = {str(p.relative_to(PKG.parent)): len(p.read_text().splitlines())
             for p in PKG.rglob("*.py")}
    big = {p: n for p, n in sizes.items() if n > MAX_LINES}
    assert not big, f"modules over {MAX_LINES} lines (split them by what they own): {big}"
