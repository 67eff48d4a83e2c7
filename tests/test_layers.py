"""The layers of the house, read from the code's own imports.

``node/`` is the application and owns the database; ``routers/`` is the rule library (routes
against a study) and ``models/`` the plugin library (manifests, runners, ``PluginHost``). A
package imports only itself and the packages below it::

    node  ->  routers  ->  models

and no module takes part in an import cycle. Every import counts: at module level, inside a
function, under ``TYPE_CHECKING``; an import moved into a function to dodge a cycle is still
the cycle. What is not counted is the parent package Python imports first (``node/jobs/
__init__.py`` before ``node.jobs.table``): an ``__init__`` is a module whose own imports are
edges like any other's.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

#: package -> the packages it may import besides itself
MAY_IMPORT: Mapping[str, frozenset[str]] = {
    "node": frozenset({"routers", "models"}),
    "routers": frozenset({"models"}),
    "models": frozenset(),
}


@dataclass(frozen=True)
class Import:
    """One import statement of one module, resolved to a module of the three packages."""

    source: str
    target: str
    line: int

    def where(self) -> str:
        path = module_files()[self.source].relative_to(REPO)
        return f"{path}:{self.line}: {self.source} -> {self.target}"


def _module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@cache
def module_files() -> Mapping[str, Path]:
    return {
        _module_name(path): path
        for package in MAY_IMPORT
        for path in sorted((REPO / package).rglob("*.py"))
    }


def _known(name: str) -> str | None:
    """The module ``name`` names, or the nearest package above it that exists here."""
    files = module_files()
    while name and name not in files:
        name = name.rpartition(".")[0]
    return name or None


def _named(module: str, node: ast.Import | ast.ImportFrom) -> Iterator[str]:
    """Dotted names an import statement reaches; ``from a import b`` may name module a.b."""
    if isinstance(node, ast.Import):
        yield from (alias.name for alias in node.names)
        return
    base = node.module or ""
    if node.level:
        is_package = module_files()[module].name == "__init__.py"
        parts = module.split(".") if is_package else module.split(".")[:-1]
        parts = parts[: len(parts) - (node.level - 1)]
        base = ".".join([*parts, *([node.module] if node.module else [])])
    for alias in node.names:
        yield f"{base}.{alias.name}" if f"{base}.{alias.name}" in module_files() else base


@cache
def imports() -> tuple[Import, ...]:
    found = []
    for module, path in module_files().items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if not isinstance(node, ast.Import | ast.ImportFrom):
                continue
            for name in _named(module, node):
                if name.split(".")[0] not in MAY_IMPORT:
                    continue
                target = _known(name)
                if target is not None and target != module:
                    found.append(Import(module, target, node.lineno))
    return tuple(found)


def _graph() -> dict[str, dict[str, Import]]:
    graph: dict[str, dict[str, Import]] = {m: {} for m in module_files()}
    for found in imports():
        graph[found.source].setdefault(found.target, found)
    return graph


def strongly_connected(graph: Mapping[str, Mapping[str, Import]]) -> list[list[str]]:
    """Tarjan's algorithm, iteratively; components of more than one module."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, successors = work[-1]
            for successor in successors:
                if successor not in index:
                    index[successor] = low[successor] = len(index)
                    stack.append(successor)
                    on_stack.add(successor)
                    work.append((successor, iter(sorted(graph[successor]))))
                    break
                if successor in on_stack:
                    low[node] = min(low[node], index[successor])
            else:
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
                        components.append(sorted(component))
    return components


def one_cycle(graph: Mapping[str, Mapping[str, Import]], component: list[str]) -> list[Import]:
    """A shortest way from the component's first module back to itself, as its imports."""
    members = set(component)
    start = component[0]
    came_from: dict[str, Import] = {}
    frontier = [start]
    while frontier:
        following = []
        for module in frontier:
            for target, found in sorted(graph[module].items()):
                if target not in members or target in came_from:
                    continue
                came_from[target] = found
                if target == start:
                    path = [found]
                    while path[0].source != start:
                        path.insert(0, came_from[path[0].source])
                    return path
                following.append(target)
        frontier = following
    raise AssertionError(f"no cycle through {start}")  # a component always has one


def test_the_graph_is_read() -> None:
    """Guards the test itself: a few imports that must be seen, top level and in a function."""
    seen = {(i.source, i.target) for i in imports()}
    assert ("node.service", "node.config") in seen
    assert ("node.cli", "node.config") in seen
    assert ("routers.check", "routers.matcher") in seen
    assert ("models.runtime", "models.api") in seen
    assert ("node.commands", "node.service") in seen  # inside cmd_serve


def _allowed(found: Import) -> bool:
    upper, lower = found.source.split(".")[0], found.target.split(".")[0]
    return lower == upper or lower in MAY_IMPORT[upper]


def test_packages_import_only_downwards() -> None:
    wrong = sorted({f for f in imports() if not _allowed(f)}, key=lambda f: (f.source, f.line))
    report = "\n".join(found.where() for found in wrong)
    assert not wrong, f"imports against the layers (node -> routers -> models):\n{report}"


def test_no_import_cycles() -> None:
    graph = _graph()
    cycles = [one_cycle(graph, component) for component in strongly_connected(graph)]
    report = "\n\n".join("\n".join(found.where() for found in cycle) for cycle in cycles)
    assert not cycles, f"import cycles (each import of one loop, in order):\n{report}"
