"""No library function that only the tests call: every function and method defined in the library is
referenced by the library itself (or named as an entry point), so a test always exercises a path a user
runs. Checked on the source with the AST, by name: a name used anywhere in the library counts as a use
(a shared name can hide a dead function; it never flags a live one)."""
import ast
import re
from collections import Counter
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
LIBRARY = ("core", "datasets", "backbone", "generative", "app", "bsegn")
# Methods that a library we subclass calls by itself (pickle.Unpickler.find_class)
FRAMEWORK_HOOKS = {"find_class"}
# For now, whatever bench/ uses counts as used: the lead is generalising the benches and moves the code only
# they use (ESZSL, BSeGNConfig.without / as_f_clswgan, datasets.paths.shared_data_dir, ...) into bench/.
COUNT_BENCH_AS_USE = True


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
    """(name, node) of every module-level function and every method of a module-level class."""
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield node.name, node
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


def unused_library_functions(sources: dict[Path, ast.Module], entry_points: set[str],
                             also_used: Counter | None = None) -> list[tuple[str, str]]:
    """[(where, qualified name)] of library functions no library code (outside their own body) refers to."""
    used = Counter()
    for tree in sources.values():
        used += _referenced_names(tree)
    unused = []
    for path, tree in sources.items():
        for qualified, node in _definitions(tree):
            name = node.name
            if name.startswith("__") or name in FRAMEWORK_HOOKS or name in entry_points:
                continue
            if any(isinstance(decorator, ast.Call) for decorator in node.decorator_list):
                continue  # registered by its decorator (a web route)
            outside = used[name] - _referenced_names(node)[name]
            if outside <= 0 and not (also_used and also_used[name]):
                unused.append((f"{path.relative_to(REPO_ROOT)}:{node.lineno}", qualified))
    return unused


def test_every_library_function_is_used_by_the_library():
    entry_points = set(re.findall(r'= "bsegn\.[\w.]+:(\w+)"', (REPO_ROOT / "pyproject.toml").read_text()))
    assert {"main", "predict_main"} <= entry_points
    unused = unused_library_functions(_library_sources(), entry_points,
                                      _names_used_in("bench") if COUNT_BENCH_AS_USE else None)
    tests_use = _names_used_in("tests")
    report = [f"{where} {name} ({'only the tests call it' if tests_use[name.split('.')[-1]] else 'never called'})"
              for where, name in unused]
    assert not report, "library code nothing in the library calls (delete it, test the real path):\n" + \
        "\n".join(report)


def test_the_scan_finds_a_function_only_a_test_calls():
    source = ("def used():\n    return helper()\n\ndef helper():\n    return 1\n\ndef only_tested():\n"
              "    return only_tested()\n\nclass Thing:\n    def method(self):\n        return used()\n")
    sources = {REPO_ROOT / "core" / "example.py": ast.parse(source)}
    found = [name for _, name in unused_library_functions(sources, set())]
    assert found == ["only_tested", "Thing.method"]  # its own recursion is no use
    assert [name for _, name in unused_library_functions(sources, set(), Counter(method=1))] == ["only_tested"]
    assert [name for _, name in unused_library_functions(sources, {"method"})] == ["only_tested"]
