"""The registry's files: immutable copies of bundles on disk, written so that none is ever half there or overwritten.

A bundle is copied into a temporary folder inside the registry (every byte hashed as it is written, each file
fsynced and made read-only), checked against the sha256s its bundle.json records, and only then renamed to
<root>/<name>/<version>/ by the caller holding the registry's write lock. `problems` re-hashes a stored copy.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
import time

from core.deploy.bundle import INFO_FILE, Bundle, BundleError, sha256_file
from core.files import ensure_space

TMP_PREFIX = ".tmp-register-"
ORPHANS = ".orphaned"
LEFTOVER_AGE_S = 24 * 3600


def copy_bundle(bundle: Bundle, root: str) -> tuple[str, dict[str, str]]:
    """(a temporary folder inside `root` holding the bundle's files, {relative name: sha256}, bundle.json
    included). BundleError when a file lies outside the bundle or changed since export; the caller renames
    the folder into place or removes it."""
    expected = {_safe_rel(bundle.path, rel): digest for rel, digest in bundle.info.get("files", {}).items()}
    rels = sorted(set(expected) | {INFO_FILE})
    ensure_space(root, sum(os.path.getsize(os.path.join(bundle.path, rel)) for rel in rels))
    tmp = tempfile.mkdtemp(prefix=TMP_PREFIX, dir=root)
    try:
        files = {rel: _copy_hashed(os.path.join(bundle.path, rel), os.path.join(tmp, rel)) for rel in rels}
        changed = [rel for rel, digest in expected.items() if files[rel] != digest]
        if changed:
            raise BundleError(f"{bundle.path}: {', '.join(changed)} changed since export (sha256 differs); "
                              "export the run again")
        fsync_dirs(*(d for d, _, _ in os.walk(tmp, topdown=False)))
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return tmp, files


def place(tmp: str, final: str, root: str, label: str) -> int:
    """Rename the filled temporary folder to `final` (the caller holds the write lock); its inode. A folder
    already at `final` has no database row (a register killed before its commit): it is moved aside to
    <root>/.orphaned/, never overwritten or deleted."""
    parent = os.path.dirname(final)
    os.makedirs(parent, exist_ok=True)
    if os.path.lexists(final):
        os.makedirs(os.path.join(root, ORPHANS), exist_ok=True)
        os.rename(final, os.path.join(root, ORPHANS, f"{label}-{time.strftime('%Y%m%d-%H%M%S')}"))
    os.rename(tmp, final)
    fsync_dirs(parent, root)
    return os.stat(final).st_ino


def problems(folder: str, files: dict[str, str]) -> list[str]:
    """What differs between a stored folder and the sha256s recorded for it: files changed, missing, added."""
    found = []
    for rel, digest in sorted(files.items()):
        path = os.path.join(folder, rel)
        if not os.path.isfile(path):
            found.append(f"{rel} missing")
        elif sha256_file(path) != digest:
            found.append(f"{rel} changed")
    stored = {os.path.relpath(os.path.join(d, n), folder).replace(os.sep, "/")
              for d, _, names in os.walk(folder) for n in names}
    return found + [f"{rel} added" for rel in sorted(stored - set(files))]


def clean_leftovers(root: str) -> None:
    """Remove temporary folders of registers killed a day ago or more (a live one is never that old)."""
    with contextlib.suppress(OSError):
        for entry in os.scandir(root):
            if entry.name.startswith(TMP_PREFIX) and time.time() - entry.stat().st_mtime > LEFTOVER_AGE_S:
                shutil.rmtree(entry.path, ignore_errors=True)


def fsync_dirs(*paths: str) -> None:
    for path in paths:
        with contextlib.suppress(OSError):
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)


def _safe_rel(base: str, rel: object) -> str:
    """A file name from bundle.json that stays inside the bundle (whoever made the bundle wrote that file)."""
    norm = os.path.normpath(rel) if isinstance(rel, str) and rel and "\0" not in rel else ""
    inside = bool(norm) and not os.path.isabs(norm) and norm.split(os.sep)[0] != ".." and \
        os.path.realpath(os.path.join(base, norm)).startswith(os.path.realpath(base) + os.sep)
    if not inside or norm == INFO_FILE:
        raise BundleError(f"{base}: bundle.json lists a file outside the bundle or not allowed: {rel!r}")
    return norm.replace(os.sep, "/")


def _copy_hashed(src: str, dst: str) -> str:
    """Copy `src` to a new file `dst` (never over one), fsynced and read-only; the sha256 of what was written."""
    os.makedirs(os.path.dirname(dst), exist_ok=True)
    digest = hashlib.sha256()
    with open(src, "rb") as fin, open(dst, "xb") as fout:
        for chunk in iter(lambda: fin.read(1 << 20), b""):
            digest.update(chunk)
            fout.write(chunk)
        fout.flush()
        os.fsync(fout.fileno())
    os.chmod(dst, 0o444)
    return digest.hexdigest()
