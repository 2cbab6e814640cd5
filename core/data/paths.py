"""Names inside a dataset: hidden and system entries (skipped, never a class or an image), archive member
names that are safe to extract, and paths that must stay inside the folder they are joined to."""

from __future__ import annotations

import os
import re

from core.data.types import ImageError, Skipped

# Operating-system litter that must never become a class or an image (dot-names are caught separately).
SYSTEM_NAMES = frozenset({"__macosx", "thumbs.db", "desktop.ini", "ehthumbs.db", "$recycle.bin",
                          "system volume information", "icon\r"})


def is_hidden(name: str) -> bool:
    """Dot-files/-folders and operating-system litter (``__MACOSX``, ``Thumbs.db``, ...)."""
    return name.startswith(".") or name.lower() in SYSTEM_NAMES


_DRIVE = re.compile(r"^[A-Za-z]:")


def safe_relative_path(name: str) -> str:
    """Validate an archive member name; return it normalised ("a/b.png") or raise ImageError."""
    if "\x00" in name:
        raise ImageError("unsafe_path", f"{name!r}: refused, the name contains a NUL byte")
    if "\\" in name:
        raise ImageError("unsafe_path", f"{name}: refused, the name contains a backslash (a Windows "
                         "path trick); re-create the archive with '/' separators")
    if name.startswith("/"):
        raise ImageError("unsafe_path", f"{name}: refused, absolute path; archive members must be "
                         "relative")
    if _DRIVE.match(name):
        raise ImageError("unsafe_path", f"{name}: refused, the name starts with a drive letter")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise ImageError("unsafe_path", f"{name}: refused, '..' would write outside the dataset folder")
    if not parts:
        raise ImageError("unsafe_path", f"{name!r}: refused, empty member name")
    return "/".join(parts)


def _inside(root: str, rel: str, resolve: bool = True) -> str:
    """Absolute path of ``rel`` under ``root``; raise if it resolves outside (defence in depth).

    ``resolve=False`` skips symlink resolution, for folders ingest created itself (its staging folder).
    """
    real_root = os.path.realpath(root) if resolve else root
    joined = os.path.join(real_root, *rel.split("/"))
    target = os.path.realpath(joined) if resolve else os.path.normpath(joined)
    if os.path.commonpath([real_root, target]) != real_root or target == real_root:
        raise ImageError("unsafe_path", f"{rel}: refused, resolves outside the dataset folder")
    return target


def _hidden_prefix(rel: str, is_dir: bool = False) -> str | None:
    """The first hidden component of ``rel`` as a path ("a/.git/" for a folder), or None."""
    parts = rel.split("/")
    for i, part in enumerate(parts):
        if is_hidden(part):
            return "/".join(parts[: i + 1]) + ("/" if is_dir or i < len(parts) - 1 else "")
    return None


def _hidden_skip(path: str) -> Skipped:
    return Skipped(path, "hidden", f"{path}: hidden or system entry, skipped (never a class or image)")
