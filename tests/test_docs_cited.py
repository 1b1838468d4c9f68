"""The library and its configs cite the repository's own docs/, never a folder outside the checkout, and
every docs/*.md they cite exists (a user with the repository alone can read the specification)."""
import re
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
LIBRARY = ("app", "backbone", "core", "datasets", "generative", "configs", "bsegn")
# the checkout's real-data folder is found by bench/shared_data.py, for the tests and benches only
ALLOWED_OUTSIDE: set[str] = set()


def _library_files():
    for folder in LIBRARY:
        for path in sorted((REPO_ROOT / folder).rglob("*")):
            if path.suffix in (".py", ".yaml") and "__pycache__" not in path.parts:
                yield path
    yield REPO_ROOT / "train.py"


def test_nothing_in_the_library_points_outside_the_checkout():
    offenders = [f"{path.relative_to(REPO_ROOT)}:{number}" for path in _library_files()
                 if str(path.relative_to(REPO_ROOT)) not in ALLOWED_OUTSIDE
                 for number, line in enumerate(path.read_text().splitlines(), 1) if "../shared" in line]
    assert not offenders, f"cite docs/ instead of ../shared: {offenders}"


def test_every_cited_doc_exists():
    cited = {match for path in _library_files() for match in re.findall(r"docs/[\w.-]+\.md", path.read_text())}
    assert {"docs/method.md", "docs/protocol.md", "docs/data.md"} <= cited
    missing = sorted(doc for doc in cited if not (REPO_ROOT / doc).is_file())
    assert not missing, f"cited but absent: {missing}"
