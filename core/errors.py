"""Every error a user can cause, in one hierarchy.

Each carries a message that says what is wrong and what to do; `train.py`, `predict` and the `bsegn`
CLI print `BsegnError`s as one line (no traceback) and exit with status 2. Anything else is a bug.

    BsegnError
    ├── DataError        the data: split files, images, attributes, feature files
    │   └── ImageError   one image cannot be read (batch work skips and reports it)
    ├── ConfigError      a config file or override: unknown key, wrong type, out of range
    ├── BundleError      a model bundle: missing, truncated, tampered, inconsistent
    ├── WeightsError     backbone weights not available offline (the message says how to supply them)
    └── TrainingDiverged a loss became NaN/inf; the last good checkpoint is kept

They also subclass ValueError (RuntimeError for TrainingDiverged) so callers that caught the
built-in types before keep working.
"""
from __future__ import annotations


class BsegnError(Exception):
    """A user-facing error; its message is complete (what is wrong, where, and what to do)."""


class DataError(BsegnError, ValueError):
    """The data is missing, malformed or inconsistent."""


class ImageError(DataError):
    """One image cannot be decoded, is empty or too large."""


class ConfigError(BsegnError, ValueError):
    """A config file or a command-line override is wrong; the message names the key."""


class BundleError(BsegnError, ValueError):
    """A model bundle cannot be used as it is: missing files, truncated, tampered, inconsistent."""


class WeightsError(BsegnError):
    """Backbone weights are not available offline; the message says how to give them."""


class TrainingDiverged(BsegnError, RuntimeError):
    """A loss became NaN/inf or exceeded the divergence threshold."""
