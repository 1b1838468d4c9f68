"""Where data lives: the cache for generated data (the library reads real data only where the user says), and
the checkout's real-data folder for the tests and benches."""
from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def shared_data_dir() -> Path | None:
    """The real benchmark metadata folder of this checkout's tests and benches (`../shared/data` beside the
    repository, or $BSEGN_SHARED_DATA). The library itself never calls it: a user names every data folder.

    Returns None when it is absent: tests and benchmarks then skip with a reason.
    """
    env = os.environ.get("BSEGN_SHARED_DATA")
    candidates = [Path(env)] if env else []
    candidates.append(REPO_ROOT.parent / "shared" / "data")
    for candidate in candidates:
        if candidate.is_dir():
            return candidate
    return None


def cache_dir() -> Path:
    """Folder for generated data and feature caches ($BSEGN_CACHE, else ~/.cache/bsegn)."""
    root = Path(os.environ.get("BSEGN_CACHE", Path.home() / ".cache" / "bsegn"))
    root.mkdir(parents=True, exist_ok=True)
    return root
