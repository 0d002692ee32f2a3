"""The package graph runs downhill only (docs/architecture.md): no import cycle, no import from a lower
layer to a higher one, and a configuration layer that imports neither torch nor numpy.

The graph is read from the source (ast), every import statement counted, those inside functions too
(they run when the function does); only ``if TYPE_CHECKING:`` blocks are left out (they never run).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("pah", "sweeps", "launch", "analysis")

#: bottom to top; a module may import from its own layer and the ones below. The first matching
#: prefix decides (``pah.conf`` before ``pah``).
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("core", ("pah", "pah.errors", "pah.registry", "pah.retry", "pah.metrics", "pah.io", "pah.lock", "pah.storage")),
    ("configuration", ("pah.conf", "pah.config")),
    ("training", ("pah.data", "pah.models", "pah.methods", "pah.step", "pah.trial", "pah.bench")),
    ("analysis", ("analysis",)),
    ("sweeps", ("sweeps",)),
    ("launch", ("launch",)),
    ("commands", ("pah.cli", "pah.train_cli", "pah.__main__")),
]
#: what the configuration layer must not import, at any depth of its own modules
HEAVY = ("torch", "torchvision", "numpy", "pandas", "scipy", "sklearn", "ray", "optuna")


def modules(root: Path = ROOT) -> dict[str, Path]:
    out = {}
    for pkg in PACKAGES:
        for p in (root / pkg).rglob("*.py"):
            parts = list(p.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join(parts)] = p
    return out


def _type_checking(node: ast.AST) -> bool:
    test = getattr(node, "test", None)
    return isinstance(node, ast.If) and (
        (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING")
        or (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"))


def imported_names(path: Path, name: str) -> set[str]:
    """Every dotted name ``path`` imports (``from a import b`` gives ``a.b``; relative ones resolved)."""
    out: set[str] = set()
    stack: list[ast.AST] = [ast.parse(path.read_text())]
    while stack:
        node = stack.pop()
        if _type_checking(node):
            stack.extend(node.orelse)
            continue
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                pkg = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
                base = ".".join(pkg[: len(pkg) - node.level + 1] + ([base] if base else []))
            out.add(base)
            out.update(f"{base}.{a.name}" for a in node.names)
        stack.extend(ast.iter_child_nodes(node))
    return out


def import_graph(root: Path = ROOT) -> dict[str, set[str]]:
    """module -> the project modules it imports (a name imported from a package that is not a
    submodule is an edge to the package)."""
    mods = modules(root)
    graph = {}
    for name, path in mods.items():
        edges = set()
        for n in imported_names(path, name):
            if n in mods:
                edges.add(n)
            elif n.rsplit(".", 1)[0] in mods and n.split(".")[0] in PACKAGES:
                edges.add(n.rsplit(".", 1)[0])
        edges.discard(name)
        graph[name] = edges
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on, stack, out = set(), [], []
    counter = 0
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on.add(start)
        while work:
            v, it = work[-1]
            for w in it:
                if w not in index:
                    index[w] = low[w] = counter
                    counter += 1
                    stack.append(w)
                    on.add(w)
                    work.append((w, iter(sorted(graph[w]))))
                    break
                if w in on:
                    low[v] = min(low[v], index[w])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[v])
                if low[v] == index[v]:
                    comp = []
                    while True:
                        w = stack.pop()
                        on.discard(w)
                        comp.append(w)
                        if w == v:
                            break
                    if len(comp) > 1:
                        out.append(sorted(comp))
    return out


def layer(module: str) -> int:
    best = None
    for i, (_, prefixes) in enumerate(LAYERS):
        for p in prefixes:
            if (module == p or module.startswith(p + ".")) and (best is None or len(p) > best[1]):
                best = (i, len(p))
    if best is None:
        raise AssertionError(f"{module} is in no layer of tests/test_layers.py (add it where it belongs)")
    return best[0]


def test_the_package_graph_has_no_cycle():
    assert cycles(import_graph()) == []


def upward(graph: dict[str, set[str]]) -> list[str]:
    """Every import from a module to one in a higher layer."""
    return [f"{a} ({LAYERS[layer(a)][0]}) -> {b} ({LAYERS[layer(b)][0]})"
            for a in sorted(graph) for b in sorted(graph[a]) if layer(b) > layer(a)]


def test_imports_run_downhill_only():
    assert upward(import_graph()) == []


def test_the_configuration_layer_imports_nothing_heavy():
    mods = modules()
    conf = [m for m in mods if LAYERS[layer(m)][0] in ("core", "configuration") and m not in ("pah.io", "pah.lock")]
    heavy = sorted(f"{m} imports {n}" for m in conf for n in imported_names(mods[m], m) if n.split(".")[0] in HEAVY)
    # pah.io and pah.lock import torch inside the checkpoint functions only (a trial's, in its worker)
    assert heavy == []


@pytest.mark.parametrize("source, found", [
    # the circle of issue 23: the config validated names through the registries of the implementations
    ({"pah/config.py": "def f():\n    from pah.methods import METHODS\n",
      "pah/methods/__init__.py": "from pah.methods.base import X\n",
      "pah/methods/base.py": "from pah.config import MethodParams\n"},
     [["pah.config", "pah.methods", "pah.methods.base"]]),
    ({"pah/a.py": "from pah import b\n", "pah/b.py": "if TYPE_CHECKING:\n    from pah.a import X\n"}, []),
])
def test_the_checks_find_a_cycle(tmp_path, source, found):
    """The graph and cycle search on small trees: a local import in a function counts, a TYPE_CHECKING one does not."""
    for rel, text in source.items():
        p = tmp_path / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    for pkg in PACKAGES:
        (tmp_path / pkg).mkdir(exist_ok=True)
        (tmp_path / pkg / "__init__.py").touch()
    assert cycles(import_graph(tmp_path)) == found


def test_upward_imports_are_found(tmp_path):
    """analysis/cli.py importing sweeps' storage (as it did) is one; sweeps importing analysis is not."""
    for rel, text in {"analysis/cli.py": "def f():\n    from sweeps import storage\n", "sweeps/storage.py": "",
                      "sweeps/driver.py": "from analysis import cli\n"}.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    for pkg in PACKAGES:
        (tmp_path / pkg).mkdir(exist_ok=True)
        (tmp_path / pkg / "__init__.py").touch()
    assert upward(import_graph(tmp_path)) == ["analysis.cli (analysis) -> sweeps (sweeps)",
                                              "analysis.cli (analysis) -> sweeps.storage (sweeps)"]


def test_every_implementation_registers_a_declared_name():
    """Each method's Params is the one pah.conf declares under its name; each benchmark's shape and each
    backbone's name are pah.conf's (the configuration layer validates against these)."""
    from pah.conf import BACKBONE_NAMES, PARAMS, SHAPES
    from pah.data import BENCHMARKS
    from pah.methods import METHODS
    from pah.models import BACKBONES

    assert METHODS.names() == PARAMS.names()
    assert {n: METHODS.get(n).Params for n in METHODS.names()} == {n: PARAMS.get(n) for n in PARAMS.names()}
    assert {n: BENCHMARKS.get(n).shape for n in BENCHMARKS.names()} == {n: SHAPES.get(n) for n in SHAPES.names()}
    assert BACKBONES.names() == BACKBONE_NAMES.names()
