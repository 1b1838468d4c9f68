"""Writes to a bundle take its lock (core.locks.BundleLock, the run lock's mechanism): two writers never
lose an update, a writer that finds the bundle busy waits, then is refused in one line naming the holder;
the next write removes a killed writer's temporaries; a bundle left only as `<name>.old` loads with a
warning and is written back under its name. The tiny bundle of test_app_bundle; fast."""
import json
import os
import shutil
import socket
import threading
import time
from pathlib import Path

import pytest
from test_app_add_class import VALUES, _bsegn, _digests
from test_app_bundle import CLASSES, bundle_copy, saved  # noqa: F401 (the tiny bundle's fixtures)

from bsegn.app.add_class import add_classes
from bsegn.app.bundle import load_bundle, save_bundle
from bsegn.core.locks import BundleBusy


def _hold(folder: Path, pid: int | None = None) -> Path:
    """The bundle's lock as a live writer (this process, another thread) holds it."""
    lock = folder.with_name(f".{folder.name}.bsegn-lock")
    lock.write_text(json.dumps({"pid": pid or os.getpid(), "host": socket.gethostname(), "started": time.time()}))
    return lock


def test_two_concurrent_in_place_adds_keep_both_classes(bundle_copy, monkeypatch):
    """Issue 25: two `add-class --in-place` at once both exited 0 and only one class was left. Both writers
    here read the bundle and then meet (unlocked, both would hold the same old bundle and the second
    write would drop the first's class); under the lock the second reads only after the first wrote."""
    from bsegn.app import add_class

    meet = threading.Barrier(2)
    read = add_class.load_bundle

    def read_then_meet(*args, **kwargs):
        bundle = read(*args, **kwargs)
        try:
            meet.wait(timeout=1.0)
        except threading.BrokenBarrierError:  # the other writer is waiting for the lock, not here
            pass
        return bundle

    monkeypatch.setattr(add_class, "load_bundle", read_then_meet)
    outcomes: dict[str, str] = {}

    def add(name: str) -> None:
        try:
            add_classes(bundle_copy, [(name, [float(v) for v in VALUES.split(",")])], None, in_place=True)
            outcomes[name] = "added"
        except BundleBusy as error:
            outcomes[name] = str(error)

    writers = [threading.Thread(target=add, args=(name,)) for name in ("first", "second")]
    for writer in writers:
        writer.start()
    for writer in writers:
        writer.join(timeout=120)
    added = sorted(name for name, outcome in outcomes.items() if outcome == "added")
    assert len(outcomes) == 2 and added, outcomes
    assert sorted(load_bundle(bundle_copy).class_names[len(CLASSES):]) == added  # both, or the one not refused
    assert all("being written by another process (pid" in o for o in outcomes.values() if o != "added"), outcomes
    assert sorted(p.name for p in bundle_copy.parent.iterdir()) == ["bundle"]  # the lock released, nothing left


def test_a_busy_bundle_waits_then_is_refused_in_one_line_naming_the_holder(bundle_copy, capsys, monkeypatch):
    from bsegn.core import locks

    monkeypatch.setattr(locks, "BUNDLE_LOCK_WAIT", 0.3)
    lock = _hold(bundle_copy)
    before = _digests(bundle_copy)
    started = time.monotonic()
    code, err = _bsegn(capsys, "add-class", "--model", str(bundle_copy), "--name", "x", "--attributes", VALUES,
                       "--in-place")
    assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert f"is being written by another process (pid {os.getpid()} on host {socket.gethostname()}" in err
    assert time.monotonic() - started >= 0.3 and _digests(bundle_copy) == before
    with pytest.raises(BundleBusy, match="being written by another process"):  # every writer: train, serve's save
        save_bundle(load_bundle(bundle_copy), bundle_copy)
    lock.unlink()
    code, err = _bsegn(capsys, "add-class", "--model", str(bundle_copy), "--name", "x", "--attributes", VALUES,
                       "--in-place")
    assert code == 0 and load_bundle(bundle_copy).class_names[-1] == "x", err


def test_a_lock_whose_writer_was_killed_is_taken_over(bundle_copy, capsys):
    import subprocess
    import sys

    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    _hold(bundle_copy, process.pid)
    code, err = _bsegn(capsys, "add-class", "--model", str(bundle_copy), "--name", "x", "--attributes", VALUES,
                       "--in-place")
    assert code == 0, err
    assert sorted(p.name for p in bundle_copy.parent.iterdir()) == ["bundle"]


def test_the_next_write_removes_the_temporaries_of_a_killed_write(bundle_copy, capsys):
    """Issue 25: a kill -9 during --in-place left `.bundle.*.tmp` folders (one 38 MB) nothing removed."""
    stale = bundle_copy.with_name(".bundle.k1ll3d_9.tmp")
    shutil.copytree(bundle_copy, stale)  # a whole new bundle, written but never renamed into place
    code, err = _bsegn(capsys, "add-class", "--model", str(bundle_copy), "--name", "x", "--attributes", VALUES,
                       "--in-place")
    assert code == 0, err
    assert sorted(p.name for p in bundle_copy.parent.iterdir()) == ["bundle"]


def test_a_bundle_left_only_as_its_old_copy_loads_with_a_warning_and_is_written_back(bundle_copy, capsys, bsegn_log):
    """Issue 25: a bundle folder with only `<name>.old` left (a kill between atomic_folder's two renames)
    was "no such model", while a run bundle_copy with only bundle.old loaded."""
    old = bundle_copy.rename(bundle_copy.with_name("bundle.old"))
    assert load_bundle(bundle_copy).class_names == CLASSES
    assert f"{bundle_copy} is missing: reading {old}" in bsegn_log.text
    run = bundle_copy.parent / "run"
    run.mkdir()
    shutil.copytree(old, run / "bundle.old")
    bsegn_log.clear()
    assert load_bundle(run).class_names == CLASSES and "bundle is missing: reading" in bsegn_log.text
    code, err = _bsegn(capsys, "add-class", "--model", str(bundle_copy), "--name", "x", "--attributes", VALUES,
                       "--in-place")
    assert code == 0, err
    assert load_bundle(bundle_copy).class_names == CLASSES + ["x"]  # back under its name, the old copy gone
    assert sorted(p.name for p in bundle_copy.parent.iterdir()) == ["bundle", "run"]
