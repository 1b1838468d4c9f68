"""Where a bundle lies and how its config.json is read back verified.

    resolve_bundle_dir(path) -> Path        a bundle folder, or a run folder holding bundle/ (or the `.old`
                                            copy a killed write left)
    read_bundle_config(folder) -> dict      config.json: valid JSON, our format and version, its own hash
                                            intact, then the schema (app.bundle.schema)
    read_bundle_info(path) -> dict          the same from a run or bundle folder, no tensor loaded
    config_digest(config) -> str            the sha256 config.json carries of its own content
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from bsegn.app.bundle.schema import check_bundle_config
from bsegn.core.errors import BundleError
from bsegn.core.files import digest_json, existing_folder
from bsegn.core.logs import get_logger

log = get_logger(__name__)

BUNDLE_FORMAT = "bsegn-bundle"
FORMAT_VERSION = 3  # 2: the lean BSeGNConfig, gamma and unseen_ranking beside it; 3: the gate replaces gamma
READABLE_VERSIONS = (FORMAT_VERSION,)  # 0.1.0 is the first release: no older format to read
CONFIG_NAME = "config.json"
MODEL_NAME = "model.safetensors"
FULL_DIGEST = 64  # hex digits: the whole sha256


def config_digest(config: dict[str, Any]) -> str:
    """The sha256 of config.json's content (every key but config_sha256 itself, key order ignored)."""
    return digest_json({k: v for k, v in config.items() if k != "config_sha256"}, length=FULL_DIGEST)


def resolve_bundle_dir(path: str | os.PathLike) -> Path:
    """A bundle folder, or a run folder holding bundle/; `<name>.old` (the copy atomic_folder keeps until its
    swap is done) where a killed write left only that, with a warning."""
    path = Path(path)
    if (path / CONFIG_NAME).is_file() and (path / MODEL_NAME).exists():
        return path
    for folder in (path, path / "bundle"):
        found = existing_folder(folder)
        if found is not None and (found / CONFIG_NAME).is_file() and (found / MODEL_NAME).exists():
            if found != folder:
                _warn_old_copy(folder, found)
            return found
    if not path.exists():
        raise BundleError(f"{path}: no such model; give a run folder (from train.py) or its bundle/ folder")
    raise BundleError(f"{path}: not a bundle (no {CONFIG_NAME} + {MODEL_NAME}, nor a bundle/ folder in it); "
                      "give the run folder train.py wrote or its bundle/")


_warned_old_copies: set[Path] = set()


def _warn_old_copy(folder: Path, found: Path) -> None:
    if found not in _warned_old_copies:  # once per copy: a command resolves its model more than once
        _warned_old_copies.add(found)
        log.warning("%s is missing: reading %s, the copy a write that was interrupted left (the next write to "
                    "%s puts the bundle back under its name)", folder, found, folder)


def read_bundle_config(folder: Path) -> dict[str, Any]:
    """config.json, checked: valid JSON, our format, a version we read, its own hash intact."""
    path = folder / CONFIG_NAME
    try:
        config = json.loads(path.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise BundleError(f"{path}: damaged (not valid JSON: {error}); re-copy the bundle or re-run train.py") from None
    if not isinstance(config, dict) or config.get("format") != BUNDLE_FORMAT:
        found = config.get("format") if isinstance(config, dict) else None
        raise BundleError(f"{path}: not a bsegn bundle config (format {found!r})")
    version = config.get("format_version")
    if version not in READABLE_VERSIONS:
        raise BundleError(f"{folder}: bundle format version {version!r}, but this bsegn reads versions "
                          f"{', '.join(map(str, READABLE_VERSIONS))}; use the bsegn version that wrote it "
                          f"({config.get('versions', {}).get('bsegn')}) or re-run train.py")
    if config_digest(config) != config.get("config_sha256"):
        raise BundleError(f"{path}: content does not match its integrity hash: the file was edited or "
                          "damaged; re-copy the bundle (bsegn add-class writes a new valid one)")
    check_bundle_config(config, folder)  # a hash recomputed after an edit passes the line above, not this
    return config


def read_bundle_info(path: str | os.PathLike) -> dict[str, Any]:
    """The verified config.json of a bundle (or run folder), without loading any tensor."""
    return read_bundle_config(resolve_bundle_dir(path))
