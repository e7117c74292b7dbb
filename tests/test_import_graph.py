"""The module graph of the server apps: no import cycles, no `_private` names taken across modules.

Read from the source (``ast``), function-level imports included: a cycle hidden behind an import
inside a function is still two modules that cannot be understood or changed apart. When two
modules need the same thing, it gets a public home of its own (``projector.document_write`` and
``projector.sink_settlement`` for the two sinks; the admin site owns the overview page).
"""

import ast
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("khala_project", "projector", "runtime", "tokens")


def _modules() -> dict[str, Path]:
    modules = {}
    for package in PACKAGES:
        for path in (REPO_ROOT / package).rglob("*.py"):
            if "migrations" in path.parts:
                continue
            parts = path.relative_to(REPO_ROOT).with_suffix("").parts
            modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


def import_graph() -> tuple[dict[str, set[str]], list[tuple[str, str, str]]]:
    """``(edges, private)``: module -> modules it imports (within PACKAGES), and every
    ``(importer, module, name)`` where ``name`` starts with ``_`` and comes from another module."""
    modules = _modules()
    edges: dict[str, set[str]] = {name: set() for name in modules}
    private = []
    for importer, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                for alias in node.names:
                    submodule = f"{node.module}.{alias.name}"
                    if submodule in modules:
                        edges[importer].add(submodule)
                    elif node.module in modules:
                        edges[importer].add(node.module)
                        if alias.name.startswith("_") and node.module != importer:
                            private.append((importer, node.module, alias.name))
            elif isinstance(node, ast.Import):
                edges[importer].update(alias.name for alias in node.names if alias.name in modules)
    return edges, private


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []
    for root in sorted(edges):
        if root in index:
            continue
        work = [(root, iter(sorted(edges[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(edges[child]))))
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
    return found


def test_no_import_cycles():
    edges, _ = import_graph()
    assert cycles(edges) == []


def test_no_private_names_across_modules():
    _, private = import_graph()
    assert private == []


@pytest.mark.parametrize(
    ("edges", "expected"),
    [
        ({"a": {"b"}, "b": {"a"}, "c": {"a"}}, [["a", "b"]]),
        ({"a": {"b"}, "b": {"c"}, "c": {"a"}}, [["a", "b", "c"]]),
        ({"a": {"b"}, "b": set()}, []),
    ],
)
def test_cycle_finder(edges, expected):
    assert cycles(edges) == expected
