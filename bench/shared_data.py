"""The checkout's real benchmark metadata folder, for the benches and the tests: `../shared/data` beside the
repository, or $BSEGN_SHARED_DATA. The library never looks for it: a user names every data folder."""
from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def shared_data_dir() -> Path | None:
    """The folder, or None when it is absent (tests and benches then skip with a reason)."""
    env = os.environ.get("BSEGN_SHARED_DATA")
    candidates = [Path(env)] if env else []
    candidates.append(REPO_ROOT.parent / "shared" / "data")
    for candidate in candidates:
        if candidate.is_dir():
            return candidate
    return None
