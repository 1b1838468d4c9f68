"""The architecture, checked on the source: data flows one way, core <- datasets <- backbone <-
generative <- app, and no module imports one that (directly or through others) imports it back.

Imports inside functions count too: a lazy import is still a dependency, and a cycle hidden behind
one is still a cycle."""
import ast
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
LAYERS = ("core", "datasets", "backbone", "generative", "app")  # each may import only those before it
# generative never uses the image side: it works on features, so a feature file run needs no backbone
FORBIDDEN_BESIDES_UPWARD = {"generative": {"backbone"}}


def bsegn_imports(source: str) -> list[tuple[int, str]]:
    """(line, module) for every `bsegn.*` module a source file imports, at any depth of the code."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names if alias.name.startswith("bsegn.")]
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("bsegn."):
            if node.module.count(".") == 1:  # `from bsegn.core import files`: each name is a module
                found += [(node.lineno, f"{node.module}.{alias.name}") for alias in node.names]
            else:
                found.append((node.lineno, node.module))
    return found


def layering_violations(layer_of_file: str, source: str) -> list[str]:
    rank = LAYERS.index(layer_of_file)
    bad = []
    for line, module in bsegn_imports(source):
        target = module.split(".")[1]
        if target not in LAYERS:
            continue
        if LAYERS.index(target) > rank or target in FORBIDDEN_BESIDES_UPWARD.get(layer_of_file, ()):
            bad.append(f"line {line}: {layer_of_file} imports {module}")
    return bad


def library_files():
    """(layer, path) of every module of the library, subpackages (app/bundle/) included."""
    for layer in LAYERS:
        for path in sorted((REPO_ROOT / layer).rglob("*.py")):
            yield layer, path


def module_name(path: Path) -> str:
    """app/bundle/load.py -> bsegn.app.bundle.load; app/bundle/__init__.py -> bsegn.app.bundle."""
    parts = path.relative_to(REPO_ROOT).with_suffix("").parts
    return ".".join(("bsegn",) + (parts[:-1] if parts[-1] == "__init__" else parts))


def test_no_layer_imports_upward():
    problems = [f"{path.relative_to(REPO_ROOT)} {issue}" for layer, path in library_files()
                for issue in layering_violations(layer, path.read_text())]
    assert not problems, "imports against the layering:\n" + "\n".join(problems)


def test_no_import_cycles_between_modules():
    graph = {}
    for layer, path in library_files():
        graph[module_name(path)] = {m for _, m in bsegn_imports(path.read_text())}
    cycles = []
    state: dict[str, int] = {}  # 1 on the current path, 2 finished

    def visit(node, path):
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if nxt not in graph or nxt == node:
                continue
            if state.get(nxt) == 1:
                cycles.append(" -> ".join(path[path.index(nxt):] + [nxt]))
            elif nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert not cycles, "import cycles:\n" + "\n".join(cycles)
    assert "bsegn.app.bundle.load" in graph and "bsegn.app.bundle" in graph  # the subpackage is scanned too


@pytest.mark.parametrize("layer, source, expected", [
    ("datasets", "def f():\n    from bsegn.backbone.factory import create_backbone\n", 1),
    ("backbone", "import bsegn.app.cli\n", 1),
    ("generative", "from bsegn.backbone import factory\n", 1),
    ("generative", "from bsegn.datasets.splits import ZSLSplit\nfrom bsegn.core.errors import DataError\n", 0),
    ("core", "from bsegn.datasets import paths\n", 1),
    ("app", "from bsegn.generative.model import TrainedBSeGN\n", 0),
])
def test_the_checker_itself_sees_upward_and_lazy_imports(layer, source, expected):
    assert len(layering_violations(layer, source)) == expected
