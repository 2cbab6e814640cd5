"""One trainer per run: an exclusive lock on the run's folder, held for as long as a process trains it.

`fcntl.flock` locks belong to an open file, so the kernel drops the lock when its process dies, however
it dies (SIGKILL, out of memory, a power cut): a run whose lock is free is not being trained by anyone,
whatever its status in the store says. Who holds the lock (pid, host, since when) is written into the
lock file for messages; the store carries a heartbeat for the dashboard.
"""
from __future__ import annotations

import json
import os
import socket
import time

from core.errors import StudioError

try:
    import fcntl
except ImportError:  # Windows: no flock; one trainer per run is then not enforced
    fcntl = None

LOCK_FILE = ".trainer.lock"


class RunLocked(StudioError, RuntimeError):
    """Another process is training this run; the message says which."""


class RunLock:
    """`with RunLock(run_dir):` trains the run alone, or raises RunLocked at once."""

    def __init__(self, run_dir: str):
        self.path = os.path.join(run_dir, LOCK_FILE)
        self.fd: int | None = None

    def acquire(self) -> "RunLock":
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _read_holder(fd)
                os.close(fd)
                raise RunLocked(f"this run is being trained by process {holder.get('pid', '?')} on "
                                f"{holder.get('host', '?')} (since {_ago(holder.get('since'))}); stop it there, or "
                                "wait for it to finish, before resuming it") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": time.time()}).encode(), 0)
        self.fd = fd
        return self

    def release(self) -> None:
        if self.fd is not None:
            if fcntl is not None:
                fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def is_trained_now(run_dir: str) -> bool:
    """Whether some process holds the run's lock at this moment (any process, this one included)."""
    path = os.path.join(run_dir, LOCK_FILE)
    if fcntl is None or not os.path.exists(path):
        return False
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # closing drops our shared lock, if we got it
    return False


def _read_holder(fd: int) -> dict:
    try:
        return json.loads(os.pread(fd, 4096, 0).decode() or "{}")
    except (OSError, ValueError):
        return {}


def _ago(since) -> str:
    if not isinstance(since, (int, float)):
        return "an unknown time"
    seconds = max(0, time.time() - since)
    return f"{seconds:.0f} s ago" if seconds < 120 else f"{seconds / 60:.0f} min ago"
