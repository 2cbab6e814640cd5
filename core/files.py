"""Files written so that a crash, a kill or a full disk never leaves half of one: write to a temporary file
in the same folder, fsync it, rename it over the target, fsync the folder. Leftover temporaries of a killed
writer are recognisable by name and cleaned up by the next owner of the folder.
"""
from __future__ import annotations

import errno
import os
import shutil
import tempfile
import time
from typing import Any, Callable

import numpy as np

from core.errors import StudioError

TMP_PREFIX = ".tmp-"


class DiskFull(StudioError, OSError):
    """Not enough free space to write a file; the message says where, how much is free and how much is needed."""

    def __str__(self) -> str:  # the sentence only, without OSError's "[Errno 28]"
        return str(self.strerror)


def free_bytes(folder: str) -> int:
    while folder and not os.path.exists(folder):
        folder = os.path.dirname(folder)
    return shutil.disk_usage(folder or ".").free


def format_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1024 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"


def disk_full(folder: str, need: int) -> DiskFull:
    return DiskFull(errno.ENOSPC, f"disk full in {folder} (free {format_bytes(free_bytes(folder))}, need "
                                  f"{format_bytes(need)}); free some space (old runs, datasets) and resume")


def ensure_space(folder: str, need: int, margin: float = 1.1) -> None:
    """Raise DiskFull before writing `need` bytes into `folder` when they would not fit (with a margin)."""
    if free_bytes(folder) < need * margin:
        raise disk_full(folder, int(need * margin))  # what it takes, with the margin: never "free 14, need 13"


def atomic_write(path: str, write: Callable[[str], None], size_hint: int = 0) -> str:
    """`write(tmp_path)` writes the content; it then replaces `path` in one step. ENOSPC becomes DiskFull."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    if size_hint:
        ensure_space(folder, size_hint)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=TMP_PREFIX, suffix="-" + os.path.basename(path))
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes it private; the file gets the permissions open() would give
    try:
        write(tmp)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        _fsync_dir(folder)
    except BaseException as exc:
        written = os.path.getsize(tmp) if os.path.exists(tmp) else 0
        if os.path.exists(tmp):
            os.remove(tmp)
        if _is_disk_full(exc):
            raise disk_full(folder, max(size_hint, written)) from exc
        raise
    return path


def _is_disk_full(exc: BaseException) -> bool:
    """ENOSPC/EDQUOT, also as writers word it: torch.save's "unexpected pos" / "PytorchStreamWriter failed"
    (a RuntimeError from its zip writer), safetensors' "No space left on device"."""
    if isinstance(exc, DiskFull):
        return False
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    text = str(exc)
    return isinstance(exc, (RuntimeError, OSError)) and any(
        s in text for s in ("No space left on device", "unexpected pos", "PytorchStreamWriter failed", "Disk quota"))


def write_text(path: str, text: str) -> str:
    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8", newline="") as fh:
            fh.write(text)

    return atomic_write(path, write, len(text.encode()))


def clean_leftovers(folder: str, older_than_s: float = 0.0) -> int:
    """Remove temporaries of killed writers directly in `folder` (not below it); returns how many."""
    removed = 0
    if not os.path.isdir(folder):
        return 0
    now = time.time()
    for entry in os.scandir(folder):
        name = entry.name
        leftover = name.startswith(TMP_PREFIX) or (name.startswith(".") and name.endswith(".tmp"))
        if leftover and entry.is_file(follow_symlinks=False) and now - entry.stat().st_mtime >= older_than_s:
            try:
                os.remove(entry.path)
                removed += 1
            except OSError:
                pass
    return removed


def _read_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_UMASK = _read_umask()  # once, at import: os.umask is process-wide, setting it later would race other threads


def _fsync_dir(folder: str) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some filesystems cannot fsync a directory
    finally:
        os.close(fd)


def jsonable(obj: Any) -> Any:
    """NaN and infinities as null: strict JSON for other tools."""
    if isinstance(obj, float):
        return obj if np.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    return obj
