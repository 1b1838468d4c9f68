"""Where data lives: the shared real-data folder, and the cache for generated data."""
from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def shared_data_dir() -> Path | None:
    """The real benchmark metadata folder (`../shared/data` beside the repository, or $BSEGN_SHARED_DATA).

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
