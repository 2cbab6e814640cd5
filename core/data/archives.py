"""Safe extraction of zip and tar archives into a staging folder: unsafe names, links, special files and
encrypted members are refused one by one (as ``Skipped`` entries); members, bytes per file, bytes in all and
the compression ratio are counted while streaming, never trusted from headers, and reading stops at the first
byte over a limit (``IngestLimits``)."""

from __future__ import annotations

import os
import stat
import tarfile
import zipfile
import zlib
from collections.abc import Callable
from contextlib import suppress
from typing import BinaryIO

from core.data.limits import _CHUNK, _RATIO_FLOOR_MEMBER, _RATIO_FLOOR_TOTAL, IngestLimits, _ratio_cap
from core.data.paths import _hidden_prefix, _hidden_skip, _inside, safe_relative_path
from core.data.types import ImageError, IngestError, Skipped

# tarfile reads a compressed stream in blocks of this size (its default bufsize) and decompresses each
# whole: a member's output may come from up to one block read before the member started.
_TAR_READ_AHEAD = tarfile.RECORDSIZE


class _Budget:
    """Counts members and bytes actually written; raises IngestError when the archive exceeds a limit.

    ``cap`` is the total budget (``_total_budget``) and ``why`` its explanation; ``packed()`` returns the
    compressed bytes of the archive read so far, for the archive's compression ratio. Bytes of members
    refused part-way stay counted: they were written (and the time was spent) before the refusal.
    """

    def __init__(self, limits: IngestLimits, source: str, cap: int, why: str, packed: Callable[[], int]):
        self.limits, self.source, self.cap, self.why, self.packed = limits, source, cap, why, packed
        self.members, self.total = 0, 0

    def member(self) -> None:
        self.members += 1
        if self.members > self.limits.max_members:
            raise IngestError(f"{self.source}: refused, more than {self.limits.max_members} entries; "
                              "split the archive or raise IngestLimits.max_members")

    def room(self) -> int:
        """Bytes that may still be written before a total limit is crossed."""
        ratio_cap = _ratio_cap(self.limits.max_ratio, self.packed(), _RATIO_FLOOR_TOTAL)
        return int(min(self.cap, ratio_cap)) - self.total

    def add(self, n: int) -> None:
        self.total += n
        if self.total > self.cap:
            raise IngestError(f"{self.source}: refused, expands to more than {self.cap} bytes {self.why}")
        packed = self.packed()
        if self.total > _ratio_cap(self.limits.max_ratio, packed, _RATIO_FLOOR_TOTAL):
            raise IngestError(f"{self.source}: refused, expands to more than {self.limits.max_ratio:g} times "
                              f"its compressed size ({self.total} bytes from the first {packed}; a "
                              "compression bomb?); raise IngestLimits.max_ratio if the data is genuine")


def _stream_to(src: BinaryIO, dst: str, name: str, budget: _Budget, packed: Callable[[], int]) -> None:
    """Copy a member to a new file, counting bytes as they stream; stop at the first byte over a limit.

    ``packed()`` is the member's compressed bytes so far, for its compression ratio. Each read asks for
    at most one byte more than the tightest limit allows, the chunk that crosses a limit is never
    written, and a refused member's file is removed.
    """
    limits = budget.limits
    written = 0
    try:
        with open(dst, "xb") as out:
            while True:
                member_cap = min(limits.max_file_bytes, _ratio_cap(limits.max_ratio, packed(), _RATIO_FLOOR_MEMBER))
                room = min(_CHUNK - 1, int(member_cap) - written, budget.room())
                chunk = src.read(max(room, 0) + 1)
                if not chunk:
                    break
                written += len(chunk)
                if written > limits.max_file_bytes:
                    raise ImageError("too_large", f"{name}: refused, expands beyond the per-file limit of "
                                     f"{limits.max_file_bytes} bytes (a zip bomb?); raise "
                                     "IngestLimits.max_file_bytes if the file is genuine")
                if written > _ratio_cap(limits.max_ratio, packed(), _RATIO_FLOOR_MEMBER):
                    raise ImageError("compression_bomb", f"{name}: refused, expands to more than "
                                     f"{limits.max_ratio:g} times its compressed size (a compression bomb?); "
                                     "raise IngestLimits.max_ratio if the file is genuine")
                budget.add(len(chunk))
                out.write(chunk)
    except BaseException:
        with suppress(OSError):
            os.unlink(dst)
        raise


def _extract_member(read: Callable[[], BinaryIO], name: str, rel: str, dest_root: str, seen: set,
                    budget: _Budget, skipped: list, packed: Callable[[], int]) -> None:
    try:
        if rel in seen:
            raise ImageError("duplicate_entry", f"{name}: refused, the archive holds this name twice")
        seen.add(rel)
        target = _inside(dest_root, rel)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        target = _inside(dest_root, rel)  # re-check now that the parents exist
        with read() as fh:
            _stream_to(fh, target, name, budget, packed)
    except ImageError as e:
        skipped.append(Skipped(name, e.code, str(e)))
    except (OSError, zipfile.BadZipFile, tarfile.TarError, EOFError, zlib.error) as e:
        skipped.append(Skipped(name, "corrupt", f"{name}: can't be extracted ({e}); re-create the archive"))


def _screen_name(name: str, is_dir: bool, hidden: set, skipped: list) -> str | None:
    """The member's safe relative path, or None when it is refused (unsafe) or skipped (hidden)."""
    try:
        rel = safe_relative_path(name)
    except ImageError as e:
        skipped.append(Skipped(name, e.code, str(e)))
        return None
    prefix = _hidden_prefix(rel, is_dir)
    if prefix is not None:
        if prefix.rstrip("/") not in hidden:
            hidden.add(prefix.rstrip("/"))
            skipped.append(_hidden_skip(prefix))
        return None
    return rel


def _extract_zip(archive: str, dest: str, limits: IngestLimits, skipped: list, source: str,
                 total: tuple[int, str]) -> None:
    seen, hidden = set(), set()
    size = os.path.getsize(archive)
    opened = 0  # compressed bytes of the members read so far, as the central directory declares them

    # A member's declared compressed size (what zipfile reads of it) is capped at the archive's size, so a
    # lying central directory cannot buy a larger ratio allowance than the whole archive gives.
    budget = _Budget(limits, source, *total, packed=lambda: min(opened, size))
    try:
        zf = zipfile.ZipFile(archive)
    except (zipfile.BadZipFile, OSError) as e:
        raise IngestError(f"{source}: not a readable zip archive ({e})") from None
    with zf:
        for info in zf.infolist():
            budget.member()
            name = info.filename
            rel = _screen_name(name, info.is_dir(), hidden, skipped)
            if rel is None:
                continue
            file_type = stat.S_IFMT(info.external_attr >> 16)
            if file_type == stat.S_IFLNK:
                skipped.append(Skipped(name, "link", f"{name}: refused, a symbolic link inside the archive"))
                continue
            if info.is_dir() or file_type == stat.S_IFDIR:
                continue
            if file_type not in (0, stat.S_IFREG):
                skipped.append(Skipped(name, "special_file", f"{name}: refused, not a regular file"))
                continue
            if info.flag_bits & 0x1:
                skipped.append(Skipped(name, "encrypted", f"{name}: refused, encrypted zip member; "
                                       "re-create the archive without a password"))
                continue
            packed = min(info.compress_size, size)
            opened += packed
            _extract_member(lambda info=info: zf.open(info), name, rel, dest, seen, budget, skipped,
                            lambda packed=packed: packed)


_TAR_MAGIC = (b"\x1f\x8b", b"BZh", b"\xfd7zXZ\x00")  # gzip, bzip2, xz: what tarfile's "r|*" decompresses
# Extended headers (pax, GNU long names) are read into memory whole by tarfile, before we see the member.
_TAR_META_TYPES = frozenset({tarfile.XHDTYPE, tarfile.XGLTYPE, tarfile.SOLARIS_XHDTYPE,
                             tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK})
_TAR_MAX_META_BYTES = 1 << 20


class _MetaTooLarge(Exception):
    """Raised through tarfile (which lets other exceptions pass) when an extended header is too large."""


class _BoundedTarInfo(tarfile.TarInfo):
    """A TarInfo that refuses an extended header larger than _TAR_MAX_META_BYTES (a memory bomb)."""

    def _proc_member(self, tarfile_):
        if self.type in _TAR_META_TYPES and self.size > _TAR_MAX_META_BYTES:
            raise _MetaTooLarge(self.size)
        return super()._proc_member(tarfile_)


def _meta_error(source: str, e: _MetaTooLarge) -> IngestError:
    return IngestError(f"{source}: refused, the tar archive holds an extended header of {e.args[0]} bytes "
                       f"(over {_TAR_MAX_META_BYTES}; real ones hold a long name or a few attributes); "
                       "re-create the archive")


def _extract_tar(archive: str, dest: str, limits: IngestLimits, skipped: list, source: str,
                 total: tuple[int, str]) -> None:
    seen, hidden = set(), set()
    with open(archive, "rb") as raw:
        compressed = raw.read(6).startswith(_TAR_MAGIC)
        raw.seek(0)
        # The compressed bytes read so far are the raw file's position; tarfile reads ahead at most a block.
        budget = _Budget(limits, source, *total, packed=raw.tell)
        try:
            tf = tarfile.open(fileobj=raw, mode="r|*", tarinfo=_BoundedTarInfo)  # one pass, member by member
        except (tarfile.TarError, OSError) as e:
            raise IngestError(f"{source}: not a readable tar archive ({e})") from None
        except _MetaTooLarge as e:
            raise _meta_error(source, e) from None
        skipped_bytes = 0
        with tf:
            try:
                for member in tf:
                    budget.member()
                    _extract_tar_member(tf, member, raw, dest, limits, seen, hidden, budget, skipped)
                    # What tarfile will decompress, and drop, to reach the next header: a member refused, not
                    # read, or refused part-way. Reading a plain tar to its end costs no more than the file.
                    left = tf.offset - tf.fileobj.tell()
                    if compressed and left > 0:
                        skipped_bytes += left
                        if skipped_bytes > limits.max_skipped_bytes:
                            code = next((s.code for s in reversed(skipped)
                                         if s.path in (member.name, f"{member.name}/")), "not read")
                            raise IngestError(
                                f"{source}: refused, stepping over the entries it can't use means "
                                f"decompressing {skipped_bytes} bytes of their data, over "
                                f"IngestLimits.max_skipped_bytes = {limits.max_skipped_bytes} (the last: "
                                f"{member.name}, {member.size} bytes, {code}); remove those entries from the "
                                "archive or raise the limit, or send a .zip, whose entries are skipped "
                                "without being read")
            except (tarfile.TarError, EOFError, OSError, zlib.error) as e:
                raise IngestError(f"{source}: the tar archive is corrupt or truncated ({e}); "
                                  "re-create it") from None
            except _MetaTooLarge as e:
                raise _meta_error(source, e) from None


def _extract_tar_member(tf: tarfile.TarFile, member: tarfile.TarInfo, raw: BinaryIO, dest: str,
                        limits: IngestLimits, seen: set, hidden: set, budget: _Budget, skipped: list) -> None:
    name = member.name
    rel = _screen_name(name, member.isdir(), hidden, skipped)
    if rel is None:
        return
    if member.issym() or member.islnk():
        kind = "symbolic" if member.issym() else "hard"
        skipped.append(Skipped(name, "link", f"{name}: refused, a {kind} link inside the "
                               f"archive (to {member.linkname!r})"))
        return
    if member.isdir():
        return
    if not member.isfile():
        skipped.append(Skipped(name, "special_file", f"{name}: refused, not a regular file"))
        return
    if member.size > limits.max_file_bytes:
        skipped.append(Skipped(name, "too_large", f"{name}: refused, {member.size} bytes is "
                               f"over the per-file limit of {limits.max_file_bytes}; raise "
                               "IngestLimits.max_file_bytes if the file is genuine"))
        return
    start = raw.tell()
    _extract_member(lambda: tf.extractfile(member), name, rel, dest, seen, budget, skipped,
                    lambda: raw.tell() - start + _TAR_READ_AHEAD)
