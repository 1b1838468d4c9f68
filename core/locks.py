"""A run folder belongs to one run at a time: an exclusive lock file, and the checks made before it.

    check_run_folder(path)              RunFolderError when the folder cannot be a run folder (a file, read-only)
    with RunLock(path): ...             RunFolderBusy (one line naming the holder) when another run holds it

The lock is `<run folder>/.bsegn-run.lock`, a JSON record of its holder (pid, host, start time). It is
created whole or not at all (written under a private name, then hard-linked to the lock's name, which
fails if the name exists), so a reader never sees half a record. A lock whose holder is on this host
and no longer running (a killed run) is stale: the next run takes it over. A lock from another host is
never judged stale (its pid means nothing here); the message says how to remove it.
"""
from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

from bsegn.core.errors import BsegnError

LOCK_NAME = ".bsegn-run.lock"


class RunFolderBusy(BsegnError, RuntimeError):
    """Another run (alive) holds the run folder's lock."""


class RunFolderError(BsegnError, ValueError):
    """The run folder cannot be created or written (a file in its place, no write permission)."""


def check_run_folder(path: str | os.PathLike) -> Path:
    """Refuse, before any work, a run folder that is a file or cannot be written (nothing is created).
    A folder that does not exist yet needs its nearest existing parent to be a writable folder."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise RunFolderError(f"--output {path} is a file, not a folder; choose a folder for the run")
    probe = path
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if not probe.is_dir():
        raise RunFolderError(f"--output {path}: {probe} is a file, so the run folder cannot be created there")
    if not os.access(probe, os.W_OK | os.X_OK):
        what = "the run folder" if probe == path else f"its parent {probe}"
        raise RunFolderError(f"--output {path}: {what} is not writable; choose another --output or fix its permissions")
    return path


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    except OSError:
        return False
    return True


def read_holder(lock: Path) -> dict | None:
    """The lock's record; None when there is no lock. A record that is not ours is returned as {}."""
    try:
        text = lock.read_text()
    except FileNotFoundError:
        return None
    except OSError:
        return {}
    try:
        holder = json.loads(text)
    except ValueError:
        return {}
    return holder if isinstance(holder, dict) else {}


def is_stale(holder: dict) -> bool:
    """The holder ran on this host and its process is gone."""
    pid = holder.get("pid")
    return holder.get("host") == socket.gethostname() and isinstance(pid, int) and not _pid_alive(pid)


def describe_holder(holder: dict) -> str:
    if not holder:
        return "an unreadable lock record"
    started = holder.get("started")
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(started)) if isinstance(started, (int, float)) else "?"
    return f"pid {holder.get('pid')} on host {holder.get('host')} since {since}"


class RunLock:
    """The exclusive lock of a run folder (see the module docstring). Re-usable as a context manager;
    `release()` removes the lock only if it is still this holder's."""

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)
        self.path = self.folder / LOCK_NAME
        self.record: dict | None = None

    def acquire(self) -> "RunLock":
        self.folder.mkdir(parents=True, exist_ok=True)
        record = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time()}
        private = self.folder / f"{LOCK_NAME}.{record['pid']}.tmp"
        private.write_text(json.dumps(record))
        try:
            for _ in range(5):
                try:
                    os.link(private, self.path)  # atomic; fails if a lock exists
                    self.record = record
                    return self
                except FileExistsError:
                    holder = read_holder(self.path)
                    if holder is None:
                        continue  # released meanwhile: try again
                    if not is_stale(holder):
                        raise RunFolderBusy(
                            f"run folder {self.folder} is in use by another run ({describe_holder(holder)}); wait for "
                            f"it to end or choose another --output (if no such run exists, delete {self.path})")
                    self._take_over(holder)
            raise RunFolderBusy(f"run folder {self.folder}: its lock {self.path} keeps changing; is another run starting?")
        finally:
            private.unlink(missing_ok=True)

    def _take_over(self, holder: dict) -> None:
        """Remove a stale lock, and only that one: moved aside first, checked, then deleted (a lock
        another run created meanwhile is put back)."""
        aside = self.folder / f"{LOCK_NAME}.{os.getpid()}.stale"
        try:
            os.replace(self.path, aside)
        except FileNotFoundError:
            return
        if read_holder(aside) != holder:
            try:
                os.link(aside, self.path)
            except FileExistsError:
                pass
        aside.unlink(missing_ok=True)

    def release(self) -> None:
        if self.record is not None and read_holder(self.path) == self.record:
            self.path.unlink(missing_ok=True)
        self.record = None

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
