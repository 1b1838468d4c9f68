"""Atomic writes and content digests: the one place files are written so that a kill never leaves
half a file, and the one place content is hashed.

    atomic_write_text(path, text)          temp file in the same folder, fsync'd, os.replace'd
    atomic_write_bytes(path, data)
    atomic_write_json(path, value)         valid JSON: a NaN or infinity is written null (json_text)
    with atomic_file(path) as temp: ...     for writers that want a file name (safetensors.save_file)
    with atomic_folder(path) as temp: ...   a whole folder, renamed into place when the block succeeds
    remove_stale_temporaries(path)          atomic_folder's leftovers of a killed writer (under the folder's lock)
    digest_json(value), digest_arrays(*arrays), file_sha256(path)

Files are created with the permissions the user's umask gives (0644 usually), never the 0600 of a
bare `tempfile.mkstemp`.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

DIGEST_LENGTH = 16
OLD_SUFFIX = ".old"  # atomic_folder's name for the folder it is replacing, until the swap is done


def _umask_mode(base: int = 0o666) -> int:
    # os.umask can only be read by setting it; set it back at once.
    mask = os.umask(0)
    os.umask(mask)
    return base & ~mask


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; when the block succeeds it replaces `path` atomically.
    On error the temporary file is removed and `path` is untouched."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(handle)
    temp = Path(name)
    try:
        yield temp
        os.chmod(temp, _umask_mode())
        with open(temp, "rb") as done:  # the data reaches the disk before the name points at it
            os.fsync(done.fileno())
        os.replace(temp, path)
    finally:
        if temp.exists():
            temp.unlink()


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    with atomic_file(path) as temp:
        temp.write_bytes(data)
    return Path(path)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, value: Any, *, indent: int | None = 1) -> Path:
    """`value` as JSON (json_text: a NaN or infinity is written null), written atomically."""
    return atomic_write_text(path, json_text(value, indent=indent) + "\n")


def json_safe(value: Any) -> Any:
    """`value` with numpy/torch values, paths and tuples made JSON types (jsonable) and every float that
    is NaN or infinite replaced by None: JSON has no such numbers (json.dumps would write bare `NaN`,
    which strict readers refuse), and null says "no number" in every language."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [json_safe(item) for item in value]
    if value is None or isinstance(value, (str, int)):
        return value
    return json_safe(jsonable(value))


def json_text(value: Any, *, indent: int | None = None) -> str:
    """Valid JSON for `value` (json_safe'd; allow_nan=False guards the rule)."""
    return json.dumps(json_safe(value), indent=indent, allow_nan=False)


@contextlib.contextmanager
def atomic_folder(path: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty temporary folder beside `path`; when the block succeeds it takes `path`'s place.

    The old folder (if any) is first renamed to `<path>.old` and removed after the swap, so at every
    instant one complete folder exists under `path` or `<path>.old` (see `existing_folder`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    os.chmod(temp, _umask_mode(0o777))
    try:
        yield temp
        old = path.with_name(path.name + OLD_SUFFIX)
        if path.exists():
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
        os.replace(temp, path)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        if temp.exists():
            shutil.rmtree(temp, ignore_errors=True)


def remove_stale_temporaries(path: str | os.PathLike) -> list[Path]:
    """Remove the temporary folders atomic_folder left beside `path` when its process was killed
    (`.<name>.XXXXXXXX.tmp`); the removed paths. Only for a writer that holds the folder's lock (a live
    writer's temporary has the same name form)."""
    path = Path(path)
    pattern = re.compile(rf"\.{re.escape(path.name)}\.[a-z0-9_]{{8}}\.tmp")  # mkdtemp's 8 random characters
    removed = []
    if path.parent.is_dir():
        for entry in path.parent.iterdir():
            if pattern.fullmatch(entry.name) and entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
                removed.append(entry)
    return removed


def existing_folder(path: str | os.PathLike) -> Path | None:
    """`path` if it exists, else `<path>.old` left by a kill between atomic_folder's two renames."""
    path = Path(path)
    if path.is_dir():
        return path
    old = path.with_name(path.name + OLD_SUFFIX)
    return old if old.is_dir() else None


def jsonable(value: Any) -> Any:
    """A JSON-safe form of numpy scalars/arrays, tensors, paths, tuples and sets (json's `default`)."""
    if hasattr(value, "tolist"):  # numpy arrays and scalars, torch tensors
        return value.tolist()
    if isinstance(value, (Path, os.PathLike)):
        return str(value)
    if isinstance(value, (tuple, set, frozenset)):
        return list(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def digest_json(value: Any, length: int = DIGEST_LENGTH) -> str:
    """A short sha256 of a JSON-able value, independent of dict key order."""
    text = json.dumps(value, sort_keys=True, default=jsonable)
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def digest_arrays(*arrays: Any, length: int = DIGEST_LENGTH) -> str:
    """A short sha256 of numpy arrays / torch tensors: dtype, shape and bytes of each, in order."""
    import numpy as np

    digest = hashlib.sha256()
    for array in arrays:
        if hasattr(array, "detach"):  # a torch tensor
            array = array.detach().cpu().contiguous().numpy()
        array = np.ascontiguousarray(array)
        digest.update(f"{array.dtype.str}{array.shape}".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()[:length]


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """The full sha256 hex digest of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()
