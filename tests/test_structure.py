"""The shape of the tree: imports flow one way, and files stay small enough
to read.

The import graph is read with ``ast`` (nothing is imported): the ``rubikops``
package, whose modules import each other by absolute or relative name, and the
script folders ``benchmarks/`` and ``train/``, whose scripts import their
siblings by bare name (each puts its own folder on ``sys.path``).  Imports
inside functions count too: a lazy import still ties the two modules
together."""
from __future__ import annotations

import ast
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = "rubikops"
SCRIPT_DIRS = ("benchmarks", "train")
LINE_LIMIT = 600
LINE_LIMIT_DIRS = ("rubikops", "train", "benchmarks", "tests")


def _py_files(folder: str) -> list[str]:
    found = []
    for dirpath, dirnames, filenames in os.walk(os.path.join(ROOT, folder)):
        dirnames[:] = sorted(d for d in dirnames if d != "__pycache__" and not d.startswith("."))
        found += [os.path.join(dirpath, f) for f in sorted(filenames) if f.endswith(".py")]
    return found


def _package_modules() -> dict[str, str]:
    """Dotted module name -> path, for every module of the package."""
    modules = {}
    for path in _py_files(PACKAGE):
        parts = os.path.relpath(path, ROOT)[:-3].split(os.sep)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join(parts)] = path
    return modules


def _imported_names(path: str, module: str, is_package: bool, modules) -> list[str]:
    """Every dotted name the file imports, relative imports resolved; ``from X
    import Y`` names ``X.Y`` where that is one of `modules`, else ``X``."""
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read(), path)
    base = module.split(".") if is_package else module.split(".")[:-1]
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                anchor = base[:len(base) - (node.level - 1)] if node.level > 1 else base
                target = ".".join(anchor + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for alias in node.names:  # Y is a submodule, a compiled extension, or a name defined in X
                sub = f"{target}.{alias.name}"
                names.append(sub if sub in modules or _is_extension(sub) else target)
    return names


def _is_extension(dotted: str) -> bool:
    """A compiled module (``rubikops._C``): a leaf, it imports nothing of ours."""
    folder, _, stem = os.path.join(ROOT, *dotted.split(".")).rpartition(os.sep)
    return os.path.isdir(folder) and any(f.startswith(stem + ".") and f.endswith((".so", ".pyd"))
                                         for f in os.listdir(folder))


def import_graph() -> dict[str, set[str]]:
    """Module -> the modules of this tree it imports.  Package modules are
    named ``rubikops.x.y``; scripts ``benchmarks/run`` and so on."""
    graph: dict[str, set[str]] = {}
    modules = _package_modules()
    for name, path in modules.items():
        is_package = path.endswith("__init__.py")
        graph[name] = {n for n in _imported_names(path, name, is_package, modules) if n in modules and n != name}
    for folder in SCRIPT_DIRS:
        siblings = {os.path.basename(p)[:-3]: p for p in _py_files(folder)
                    if os.path.dirname(p) == os.path.join(ROOT, folder)}
        for stem, path in siblings.items():
            edges = set()
            for n in _imported_names(path, stem, False, set(modules) | set(siblings)):
                if n in siblings and n != stem:
                    edges.add(f"{folder}/{n}")
                elif n in modules:
                    edges.add(n)
            graph[f"{folder}/{stem}"] = edges
    return graph


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle per strongly connected component of more than one module
    (Tarjan), each as the shortest path from its first module back to it."""
    index, low, on_stack, stack, components = {}, {}, set(), [], []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return [_closing_path(graph, c) for c in components]


def _closing_path(graph: dict[str, set[str]], component: list[str]) -> list[str]:
    """The shortest path from the component's first module back to itself."""
    members, start = set(component), component[0]
    previous, frontier = {}, [start]
    while frontier:
        nxt = []
        for v in frontier:
            for w in sorted(graph[v] & members):
                if w == start:
                    path = [v]
                    while path[-1] != start:
                        path.append(previous[path[-1]])
                    return path[::-1] + [start]
                if w not in previous:
                    previous[w] = v
                    nxt.append(w)
        frontier = nxt
    raise AssertionError(f"no path closes {component}")


def test_find_cycles_sees_a_cycle():
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c", "a"]]
    assert find_cycles({"a": {"b"}, "b": set()}) == []


def test_import_graph_reads_the_tree():
    graph = import_graph()
    assert "rubikops.ops" in graph and "benchmarks/run" in graph and "train/pretrain" in graph
    assert "benchmarks/utils" in graph["benchmarks/run"]
    assert any(m.startswith("rubikops") for m in graph["benchmarks/run"])


# Cycles in code this test does not own, each with why it is allowed for now.
# A cycle is matched by the set of modules on the path the test prints.
KNOWN_CYCLES: dict = {}


def test_no_import_cycles():
    cycles = [c for c in find_cycles(import_graph()) if frozenset(c) not in KNOWN_CYCLES]
    assert not cycles, "import cycles (a -> b means a imports b):\n" + "\n".join(
        " -> ".join(c) for c in cycles)


def test_no_python_file_over_the_line_limit():
    over = []
    for folder in LINE_LIMIT_DIRS:
        for path in _py_files(folder):
            with open(path, encoding="utf-8") as f:
                n = sum(1 for _ in f)
            if n > LINE_LIMIT:
                over.append(f"{os.path.relpath(path, ROOT)}: {n} lines")
    assert not over, f"Python files over {LINE_LIMIT} lines (split them):\n" + "\n".join(over)
