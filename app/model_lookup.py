"""Which model a command or the Python API reads when none is named: $BSEGN_MODEL, else the most recently
written bundle under ./runs (where train.py writes its run folders)."""
from __future__ import annotations

import os
import sys
from pathlib import Path


def default_model(runs: str | os.PathLike = "runs") -> Path:
    """$BSEGN_MODEL, else the most recently written bundle under `runs` (said on stderr), else BundleError."""
    from bsegn.app.bundle import CONFIG_NAME
    from bsegn.core.errors import BundleError

    if os.environ.get("BSEGN_MODEL"):
        return Path(os.environ["BSEGN_MODEL"])
    written = [(path.stat().st_mtime, path.parent) for path in Path(runs).glob(f"*/bundle/{CONFIG_NAME}")]
    if not written:
        raise BundleError(f"no model given and none found: pass --model RUN_OR_BUNDLE, set $BSEGN_MODEL, or train "
                          f"one first (`accelerate launch train.py` writes {Path(runs) / 'demo-final' / 'bundle'})")
    newest = max(written)[1]
    print(f"predict: using the most recent model {newest} (choose another with --model or $BSEGN_MODEL)",
          file=sys.stderr)
    return newest
