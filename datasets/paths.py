"""Where generated data lives: the cache (the library reads real data only where the user says)."""
from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """Folder for generated data and feature caches ($BSEGN_CACHE, else ~/.cache/bsegn)."""
    root = Path(os.environ.get("BSEGN_CACHE", Path.home() / ".cache" / "bsegn"))
    root.mkdir(parents=True, exist_ok=True)
    return root
