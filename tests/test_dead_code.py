"""No library code that only the tests or the benches use: every function, method and module-level constant
defined in the library is referenced by the library itself (or named as an entry point, or allowed below as
public API), so a test always exercises a path a user runs, and what only a bench needs lives in bench/.
Checked on the source with the AST, by name: a name used anywhere in the library counts as a use (a shared
name can hide a dead function; it never flags a live one)."""
import ast
import re
from collections import Counter
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
LIBRARY = ("core", "datasets", "backbone", "generative", "app", "bsegn")
# Methods that a library we subclass calls by itself (pickle.Unpickler.find_class)
FRAMEWORK_HOOKS = {"find_class"}
# Public API a user calls that the library itself need not call, each with why. Only for names meant for
# users: a helper that only a bench or a test needs moves to bench/ or the test instead.
PUBLIC_API = {
    # the Python API's features input (README, the model card): the CLI's path is predict --features
    "Model.predict_features": "bsegn.load_model(FOLDER).predict_features(rows)",
}


def _referenced_names(tree: ast.AST) -> Counter:
    names = Counter()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name):
            names[node.id] += 1
        elif isinstance(node, ast.Attribute):
            names[node.attr] += 1
        elif isinstance(node, ast.alias):
            names[node.name.split(".")[-1]] += 1
    return names


def _definitions(tree: ast.Module):
    """(name, node) of every module-level function and constant and every method of a module-level class."""
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield node.name, node
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            for target in (node.targets if isinstance(node, ast.Assign) else [node.target]):
                if isinstance(target, ast.Name):
                    yield target.id, node
        elif isinstance(node, ast.ClassDef):
            for item in node.body:
                if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    yield f"{node.name}.{item.name}", item


def _library_sources() -> dict[Path, ast.Module]:
    files = [path for folder in LIBRARY for path in sorted((REPO_ROOT / folder).rglob("*.py"))]
    return {path: ast.parse(path.read_text()) for path in files + [REPO_ROOT / "train.py"]}


def _names_used_in(folder: str) -> Counter:
    used = Counter()
    for path in (REPO_ROOT / folder).rglob("*.py"):
        used += _referenced_names(ast.parse(path.read_text()))
    return used


def unused_library_functions(sources: dict[Path, ast.Module], entry_points: set[str]) -> list[tuple[str, str]]:
    """[(where, qualified name)] of library functions no library code (outside their own body) refers to."""
    used = Counter()
    for tree in sources.values():
        used += _referenced_names(tree)
    unused = []
    for path, tree in sources.items():
        for qualified, node in _definitions(tree):
            name = qualified.split(".")[-1]
            if name.startswith("__") or name in FRAMEWORK_HOOKS or name in entry_points or qualified in PUBLIC_API:
                continue
            if any(isinstance(decorator, ast.Call) for decorator in getattr(node, "decorator_list", ())):
                continue  # registered by its decorator (a web route)
            outside = used[name] - _referenced_names(node)[name]
            if outside <= 0:
                unused.append((f"{path.relative_to(REPO_ROOT)}:{node.lineno}", qualified))
    return unused


def test_every_library_function_is_used_by_the_library():
    entry_points = set(re.findall(r'= "bsegn\.[\w.]+:(\w+)"', (REPO_ROOT / "pyproject.toml").read_text()))
    assert {"main", "predict_main"} <= entry_points
    unused = unused_library_functions(_library_sources(), entry_points)
    bench_use, tests_use = _names_used_in("bench"), _names_used_in("tests")

    def why(name: str) -> str:
        users = [who for who, used in (("bench/", bench_use), ("the tests", tests_use)) if used[name.split(".")[-1]]]
        return f"only {' and '.join(users)} use it" if users else "never used"

    report = [f"{where} {name} ({why(name)})" for where, name in unused]
    assert not report, ("library code nothing in the library uses (delete it and test the real path, or move it to "
                        "bench/ when only a bench needs it):\n" + "\n".join(report))


def test_the_public_api_allowed_to_go_unused_exists():
    """An allow-list entry naming nothing would silently widen the scan's blind spot."""
    defined = {qualified for tree in _library_sources().values() for qualified, _ in _definitions(tree)}
    assert set(PUBLIC_API) <= defined, set(PUBLIC_API) - defined


def test_the_scan_finds_a_function_or_constant_only_a_test_or_a_bench_uses():
    source = ("LIMIT = 3\nBENCH_GRID = (1, 2)\n\ndef used():\n    return helper() + LIMIT\n\ndef helper():\n"
              "    return 1\n\ndef only_tested():\n    return only_tested()\n\nclass Thing:\n"
              "    def method(self):\n        return used()\n")
    sources = {REPO_ROOT / "core" / "example.py": ast.parse(source)}
    found = [name for _, name in unused_library_functions(sources, set())]
    assert found == ["BENCH_GRID", "only_tested", "Thing.method"]  # its own recursion is no use
    assert [name for _, name in unused_library_functions(sources, {"method", "BENCH_GRID"})] == ["only_tested"]
