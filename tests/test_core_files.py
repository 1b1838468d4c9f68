"""core.files: an atomic write replaces a file or folder whole (never writes into the old one), an
interrupted write leaves the old one whole and nothing else, JSON is always valid JSON, and the
temporaries of a killed writer are found by name. Fast (no model)."""
import json
import math
import os

import numpy as np
import pytest
import torch

from bsegn.core.files import (
    atomic_file,
    atomic_folder,
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    json_safe,
    json_text,
    remove_stale_temporaries,
)


def _strict_json(text: str):
    """json.loads that refuses NaN / Infinity, as every JSON reader but Python's does."""
    def refuse(constant):
        raise ValueError(f"{constant} is not JSON")
    return json.loads(text, parse_constant=refuse)


@pytest.mark.parametrize("write", [lambda p: atomic_write_bytes(p, b"new"), lambda p: atomic_write_text(p, "new"),
                                   lambda p: atomic_write_json(p, "new")])
def test_an_atomic_write_replaces_the_file_instead_of_writing_into_it(tmp_path, write):
    """A hard link to the old file keeps the old content: the new content went to a new file, renamed over
    the name (a write in place would change what every link sees, and a kill midway would leave half)."""
    path, link = tmp_path / "file", tmp_path / "link"
    path.write_bytes(b"old content")
    os.link(path, link)
    write(path)
    assert path.read_bytes().strip() in (b"new", b'"new"')
    assert link.read_bytes() == b"old content" and os.stat(path).st_ino != os.stat(link).st_ino
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file", "link"]  # no temporary left


def test_an_interrupted_atomic_write_leaves_the_old_file_whole_and_no_partial_file(tmp_path, monkeypatch):
    path = tmp_path / "file"
    path.write_bytes(b"old content")

    def disk_full(descriptor):
        raise OSError("disk full")

    monkeypatch.setattr(os, "fsync", disk_full)  # after the data is written, before the rename
    with pytest.raises(OSError, match="disk full"):
        atomic_write_bytes(path, b"new content that never lands")
    assert path.read_bytes() == b"old content" and [p.name for p in tmp_path.iterdir()] == ["file"]
    with pytest.raises(RuntimeError, match="writer failed"), atomic_file(path) as temp:
        temp.write_bytes(b"half")
        raise RuntimeError("writer failed")
    assert path.read_bytes() == b"old content" and [p.name for p in tmp_path.iterdir()] == ["file"]


def test_an_atomic_folder_replaces_the_folder_whole_or_not_at_all(tmp_path):
    folder = tmp_path / "bundle"
    folder.mkdir()
    (folder / "a").write_text("old")
    os.link(folder / "a", tmp_path / "link")
    with pytest.raises(RuntimeError), atomic_folder(folder) as temp:
        (temp / "a").write_text("half")
        raise RuntimeError("killed")
    assert (folder / "a").read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["bundle", "link"]
    with atomic_folder(folder) as temp:
        (temp / "b").write_text("new")
    assert sorted(p.name for p in folder.iterdir()) == ["b"]  # the old folder is gone whole, not merged into
    assert (tmp_path / "link").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle", "link"]  # no bundle.old, no temporary


def test_json_is_always_valid_json(tmp_path):
    """metrics.json is written by atomic_write_json: a NaN (an AUROC with one domain empty) or an infinity
    is null, never the bare NaN json.dumps writes by default; numpy and torch values become numbers."""
    metrics = {"T1": np.float64(12.5), "domain_auroc": float("nan"), "U": np.float32("inf"),
               "per_class": {"a": -math.inf},
               "curve": np.array([0.5, np.nan]), "seeds": (0,), "loss": torch.tensor(float("nan")), "ok": True}
    atomic_write_json(tmp_path / "metrics.json", metrics)
    read = _strict_json((tmp_path / "metrics.json").read_text())
    assert read == {"T1": 12.5, "domain_auroc": None, "U": None, "per_class": {"a": None}, "curve": [0.5, None],
                    "seeds": [0], "loss": None, "ok": True}
    assert _strict_json(json_text(metrics)) == read and json_safe([1, "x", None]) == [1, "x", None]


def test_stale_temporaries_are_found_by_their_exact_name(tmp_path):
    stale = tmp_path / ".bundle.a1b2c3d_.tmp"
    stale.mkdir()
    (stale / "model.safetensors").write_bytes(b"x" * 100)
    kept = [tmp_path / ".bundle.x.a1b2c3d4.tmp", tmp_path / ".bundle2.a1b2c3d4.tmp", tmp_path / "bundle",
            tmp_path / ".bundle.bsegn-lock"]  # another bundle's ("bundle.x", "bundle2"), the bundle, its lock
    for path in kept[:3]:
        path.mkdir()
    kept[3].write_text("{}")
    assert remove_stale_temporaries(tmp_path / "bundle") == [stale]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in kept)
