"""Test-wide settings: never touch the network, keep CPU threads modest, find the real data."""
import os

# Set before any test imports timm / huggingface_hub / albumentations.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import pytest  # noqa: E402

from bsegn.datasets.paths import shared_data_dir  # noqa: E402


@pytest.fixture(scope="session")
def shared_data():
    """The real benchmark metadata folder; tests that need it skip with a reason when absent."""
    root = shared_data_dir()
    if root is None:
        pytest.skip("../shared/data (real benchmark split files) is absent; set BSEGN_SHARED_DATA to run this test")
    return root


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Generated data goes to a per-session temp cache, never the user's ~/.cache."""
    monkeypatch.setenv("BSEGN_CACHE", str(tmp_path_factory.getbasetemp() / "bsegn-cache"))
