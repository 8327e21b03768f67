"""The import graph of cfd/ and app.py, read from the source (every import
statement, function-level ones included: an import inside a function hides a
loop, it does not remove it):

- no import cycle of any length;
- the engine (render, noise, gaussians, densify, schedule, distill) imports no
  backend and no front end, directly or through another cfd module.

An edge is what Python executes: ``from .x import y`` and ``from . import x``
(x a submodule) import ``cfd.x``; ``from . import name`` (name not a submodule)
imports the package itself; importing ``cfd.a.b`` also runs each package above
it (``cfd.a``) that is not a package of the importer's own (a module inside a
package is imported by way of that package anyway, so that is no loop).
"""
from __future__ import annotations

import ast
from collections import deque
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ENGINE = ("cfd.render", "cfd.noise", "cfd.gaussians", "cfd.densify", "cfd.schedule", "cfd.distill")
# what the engine must not reach: backends, the request layer, front ends
FORBIDDEN = ("cfd.guidance", "cfd.backends", "cfd.request", "cfd.runner", "cfd.params", "cfd.settings",
             "app", "gradio")


def module_files(root: Path, packages: tuple[str, ...] = ("cfd",), modules: tuple[str, ...] = ("app",)) -> dict:
    """Dotted module name → file, for every .py under ``packages`` and the top-level ``modules``."""
    files = {}
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            parts = path.relative_to(root).with_suffix("").parts
            files[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    for name in modules:
        if (root / f"{name}.py").exists():
            files[name] = root / f"{name}.py"
    return files


def _package_of(name: str, path: Path) -> str:
    return name if path.name == "__init__.py" else name.rpartition(".")[0]


def imported_names(name: str, path: Path, known: set[str]) -> set[str]:
    """Every absolute module name an import statement anywhere in ``path`` (module
    ``name``) names: ``from P import n`` gives P.n where that is a module in ``known``
    (a submodule), else P."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = _package_of(name, path).split(".")
                base = base[:len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                out.add(sub if sub in known else target)
    return out


def import_graph(root: Path = ROOT, **kw) -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    """(edges between the project's modules, every name each module imports)."""
    files = module_files(root, **kw)
    known = set(files)
    graph, raw = {}, {}
    for name, path in files.items():
        raw[name] = imported_names(name, path, known)
        own = {".".join(name.split(".")[:i]) for i in range(1, name.count(".") + 2)}
        if path.name != "__init__.py":
            own.discard(name)
        edges = set()
        for target in raw[name]:
            parts = target.split(".")
            for i in range(1, len(parts) + 1):   # the target and the packages above it
                mod = ".".join(parts[:i])
                if mod in known and mod != name and (mod == target or mod not in own):
                    edges.add(mod)
        graph[name] = edges
    return graph, raw


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle (a → b → … → a) per strongly connected component of more than one module."""
    index, low, stack, on_stack, components = {}, {}, [], set(), []

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
                components.append(set(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return [_cycle_in(graph, component) for component in components]


def _cycle_in(graph: dict[str, set[str]], component: set[str]) -> list[str]:
    start = min(component)
    back = {start: None}
    queue = deque([start])
    while queue:   # breadth first from start until an edge leads back to it: a shortest cycle through start
        v = queue.popleft()
        for w in sorted(graph[v] & component):
            if w == start:
                path = [v]
                while back[path[-1]] is not None:
                    path.append(back[path[-1]])
                return path[::-1] + [start]
            if w not in back:
                back[w] = v
                queue.append(w)
    raise AssertionError(f"no cycle in {component}")


def path_between(graph: dict[str, set[str]], start: str, goal) -> list[str] | None:
    """A shortest import chain from ``start`` to a module for which ``goal(module)`` holds."""
    back = {start: None}
    queue = deque([start])
    while queue:
        v = queue.popleft()
        if goal(v) and v != start:
            path = [v]
            while back[path[-1]] is not None:
                path.append(back[path[-1]])
            return path[::-1]
        for w in sorted(graph.get(v, ())):
            if w not in back:
                back[w] = v
                queue.append(w)
    return None


def _forbidden(module: str) -> bool:
    return any(module == f or module.startswith(f + ".") for f in FORBIDDEN)


# ------------------------------------------------------------------ the project

def test_no_import_cycle_of_any_length():
    graph, _ = import_graph()
    found = cycles(graph)
    assert not found, "import cycles (function-level imports included):\n" + "\n".join(
        " → ".join(cycle) for cycle in found)


@pytest.mark.parametrize("engine", ENGINE)
def test_the_engine_imports_no_backend_and_no_front_end(engine):
    graph, raw = import_graph()
    assert engine in graph, f"{engine} is gone: update ENGINE"
    direct = sorted(m for m in raw[engine] if _forbidden(m))
    assert not direct, f"{engine} imports {', '.join(direct)}"
    # nor by way of another module: through the project's modules, or one of them importing gradio
    reached = path_between(graph, engine, lambda m: _forbidden(m) or any(_forbidden(r) for r in raw.get(m, ())))
    if reached and not _forbidden(reached[-1]):
        reached.append(min(r for r in raw[reached[-1]] if _forbidden(r)))
    assert reached is None, f"{engine} reaches a backend or front end: {' → '.join(reached)}"


# ------------------------------------------------------------------ the checker itself

def _package(tmp_path: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    return tmp_path


def test_a_function_level_import_closes_a_cycle(tmp_path):
    root = _package(tmp_path, {
        "pkg/__init__.py": "from .a import f\n",
        "pkg/a.py": "from .b import g\n\ndef f():\n    return g()\n",
        "pkg/b.py": "def g():\n    from .c import h\n    return h()\n",
        "pkg/c.py": "def h():\n    from pkg.a import f\n    return f\n",
    })
    graph, _ = import_graph(root, packages=("pkg",), modules=())
    assert cycles(graph) == [["pkg.a", "pkg.b", "pkg.c", "pkg.a"]]


def test_a_package_importing_its_submodules_is_no_cycle(tmp_path):
    root = _package(tmp_path, {
        "pkg/__init__.py": "from .a import f\nfrom . import b\n",
        "pkg/a.py": "from . import b\nfrom .b import g\n\ndef f():\n    from . import c as kernel\n",
        "pkg/b.py": "g = 1\n",
        "pkg/c.py": "import os\n",
        "pkg/sub/__init__.py": "from .x import y\n",
        "pkg/sub/x.py": "from ..a import f\ny = 1\n",
    })
    graph, _ = import_graph(root, packages=("pkg",), modules=())
    assert graph["pkg.a"] == {"pkg.b", "pkg.c"} and graph["pkg.sub.x"] == {"pkg.a"}
    assert cycles(graph) == []


def test_a_name_from_the_package_and_a_subpackage_s_init_are_edges(tmp_path):
    root = _package(tmp_path, {
        "pkg/__init__.py": "from .a import f\nVALUE = 1\n",
        "pkg/a.py": "def f():\n    from pkg.sub.x import y\n",
        "pkg/b.py": "from . import VALUE\n",
        "pkg/sub/__init__.py": "from ..b import VALUE\n",   # runs when pkg.a imports pkg.sub.x
        "pkg/sub/x.py": "y = 1\n",
    })
    graph, _ = import_graph(root, packages=("pkg",), modules=())
    assert graph["pkg.b"] == {"pkg"} and graph["pkg.a"] == {"pkg.sub", "pkg.sub.x"}
    assert cycles(graph) == [["pkg", "pkg.a", "pkg.sub", "pkg.b", "pkg"]]
