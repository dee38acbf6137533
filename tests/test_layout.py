"""The package's layout holds: a pure core, no import cycles, no module past 600 lines.

Read with `ast` from the sources, so every import counts: module level, inside functions (the
late imports that hide a cycle from Python but not from a reader), and under TYPE_CHECKING.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from functools import cache
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "federation"

# What the core may not import: the I/O libraries (HTTP, SQL, servers, schedulers, terminals).
IO_LIBRARIES = frozenset(
    {"httpx", "sqlalchemy", "starlette", "uvicorn", "apscheduler", "typer", "rich", "alembic"}
)
MAX_LINES = 600


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@cache
def _modules() -> dict[str, Path]:
    return {_module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def _is_package(module: str) -> bool:
    return _modules()[module].name == "__init__.py"


def _imports(module: str) -> Iterator[tuple[str, int]]:
    """Every module `module` imports (absolute names), with the line it does so."""
    path = _modules()[module]
    package = module if _is_package(module) else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                # `from federation.core import sketch` imports the module federation.core.sketch.
                submodule = f"{base}.{alias.name}"
                yield (submodule if submodule in _modules() else base), node.lineno


def _resolve(name: str) -> str | None:
    """The federation module an import name loads (its deepest existing prefix)."""
    while name:
        if name in _modules():
            return name
        name = name.rpartition(".")[0]
    return None


def _edges(module: str) -> set[str]:
    """The modules importing `module` runs: each one it names, and the `__init__` of each package
    above one that `module` is not itself inside (Python runs it first)."""
    edges = set()
    for name, _ in _imports(module):
        target = _resolve(name) if name.startswith("federation") else None
        if target is None or target == module:
            continue
        edges.add(target)
        parts = target.split(".")
        for depth in range(2, len(parts)):
            package = ".".join(parts[:depth])
            if package in _modules() and not module.startswith(package + "."):
                edges.add(package)
    return edges


def test_the_core_imports_no_io_library_and_nothing_outside_the_core_but_errors() -> None:
    problems = []
    for module in _modules():
        if not (module == "federation.core" or module.startswith("federation.core.")):
            continue
        for name, line in _imports(module):
            top = name.split(".")[0]
            inside = name == "federation.errors" or name.startswith("federation.core")
            if top in IO_LIBRARIES or (top == "federation" and not inside):
                problems.append(f"{_modules()[module].relative_to(PACKAGE.parent)}:{line}: {name}")
    assert problems == []


def _cycles(graph: dict[str, list[str]]) -> list[list[str]]:
    """The strongly connected components of `graph` that hold a cycle (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(start: str) -> None:
        # Iterative, so a deep graph cannot reach Python's recursion limit.
        work = [(start, iter(graph[start]))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(graph[child])))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))

    for module in graph:
        if module not in index:
            visit(module)
    return found


def test_no_import_cycle_between_modules() -> None:
    """A package's `__init__` may import its own modules; nothing may import its way back."""
    graph = {module: sorted(_edges(module)) for module in _modules()}
    assert _cycles(graph) == []


def test_the_cycle_finder_sees_late_imports_and_package_inits() -> None:
    """The checker itself, on graphs and sources whose answer is known."""
    assert _cycles({"a": ["b"], "b": ["c"], "c": ["a"], "d": ["a"]}) == [["a", "b", "c"]]
    assert _cycles({"a": ["b"], "b": [], "c": ["a", "b"]}) == []
    late = "def f() -> None:\n    from federation.core import sketch\n"
    nodes = [n for n in ast.walk(ast.parse(late)) if isinstance(n, ast.ImportFrom)]
    assert [(n.module, n.names[0].name) for n in nodes] == [("federation.core", "sketch")]
    assert _resolve("federation.core.sketch.Sketch") == "federation.core.sketch"
    assert _resolve("numpy") is None
    # Importing a module of another package runs that package's __init__ first.
    assert "federation.coordinator" in _edges("federation.reporting.reports")
    assert "federation.coordinator" not in _edges("federation.coordinator.api")


def test_no_module_is_longer_than_600_lines() -> None:
    long = {
        str(path.relative_to(PACKAGE.parent)): lines
        for path in _modules().values()
        if (lines := len(path.read_text().splitlines())) > MAX_LINES
    }
    assert long == {}
