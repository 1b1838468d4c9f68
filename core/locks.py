"""Exclusive lock files: a run folder belongs to one run at a time, a bundle has one writer at a time.

    check_run_folder(path)              RunFolderError when the folder cannot be a run folder (a file, read-only)
    with RunLock(path): ...             RunFolderBusy (one line naming the holder) when another run holds it
    with BundleLock(bundle): ...        waits up to BUNDLE_LOCK_WAIT s for another writer, then BundleBusy

A run's lock is `<run folder>/.bsegn-run.lock`, a bundle's `<parent>/.<bundle name>.bsegn-lock`: a JSON
record of its holder (pid, host, start time). It is created whole or not at all (written under a private
name, then hard-linked to the lock's name, which fails if the name exists), so a reader never sees half
a record. A lock whose holder is on this host and no longer running (a killed run) is stale: the next
holder takes it over. A lock from another host is never judged stale (its pid means nothing here); the
message says how to remove it.
"""
from __future__ import annotations

import json
import os
import socket
import threading
import time
from pathlib import Path

from bsegn.core.errors import BsegnError

LOCK_NAME = ".bsegn-run.lock"


class RunFolderBusy(BsegnError, RuntimeError):
    """Another run (alive) holds the run folder's lock."""


class BundleBusy(BsegnError, RuntimeError):
    """Another writer (alive) holds a bundle's lock."""


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


class ExclusiveLock:
    """An exclusive lock file holding its holder's record (see the module docstring). Re-usable as a
    context manager; `release()` removes the lock only if it is still this holder's. `wait`: seconds to
    wait for a live holder to let go before `busy()` is raised. Subclasses say where the lock lives and
    what a refusal says."""

    poll_seconds = 0.1

    def __init__(self, path: str | os.PathLike, *, wait: float = 0.0):
        self.path = Path(path)
        self.wait = wait
        self.record: dict | None = None

    def busy(self, holder: dict) -> BsegnError:
        raise NotImplementedError

    def unsettled(self) -> BsegnError:
        """The lock kept changing hands while it was being taken."""
        raise NotImplementedError

    def acquire(self) -> "ExclusiveLock":
        deadline = time.monotonic() + self.wait
        while True:
            try:
                return self._try_acquire()
            except BsegnError:
                if time.monotonic() >= deadline:
                    raise
                time.sleep(self.poll_seconds)

    def _try_acquire(self) -> "ExclusiveLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        record = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time()}
        # one private name per thread: two threads of one process may race for the same lock
        private = self.path.with_name(f"{self.path.name}.{record['pid']}-{threading.get_ident()}.record")
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
                        raise self.busy(holder)
                    self._take_over(holder)
            raise self.unsettled()
        finally:
            private.unlink(missing_ok=True)

    def _take_over(self, holder: dict) -> None:
        """Remove a stale lock, and only that one: moved aside first, checked, then deleted (a lock
        another holder created meanwhile is put back)."""
        aside = self.path.with_name(f"{self.path.name}.{os.getpid()}-{threading.get_ident()}.stale")
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

    def __enter__(self) -> "ExclusiveLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


class RunLock(ExclusiveLock):
    """The exclusive lock of a run folder: `<folder>/.bsegn-run.lock`; a busy folder is refused at once."""

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)
        super().__init__(self.folder / LOCK_NAME)

    def busy(self, holder: dict) -> BsegnError:
        return RunFolderBusy(f"run folder {self.folder} is in use by another run ({describe_holder(holder)}); wait "
                             f"for it to end or choose another --output (if no such run exists, delete {self.path})")

    def unsettled(self) -> BsegnError:
        return RunFolderBusy(f"run folder {self.folder}: its lock {self.path} keeps changing; is another run starting?")


BUNDLE_LOCK_WAIT = 10.0  # seconds a second writer of a bundle waits (adding a class refits for seconds)
_held = threading.local()  # the bundle locks this thread holds: save_bundle inside add-class's lock takes none


class BundleLock(ExclusiveLock):
    """The lock of a bundle folder while it is written: `<parent>/.<name>.bsegn-lock`, beside the folder
    because the folder itself is replaced whole. Re-entrant within one thread (add-class holds it from
    reading the bundle to writing it back; the save inside takes it again); another writer, in this
    process or another, waits up to `wait` seconds, then BundleBusy names the holder."""

    def __init__(self, folder: str | os.PathLike, *, wait: float | None = None):
        self.folder = Path(folder).absolute()
        self.nested = False
        super().__init__(self.folder.with_name(f".{self.folder.name}.bsegn-lock"),
                         wait=BUNDLE_LOCK_WAIT if wait is None else wait)

    def acquire(self) -> "BundleLock":
        held = _held.__dict__.setdefault("paths", set())
        if self.path in held:
            self.nested = True
            return self
        super().acquire()
        held.add(self.path)
        return self

    def release(self) -> None:
        if self.nested:
            self.nested = False
            return
        _held.__dict__.setdefault("paths", set()).discard(self.path)
        super().release()

    def busy(self, holder: dict) -> BsegnError:
        return BundleBusy(f"bundle {self.folder} is being written by another process ({describe_holder(holder)}); "
                          f"try again when it is done (if no such process exists, delete {self.path})")

    def unsettled(self) -> BsegnError:
        return BundleBusy(f"bundle {self.folder}: its lock {self.path} keeps changing; is another writer starting?")
