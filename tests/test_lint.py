"""The library is lint-clean: `ruff check` (the rules of pyproject's [tool.ruff]) reports nothing in the
library folders. Skips, saying why, where ruff is not installed (it is in the test extra)."""
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
LIBRARY = ["app", "backbone", "core", "datasets", "generative", "bsegn", "train.py"]


def _ruff() -> list[str]:
    beside = Path(sys.executable).with_name("ruff")  # the venv's own, when the venv is not on PATH
    if beside.is_file():
        return [str(beside)]
    if shutil.which("ruff"):
        return [shutil.which("ruff")]
    pytest.skip("ruff is not installed (pip install -e '.[test]' installs it)")


def test_ruff_check_finds_nothing_in_the_library():
    done = subprocess.run([*_ruff(), "check", "--no-cache", *LIBRARY], cwd=REPO_ROOT, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stdout[-5000:] + done.stderr[-2000:]


def test_the_lint_rules_are_configured_where_ruff_reads_them():
    tomllib = pytest.importorskip("tomllib", reason="tomllib is in the standard library from Python 3.11")

    ruff = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["tool"]["ruff"]
    assert ruff["line-length"] == 120 and {"E", "F", "W"} <= set(ruff["lint"]["select"])


def test_every_module_logs_under_its_own_name():
    # one logger per module, named by the module (get_logger(__name__)): a record says where it came from,
    # and a test selects a module's records by that name
    import ast

    ad_hoc = []
    for folder in LIBRARY[:-1]:
        for path in sorted((REPO_ROOT / folder).glob("*.py")):
            if path.name == "logs.py" and folder == "core":
                continue  # the logging set-up itself
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", "")) in (
                        "get_logger", "getLogger"):
                    if not (len(node.args) == 1 and getattr(node.args[0], "id", None) == "__name__"):
                        ad_hoc.append(f"{path.relative_to(REPO_ROOT)}:{node.lineno}")
    assert not ad_hoc, f"log with get_logger(__name__): {ad_hoc}"
