"""The shape of the package (docs/DESIGN.md): no import cycles, every module imports, the public functions are
never hidden by a module of the same name, and only lmlab/cli/ reads the command line."""

from __future__ import annotations

import ast
import importlib
import types
from collections import deque
from pathlib import Path

import pytest

import lmlab

PACKAGE_DIR = Path(lmlab.__file__).resolve().parent


# ---------------------------------------------------------------------------------------------
# the import graph, read from the source with ast (nothing is imported)


def module_files(package_dir: Path, package: str) -> dict[str, Path]:
    """Every module of the package by dotted name; a package's ``__init__.py`` is the package itself. Directories
    without ``__init__.py`` count too: Python imports them as namespace packages."""
    modules = {}
    for path in sorted(package_dir.rglob("*.py")):
        rel = path.relative_to(package_dir).with_suffix("")
        if "__pycache__" in rel.parts:
            continue
        parts = [package, *rel.parts]
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


def _resolve(name: str, modules: dict[str, Path]) -> str | None:
    """The module that importing ``name`` executes: itself, or its longest prefix that is a module."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def _imported_names(node: ast.AST, module: str, is_package: bool) -> list[str]:
    """The dotted names one import statement asks for, with relative imports made absolute; for ``from X import y``
    both ``X.y`` (y may be a submodule) and ``X``."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if isinstance(node, ast.ImportFrom):
        if node.level:
            base = module.split(".") if is_package else module.split(".")[:-1]
            base = base[: len(base) - (node.level - 1)]
            source = ".".join([*base, node.module] if node.module else base)
        else:
            source = node.module or ""
        return [f"{source}.{alias.name}" for alias in node.names if alias.name != "*"] + [source]
    # importlib.import_module("lmlab.x") with a literal name is an import too
    if (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr == "import_module"
        and node.args
        and isinstance(node.args[0], ast.Constant)
        and isinstance(node.args[0].value, str)
    ):
        return [node.args[0].value]
    return []


def import_graph(package_dir: Path, package: str) -> dict[str, dict[str, int]]:
    """module -> {module it imports: line of the first such import}. Every import counts, also those inside functions
    and under ``if TYPE_CHECKING``: a lazy import still ties the two modules together in the design. The root
    package is left out: its ``__init__`` is the lazy re-export surface, above everything."""
    modules = module_files(package_dir, package)
    graph: dict[str, dict[str, int]] = {}
    for module, path in modules.items():
        if module == package:
            continue
        edges = graph.setdefault(module, {})
        is_package = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
            names = _imported_names(node, module, is_package)
            if isinstance(node, ast.ImportFrom):  # X.y when y is a submodule of X, else X
                submodules = [n for n in names[:-1] if n in modules]
                names = submodules if submodules and len(submodules) == len(names) - 1 else [*submodules, names[-1]]
            for name in names:
                if name != package and not name.startswith(package + "."):
                    continue
                target = _resolve(name, modules)
                if target in (None, package, module):
                    continue
                edges[target] = min(edges.get(target, node.lineno), node.lineno)  # ast.walk is breadth-first
    return graph


def strongly_connected(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """Tarjan's strongly connected components, iteratively (no recursion limit)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph.get(root, {}))))]
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
                    work.append((child, iter(sorted(graph.get(child, {})))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                components.append(sorted(component))
    return components


def _shortest_cycle(graph: dict[str, dict[str, int]], start: str, within: set[str]) -> list[str]:
    parent: dict[str, str] = {}
    queue = deque([start])
    while queue:
        node = queue.popleft()
        for child in sorted(graph.get(node, {})):
            if child == start:
                path = [node]
                while path[-1] != start:
                    path.append(parent[path[-1]])
                return [start, *reversed(path[:-1]), start]
            if child in within and child not in parent:
                parent[child] = node
                queue.append(child)
    raise AssertionError(f"{start} is in a cycle but none was found")


def find_cycles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """The shortest cycle through each module that is in one, each written once (starting at its smallest name):
    every module of every cycle shows up, without listing the exponentially many cycles of a tangle."""
    cycles = set()
    for component in strongly_connected(graph):
        if len(component) < 2:
            continue  # a self-import is ignored when the graph is built
        for module in component:
            cycle = _shortest_cycle(graph, module, set(component))[:-1]
            i = cycle.index(min(cycle))
            cycles.add(tuple(cycle[i:] + cycle[:i]))
    return [[*c, c[0]] for c in sorted(cycles)]


def describe(cycle: list[str], graph: dict[str, dict[str, int]], modules: dict[str, Path], root: Path) -> str:
    where = ", ".join(f"{modules[a].relative_to(root)}:{graph[a][b]}" for a, b in zip(cycle, cycle[1:]))
    return f"{' -> '.join(cycle)}  ({where})"


def test_no_import_cycles():
    graph = import_graph(PACKAGE_DIR, "lmlab")
    modules = module_files(PACKAGE_DIR, "lmlab")
    cycles = [describe(c, graph, modules, PACKAGE_DIR.parent) for c in find_cycles(graph)]
    assert not cycles, "import cycles in lmlab (each import is at the file:line shown):\n" + "\n".join(cycles)


def test_the_cycle_finder_finds_cycles_of_every_import_form(tmp_path):
    """The checker itself, on a package made for it: each import form gives its edge, and each cycle is reported."""
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "ns").mkdir()  # no __init__.py: a namespace package
    files = {
        "__init__.py": "from pkg.a import f\n",  # the root: left out
        "a.py": "def f():\n    import pkg.b\nimport pkg.b\n",  # the first line counts
        "b.py": "def g():\n    from pkg import c\n",  # lazy, and `from pkg import <submodule>`
        "c.py": "from pkg.sub import d\nfrom pkg import a\n",  # d is a submodule of pkg.sub
        "sub/__init__.py": "from .d import h\n",  # relative
        "sub/d.py": "from pkg.sub import VALUE\nimport pkg.sub.d\n",  # a name of the package; itself
        "ns/e.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from ..ns import f\n",
        "ns/f.py": "import importlib\nimportlib.import_module('pkg.ns.e')\nimport pkg\nfrom pkg import __version__\n",
        "lone.py": "import os\nfrom pkg.a import f\n",
    }
    for name, text in files.items():
        (pkg / name).write_text(text)
    graph = import_graph(pkg, "pkg")
    assert graph == {
        "pkg.a": {"pkg.b": 2},
        "pkg.b": {"pkg.c": 2},
        "pkg.c": {"pkg.sub.d": 1, "pkg.a": 2},
        "pkg.sub": {"pkg.sub.d": 1},
        "pkg.sub.d": {"pkg.sub": 1},
        "pkg.ns.e": {"pkg.ns.f": 3},
        "pkg.ns.f": {"pkg.ns.e": 2},
        "pkg.lone": {"pkg.a": 2},
    }
    assert find_cycles(graph) == [
        ["pkg.a", "pkg.b", "pkg.c", "pkg.a"],
        ["pkg.ns.e", "pkg.ns.f", "pkg.ns.e"],
        ["pkg.sub", "pkg.sub.d", "pkg.sub"],
    ]
    modules = module_files(pkg, "pkg")
    assert describe(find_cycles(graph)[0], graph, modules, tmp_path) == "pkg.a -> pkg.b -> pkg.c -> pkg.a  " + (
        "(pkg/a.py:2, pkg/b.py:2, pkg/c.py:2)"
    )
    # two cycles through one module, and a chain leading into a cycle but not on it
    tangle = {"x": {"y": 1, "z": 1}, "y": {"x": 1}, "z": {"x": 1}, "w": {"x": 1}}
    assert find_cycles(tangle) == [["x", "y", "x"], ["x", "z", "x"]]
    assert find_cycles({"x": {"y": 1}, "y": {"z": 1}, "z": {}}) == []


# ---------------------------------------------------------------------------------------------
# every module imports; the public functions stay functions


ALL_MODULES = sorted(module_files(PACKAGE_DIR, "lmlab"))


def test_every_module_imports():
    broken = []
    for name in ALL_MODULES:
        try:
            importlib.import_module(name)
        except Exception as e:  # every failure, not only the first
            broken.append(f"{name}: {type(e).__name__}: {e}")
    assert not broken, "modules that do not import:\n" + "\n".join(broken)


def test_public_functions_are_functions_after_every_module_is_imported():
    """``lmlab.train`` stays the function of lmlab.api even after ``import lmlab.training`` (or any other module) has
    set attributes on the package."""
    api = importlib.import_module("lmlab.api")
    for name in ALL_MODULES:
        importlib.import_module(name)
    public = [name for name in lmlab.__all__ if name != "__version__"]
    functions = [name for name in public if isinstance(getattr(api, name, None), types.FunctionType)]
    assert functions, "lmlab.__all__ names none of the functions of lmlab.api"
    for name in public:
        value = getattr(lmlab, name)
        assert not isinstance(value, types.ModuleType), f"lmlab.{name} is the module {value.__name__}, not the API"
    for name in functions:
        value = getattr(lmlab, name)
        assert value is getattr(api, name), f"lmlab.{name} is {value!r}, not lmlab.api.{name}"
        assert callable(value)


def test_no_module_is_named_like_a_public_name():
    """A module lmlab/NAME.py or package lmlab/NAME/ would become the attribute lmlab.NAME once imported."""
    top_level = {name.split(".")[1] for name in ALL_MODULES if name.count(".") >= 1}
    clashes = sorted(top_level & set(lmlab.__all__))
    assert not clashes, f"modules of lmlab named like a public name of lmlab.__all__: {clashes}"


# ---------------------------------------------------------------------------------------------
# the command line is read in lmlab/cli/ only


def argv_handling(source: str) -> list[tuple[int, str]]:
    """Where a source file parses the command line, as (line, what): tyro.cli(...), argparse, sys.argv."""
    found = []
    for node in ast.walk(ast.parse(source)):
        what = None
        if isinstance(node, ast.Import):
            if any(alias.name == "argparse" for alias in node.names):
                what = "import argparse"
        elif isinstance(node, ast.ImportFrom):
            names = {alias.name for alias in node.names}
            if node.module == "argparse":
                what = "from argparse import ..."
            elif node.module == "tyro" and "cli" in names:
                what = "from tyro import cli"
            elif node.module == "sys" and "argv" in names:
                what = "from sys import argv"
        elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
            if (node.value.id, node.attr) in (("tyro", "cli"), ("sys", "argv")):
                what = f"{node.value.id}.{node.attr}"
        if what:
            found.append((node.lineno, what))
    return sorted(found)


def test_only_the_cli_package_parses_argv():
    offenders = [
        f"{path.relative_to(PACKAGE_DIR.parent)}:{line}: {what}"
        for name, path in module_files(PACKAGE_DIR, "lmlab").items()
        if name != "lmlab.cli" and not name.startswith("lmlab.cli.")
        for line, what in argv_handling(path.read_text(encoding="utf-8"))
    ]
    assert not offenders, "argv handling outside lmlab/cli/ (parse it in the verb's module there):\n" + "\n".join(
        offenders
    )


@pytest.mark.parametrize(
    "source, hits",
    [
        ("import tyro\ndef cli(argv):\n    return tyro.cli(int, args=argv)\n", [(3, "tyro.cli")]),
        ("import sys\nx = sys.argv[1:]\n", [(2, "sys.argv")]),
        ("import argparse\n", [(1, "import argparse")]),
        ("from sys import argv\nfrom tyro import cli\n", [(1, "from sys import argv"), (2, "from tyro import cli")]),
        ("import sys\nimport tyro\nFlag = tyro.conf.Flag\nsys.exit(2)\n", []),
    ],
)
def test_argv_handling_is_recognized(source, hits):
    assert argv_handling(source) == hits
