"""The package layout keeps our `datasets/` folder from shadowing Hugging Face's `datasets`."""
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
PACKAGE_FOLDERS = ("core", "datasets", "backbone", "generative", "app", "configs")


def test_top_level_folders_are_namespace_packages():
    # An __init__.py here would make `import datasets` from the repo root pick our folder.
    for folder in PACKAGE_FOLDERS:
        assert not (REPO_ROOT / folder / "__init__.py").exists(), f"{folder}/__init__.py must not exist"


def _import_from_repo_root(code: str) -> subprocess.CompletedProcess:
    # `python -c` puts the current directory first on sys.path, exactly like `python train.py` run from the root.
    return subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)


def test_bsegn_packages_import_from_repo_root_and_elsewhere(tmp_path):
    code = "import bsegn.datasets.splits, bsegn.app.cli; print(bsegn.datasets.splits.__file__)"
    for cwd in (REPO_ROOT, tmp_path):
        result = subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip().endswith("splits.py")


def test_hugging_face_datasets_is_not_shadowed_from_repo_root():
    # importorskip would find our own `datasets/` folder from here: ask for the installed distribution
    import importlib.metadata

    try:
        importlib.metadata.distribution("datasets")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("Hugging Face `datasets` is not installed (it is in the test extra)")
    result = _import_from_repo_root(
        "import bsegn.datasets.splits, datasets, os; "
        "print(os.path.dirname(datasets.__file__)); print(hasattr(datasets, 'load_dataset'))"
    )
    assert result.returncode == 0, result.stderr
    location, has_load_dataset = result.stdout.split()
    assert Path(location).resolve() != (REPO_ROOT / "datasets").resolve()
    assert "site-packages" in location
    assert has_load_dataset == "True"


def test_bsegn_is_a_light_regular_package_with_version_and_load_model(tmp_path):
    # `bsegn` (bsegn/__init__.py) is regular: its attributes exist, and its subpackages still import, from a
    # checkout, an editable install and a wheel (tests/test_install.py); load_model must not cost torch up front
    import importlib.metadata

    code = ("import sys, bsegn, bsegn.core.errors; print(bsegn.__version__); print('torch' in sys.modules); "
            "from bsegn import load_model; from bsegn.app.api import load_model as api; print(load_model is api)")
    for cwd in (REPO_ROOT, tmp_path):
        result = subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stderr
        version, torch_loaded_by_import, same = result.stdout.split()
        assert version == importlib.metadata.version("bsegn")
        assert torch_loaded_by_import == "False"
        assert same == "True"
