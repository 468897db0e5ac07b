"""No import cycle between the project's modules, counting the imports inside functions.

import-linter's layers contract only sees cycles between layers; a cycle inside one package, hidden by
an import moved into a function body, passes it. This test reads every ``.py`` file of the five
packages with `ast`, takes every ``import`` / ``from ... import`` of a project module wherever it is in
the file (module level, function body, ``if TYPE_CHECKING:``), and asserts the module graph is acyclic.

An edge goes to the most specific module that exists: ``from db import repositories`` is an edge to
``db.repositories``, ``from db.session import create_engine_for`` one to ``db.session``. As in
import-linter, the implicit import of parent packages (``import a.b.c`` first runs ``a/b/__init__.py``)
is not an edge: otherwise a package whose ``__init__`` uses its own submodules (``defectloop.report``)
would be a cycle with each of them.
"""

from __future__ import annotations

import ast
import itertools
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("defectloop", "workers", "labelling", "models", "db")

# Known cycles let through on purpose, each as the sorted tuple of its modules with the reason.
# Empty: keep it so. A new entry needs a reason stronger than "it was easier".
ALLOWED_CYCLES: dict[tuple[str, ...], str] = {}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def project_modules() -> dict[str, Path]:
    """Every module of the five packages, by dotted name."""
    modules: dict[str, Path] = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            modules[_module_name(path)] = path
    return modules


def _resolve(name: str, modules: dict[str, Path]) -> str | None:
    """The longest prefix of ``name`` that is a project module, or None when it is not the project's."""
    parts = name.split(".")
    while parts:
        candidate = ".".join(parts)
        if candidate in modules:
            return candidate
        parts.pop()
    return None


def _imported_names(tree: ast.AST, module: str, is_package: bool) -> Iterator[tuple[str, int]]:
    """Every dotted name imported anywhere in ``tree``, with its line; relative imports made absolute."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                anchor = module.split(".")
                # The package a relative import starts from: the module's own for an __init__.
                drop = node.level - 1 if is_package else node.level
                base_parts = anchor[: len(anchor) - drop] if drop else anchor
                base = ".".join([*base_parts, *([node.module] if node.module else [])])
            else:
                base = node.module or ""
            for alias in node.names:
                # ``from pkg import sub`` imports the submodule when there is one, else a name of pkg.
                yield (f"{base}.{alias.name}" if alias.name != "*" else base), node.lineno


def import_graph() -> dict[str, dict[str, int]]:
    """module -> {imported project module: line of the first such import}."""
    modules = project_modules()
    graph: dict[str, dict[str, int]] = {}
    for module, path in modules.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        edges: dict[str, int] = {}
        for name, line in _imported_names(tree, module, path.name == "__init__.py"):
            target = _resolve(name, modules)
            if target is not None and target != module:
                edges.setdefault(target, line)
        graph[module] = edges
    return graph


def strongly_connected(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """Tarjan's components with more than one module (a self-import is not counted), iteratively."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    components: list[list[str]] = []
    counter = 0
    for start in sorted(graph):
        if start in index:
            continue
        work: list[tuple[str, Iterator[str]]] = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component: list[str] = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    components.append(sorted(component))
    return components


def cycle_path(graph: dict[str, dict[str, int]], component: list[str]) -> list[str]:
    """A shortest cycle through the component's first module, as ``a -> b -> ... -> a``."""
    members = set(component)
    start = component[0]
    previous: dict[str, str] = {}
    frontier = [start]
    while frontier:
        following: list[str] = []
        for node in frontier:
            for child in sorted(graph[node]):
                if child not in members:
                    continue
                if child == start:
                    path = [node]
                    while path[-1] != start:
                        path.append(previous[path[-1]])
                    return [start, *reversed(path[:-1]), start] if node != start else [start, start]
                if child not in previous:
                    previous[child] = node
                    following.append(child)
        frontier = following
    raise AssertionError(f"no cycle through {start} in {component}")  # pragma: no cover


def _describe(graph: dict[str, dict[str, int]], members: tuple[str, ...], path: list[str]) -> str:
    steps = [f"{a} -> {b} (line {graph[a][b]})" for a, b in itertools.pairwise(path)]
    return f"{', '.join(members)}; for instance:\n    " + "\n    ".join(steps)


def test_the_graph_sees_imports_inside_functions() -> None:
    graph = import_graph()
    # Sanity: the five packages are read, and edges of each kind are found.
    assert {module.split(".")[0] for module in graph} == set(PACKAGES)
    assert "db.session" in graph["db.migrate"]  # module level
    assert "workers.celery_app" in graph["defectloop.app"]  # module level, another package
    assert "workers.celery_app" in graph["defectloop.cli._common"]  # only inside functions


def test_the_cycle_finder_reports_a_path() -> None:
    graph = {"a": {"b": 1}, "b": {"c": 2}, "c": {"a": 3, "d": 4}, "d": {}}
    assert strongly_connected(graph) == [["a", "b", "c"]]
    assert cycle_path(graph, ["a", "b", "c"]) == ["a", "b", "c", "a"]
    assert strongly_connected({"a": {"b": 1}, "b": {}}) == []


def test_no_import_cycle_between_project_modules() -> None:
    graph = import_graph()
    found = {tuple(component): cycle_path(graph, component) for component in strongly_connected(graph)}
    unexpected = {members: path for members, path in found.items() if members not in ALLOWED_CYCLES}
    assert not unexpected, "import cycles (break them; an import inside a function only hides one):\n  " + (
        "\n  ".join(_describe(graph, members, path) for members, path in unexpected.items())
    )
    stale = set(ALLOWED_CYCLES) - set(found)
    assert not stale, f"allowed cycles that no longer exist, remove them from ALLOWED_CYCLES: {sorted(stale)}"
