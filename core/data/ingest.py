"""Ingest image datasets into a content-addressed store inside the workspace.

Sources: a folder of class subfolders (``DATA/<class>/<image>``), a folder of ``train/`` (+ ``val/``,
``test/``) in that layout, a ``.zip`` / ``.tar.gz`` / ``.tgz`` / ``.tar`` of either (a single wrapping
top-level folder is unwrapped), or a CSV with ``path,label`` (+ optional ``split``, ``group``) columns.
A source is a path, or a binary file-like object (an upload) together with its ``filename``.

Safety: nothing is written outside a staging folder in ``<workspace>/datasets``; archive members with
unsafe names, links or special types are refused; member count, total and per-file bytes and the
compression ratio (per member and for the whole archive) are counted while streaming (headers are never
trusted) and reading stops at the first byte over a limit; Pillow's decompression-bomb guard stays on; a
file is an image only if Pillow decodes it. Every refusal is recorded as a ``Skipped`` entry naming the
file, and the rest of the dataset still ingests. The finished dataset is renamed into place in one step.

Bounds on one archive ingest (see ``IngestLimits``): the staging folder holds at most the archive itself
plus ``IngestLimits.total_budget(...)`` bytes, i.e. no more than ``max_total_bytes``, ``disk_share`` of the
free disk and ``max_ratio`` times the archive's size; besides what it writes, a tar is decompressed at most
``max_skipped_bytes`` further to step over members it refuses. Work is proportional to those bytes.

Every accepted file is read once: its sha256, a full decode and an ``ImageProbe`` (size, colour mode,
EXIF orientation, perceptual hash, channel sums) are computed in the same pass and kept in
``probes.json`` so that ``core.data.audit`` does not decode the images again.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import re
import shutil
import stat
import tarfile
import time
import uuid
import zipfile
import zlib
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from contextlib import suppress
from dataclasses import asdict, dataclass, replace
from multiprocessing import get_context
from pathlib import Path
from typing import BinaryIO, Iterable

import numpy as np
from PIL import Image, UnidentifiedImageError
from core.errors import StudioError

# Formats we let Pillow try. Restricting them keeps exotic decoders (EPS runs Ghostscript) out.
IMAGE_FORMATS = ("PNG", "JPEG", "BMP", "GIF", "TIFF", "WEBP")  # JPEG covers MPO
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")
ARCHIVE_SUFFIXES = (".zip", ".tar.gz", ".tgz", ".tar")
SPLITS = ("train", "val", "test")
SPLIT_ALIASES = {
    "train": "train", "training": "train",
    "val": "val", "valid": "val", "validation": "val", "dev": "val",
    "test": "test", "testing": "test",
}
# Operating-system litter that must never become a class or an image (dot-names are caught separately).
SYSTEM_NAMES = frozenset({"__macosx", "thumbs.db", "desktop.ini", "ehthumbs.db", "$recycle.bin",
                          "system volume information", "icon\r"})
DATASET_FILE = "dataset.json"
PROBES_FILE = "probes.json"
PROBE_VERSION = 1
_STATS_MAX_SIDE = 512  # channel stats and the perceptual hash are computed at most at this size
_CHUNK = 1 << 20
_EXIF_ORIENTATION = 0x0112
_TRANSPOSE = {  # EXIF orientation -> the transpose that undoes it (as in PIL.ImageOps.exif_transpose)
    2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM, 5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE, 8: Image.Transpose.ROTATE_90,
}


class IngestError(StudioError, ValueError):
    """The whole source was refused (missing, unsupported, over a limit, or holding no images)."""


class ImageError(StudioError, ValueError):
    """One file could not be used as an image; ``code`` says why (see ``Skipped.code``)."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class IngestLimits:
    max_members: int = 200_000                  # files in an archive / folder / rows in a CSV
    # Bytes one ingest may write (uncompressed, counted while reading). A fixed cap: what is enforced is
    # total_budget(), this or less: disk_share of the free disk, and for an archive max_ratio times its size.
    max_total_bytes: int = 8 * 1024**3
    max_file_bytes: int = 100 * 1024**2         # one file, counted while reading
    max_image_pixels: int = 89_478_485          # width * height; Pillow's own default bomb limit
    # Uncompressed / compressed bytes, for each member and for the whole archive, checked only past a floor
    # of output (_RATIO_FLOOR_MEMBER, _RATIO_FLOOR_TOTAL). Images are mostly compressed already (a zipped
    # PNG or JPEG is about 1:1); deflate itself cannot exceed ~1032:1, which zeros reach.
    max_ratio: float = 200.0
    # A stream (tar.gz, tar.bz2, tar.xz) must be decompressed to step over a member that is refused or not
    # read; past this many such bytes the archive is refused instead of decompressed to its end.
    max_skipped_bytes: int = 64 * 1024**2
    disk_share: float = 0.5                     # of the free space on the disk the dataset is staged on

    def total_budget(self, folder: str | os.PathLike, archive_bytes: int | None = None) -> int:
        """The bytes an ingest staged in ``folder`` may write: the smallest of ``max_total_bytes``,
        ``disk_share`` of the folder's free disk space now, and (an archive of ``archive_bytes``)
        ``max_ratio`` times its size (but not under the ratio's floor)."""
        return _total_budget(self, folder, archive_bytes)[0]

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> IngestLimits:
        return cls(**d)


@dataclass(frozen=True)
class Sample:
    path: str            # relative to Dataset.root, "/"-separated
    label: str
    split: str | None    # "train" | "val" | "test" when the source gave one, else None
    sha256: str          # of the file bytes
    group: str | None = None  # e.g. a patient id from a CSV "group" column; kept in one split

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Sample:
        return cls(path=d["path"], label=d["label"], split=d.get("split"), sha256=d["sha256"],
                   group=d.get("group"))


@dataclass(frozen=True)
class Skipped:
    path: str    # as named in the source (archive member, relative file path, CSV row)
    code: str    # hidden | empty_file | not_image | corrupt | truncated | pixel_bomb | too_large |
                 # compression_bomb | unsafe_path | link | special_file | encrypted | duplicate_entry |
                 # outside_class_folder | not_split_folder | bad_row | missing_file | escapes_root
    reason: str  # what was wrong and what to do

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Skipped:
        return cls(path=d["path"], code=d["code"], reason=d["reason"])


@dataclass(frozen=True)
class Dataset:
    dataset_id: str                    # sha256 prefix over (path, content sha256, label, split, group)
    root: str                          # absolute folder holding the files; Sample.path is relative to it
    samples: tuple[Sample, ...]        # sorted by path
    skipped: tuple[Skipped, ...] = ()
    layout: str = "classes"            # "classes" | "splits" | "csv"
    source: str = ""                   # file or folder name it came from (informational)

    @property
    def labels(self) -> tuple[str, ...]:
        return tuple(sorted({s.label for s in self.samples}))

    @property
    def has_given_splits(self) -> bool:
        return any(s.split is not None for s in self.samples)

    def path_of(self, sample: Sample) -> Path:
        return Path(self.root, *sample.path.split("/"))

    def to_dict(self) -> dict:
        return {"dataset_id": self.dataset_id, "root": self.root, "layout": self.layout,
                "source": self.source, "samples": [s.to_dict() for s in self.samples],
                "skipped": [s.to_dict() for s in self.skipped]}

    @classmethod
    def from_dict(cls, d: dict) -> Dataset:
        return cls(dataset_id=d["dataset_id"], root=d["root"],
                   samples=tuple(Sample.from_dict(s) for s in d["samples"]),
                   skipped=tuple(Skipped.from_dict(s) for s in d.get("skipped", ())),
                   layout=d.get("layout", "classes"), source=d.get("source", ""))


@dataclass(frozen=True)
class ImageProbe:
    """What one decode of a file tells the audit; computed once at ingestion."""
    width: int                     # after EXIF transpose, i.e. what the model sees
    height: int
    mode: str                      # Pillow mode of the file before conversion to RGB
    format: str                    # PNG, JPEG, ...
    orientation: int               # EXIF orientation tag, 1 when absent
    phash: int                     # 64-bit DCT perceptual hash
    channel_sum: tuple[float, float, float]    # sums of RGB values in [0, 1] ...
    channel_sqsum: tuple[float, float, float]  # ... and of their squares ...
    pixel_count: int                           # ... over this many pixels (after downscaling)

    def to_list(self) -> list:
        return [self.width, self.height, self.mode, self.format, self.orientation,
                format(self.phash, "016x"), *self.channel_sum, *self.channel_sqsum, self.pixel_count]

    @classmethod
    def from_list(cls, v: list) -> ImageProbe:
        return cls(width=v[0], height=v[1], mode=v[2], format=v[3], orientation=v[4],
                   phash=int(v[5], 16), channel_sum=tuple(v[6:9]), channel_sqsum=tuple(v[9:12]),
                   pixel_count=v[12])


# --------------------------------------------------------------------------------------------------
# Decoding


def _open_checked(fp: BinaryIO, name: str, max_pixels: int | None) -> Image.Image:
    """Open and fully decode the first frame, refusing pixel bombs and anything Pillow can't decode."""
    try:
        im = Image.open(fp, formats=IMAGE_FORMATS)
    except Image.DecompressionBombError as e:
        raise ImageError("pixel_bomb", f"{name}: refused, {e}") from None
    except UnidentifiedImageError:
        if _has_image_signature(fp):
            raise ImageError("corrupt", f"{name}: corrupt image (it starts like an image but its "
                             "header can't be parsed); re-export or remove the file") from None
        raise ImageError("not_image", f"{name}: not an image Pillow can decode "
                         f"(accepted formats: {', '.join(IMAGE_FORMATS)})") from None
    except Exception as e:  # noqa: BLE001 - any parser failure means "not usable"
        raise ImageError("corrupt", f"{name}: corrupt image header ({e})") from None
    w, h = im.size
    limit = max_pixels if max_pixels is not None else Image.MAX_IMAGE_PIXELS
    if limit is not None and w * h > limit:
        raise ImageError("pixel_bomb", f"{name}: refused, declares {w}x{h} = {w * h} pixels, over the "
                         f"limit of {limit}; resize it or raise IngestLimits.max_image_pixels")
    try:
        im.load()
    except Exception as e:  # noqa: BLE001
        code = "truncated" if "truncat" in str(e).lower() else "corrupt"
        raise ImageError(code, f"{name}: {code} image data ({e}); re-export or remove the file") from None
    return im


_SIGNATURES = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF87a", b"GIF89a", b"BM", b"II*\x00",
               b"MM\x00*")


def _has_image_signature(fp: BinaryIO) -> bool:
    try:
        fp.seek(0)
        head = fp.read(12)
    except (OSError, ValueError):
        return False
    return head.startswith(_SIGNATURES) or (head[:4] == b"RIFF" and head[8:12] == b"WEBP")


def _high_depth_to_l(im: Image.Image) -> Image.Image:
    """16-bit / 32-bit / float greyscale -> 8-bit by scaling (Pillow's own convert would clip)."""
    arr = np.asarray(im)
    if im.mode.startswith("I;16"):
        out = (arr.astype(np.uint32) * 255 + 32767) // 65535          # round(v / 257)
    else:
        lo, hi = (float(arr.min()), float(arr.max())) if arr.size else (0.0, 0.0)
        if im.mode == "I" and lo >= 0 and hi <= 65535:                  # 16-bit data held as int32
            out = (arr.astype(np.int64) * 255 + 32767) // 65535
        elif im.mode == "F" and lo >= 0 and hi <= 1:
            out = np.rint(arr * 255.0)
        else:                                                          # unknown range: stretch
            out = np.rint((arr - lo) * (255.0 / (hi - lo))) if hi > lo else np.zeros_like(arr)
    return Image.fromarray(out.astype(np.uint8), "L")


def to_rgb(im: Image.Image, orientation: int | None = None) -> Image.Image:
    """Any decoded image -> 8-bit RGB with EXIF orientation applied and transparency on white."""
    if orientation is None:
        orientation = _orientation(im)
    if orientation in _TRANSPOSE:
        im = im.transpose(_TRANSPOSE[orientation])
    mode = im.mode
    if mode == "RGB" and "transparency" not in im.info:
        return im
    if mode.startswith("I") or mode == "F":
        return _high_depth_to_l(im).convert("RGB")
    if mode in ("RGBA", "LA", "La", "RGBa", "PA") or "transparency" in im.info:
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    try:
        return im.convert("RGB")  # L, 1, P, CMYK, YCbCr, LAB, HSV, RGBX
    except ValueError as e:
        raise ImageError("unsupported_mode", f"colour mode {mode} can't be converted to RGB ({e})") from None


def _orientation(im: Image.Image) -> int:
    try:
        value = im.getexif().get(_EXIF_ORIENTATION, 1)
        return int(value) if int(value) in range(1, 9) else 1
    except Exception:  # noqa: BLE001 - a broken EXIF block must not make the image unusable
        return 1


def load_rgb(path_or_file: str | os.PathLike | BinaryIO | bytes) -> Image.Image:
    """Open an image safely and return it as 8-bit RGB.

    The decompression-bomb guard is on (``Image.MAX_IMAGE_PIXELS``), only known raster formats are
    tried, the EXIF orientation is applied, alpha is composited on white, 16-bit is scaled (not
    clipped) and every other mode (L, P, CMYK, LA, 1, ...) is converted. Raises ``ImageError``.
    """
    if isinstance(path_or_file, (bytes, bytearray, memoryview)):
        name, fp = "<bytes>", io.BytesIO(path_or_file)
    elif isinstance(path_or_file, (str, os.PathLike)):
        name = os.fspath(path_or_file)
        try:
            with open(name, "rb") as fh:
                return _to_rgb_named(_open_checked(fh, name, None), name)
        except OSError as e:
            raise ImageError("unreadable", f"{name}: can't be read ({e.strerror or e})") from None
    else:
        name, fp = getattr(path_or_file, "name", "<file>"), path_or_file
    return _to_rgb_named(_open_checked(fp, str(name), None), str(name))


def _to_rgb_named(im: Image.Image, name: str) -> Image.Image:
    try:
        return to_rgb(im)
    except ImageError as e:
        raise ImageError(e.code, f"{name}: {e}") from None


# --------------------------------------------------------------------------------------------------
# Perceptual hash and probe

def _dct_matrix(n: int) -> np.ndarray:
    k = np.arange(n)[:, None]
    x = np.arange(n)[None, :]
    return np.cos(np.pi * (2 * x + 1) * k / (2 * n))


_DCT_LOW = _dct_matrix(32)[:8]  # only the 8 lowest frequencies are kept
_LEVELS = np.arange(256, dtype=np.float64)


def phash(rgb: Image.Image) -> int:
    """64-bit DCT perceptual hash (the pHash / ImageHash recipe: 32x32 grey, 8x8 low frequencies)."""
    grey = np.asarray(rgb.convert("L").resize((32, 32), Image.Resampling.LANCZOS), dtype=np.float64)
    low = (_DCT_LOW @ grey @ _DCT_LOW.T).ravel()
    ordered = np.sort(low)
    bits = low > (ordered[31] + ordered[32]) / 2  # the median, without np.median's overhead
    return int(np.packbits(bits).view(">u8")[0])


def probe_image(im: Image.Image) -> ImageProbe:
    """Size, mode, orientation, perceptual hash and channel sums of a decoded image."""
    mode, fmt, orientation = im.mode, im.format or "", _orientation(im)
    rgb = to_rgb(im, orientation)
    w, h = rgb.size
    factor = -(-max(w, h) // _STATS_MAX_SIDE)
    small = rgb.reduce(factor) if factor > 1 else rgb
    # Sums from the per-channel histogram (exact, and computed in C).
    hist = np.asarray(small.histogram(), dtype=np.float64).reshape(3, 256)
    return ImageProbe(
        width=w, height=h, mode=mode, format=fmt, orientation=orientation, phash=phash(small),
        channel_sum=tuple(float(v) for v in hist @ (_LEVELS / 255)),
        channel_sqsum=tuple(float(v) for v in hist @ np.square(_LEVELS / 255)),
        pixel_count=small.width * small.height)


def _read_capped(path: str, max_bytes: int, name: str) -> bytes:
    with open(path, "rb") as fh:
        data = fh.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise ImageError("too_large", f"{name}: refused, larger than the per-file limit of {max_bytes} "
                         "bytes; shrink it or raise IngestLimits.max_file_bytes")
    if not data:
        raise ImageError("empty_file", f"{name}: empty file (0 bytes); remove it")
    return data


def _process_file(task: tuple[str, str | None, str, bool, int, int]) -> tuple:
    """Read one file once: sha256, decode, probe; then place it at ``dst``. Runs in pool workers too.

    Returns ("ok", sha256, probe list) or ("skip", code, reason).
    """
    src, dst, name, move, max_file_bytes, max_pixels = task
    try:
        st = os.lstat(src)
        if stat.S_ISLNK(st.st_mode):
            raise ImageError("link", f"{name}: refused, a symbolic link; copy the real file in its place")
        if not stat.S_ISREG(st.st_mode):
            raise ImageError("special_file", f"{name}: refused, not a regular file")
        data = _read_capped(src, max_file_bytes, name)
        sha = hashlib.sha256(data).hexdigest()
        im = _open_checked(io.BytesIO(data), name, max_pixels)
        try:
            probe = probe_image(im)
        except ImageError as e:
            raise ImageError(e.code, f"{name}: {e}") from None
        if dst is not None:
            os.makedirs(os.path.dirname(dst), exist_ok=True)
            if move:
                os.replace(src, dst)
            else:
                _write_new(dst, data)
        return ("ok", sha, probe.to_list())
    except ImageError as e:
        return ("skip", e.code, str(e))
    except OSError as e:
        return ("skip", "unreadable", f"{name}: can't be read or stored ({e.strerror or e})")
    except Exception as e:  # noqa: BLE001 - one odd file must not sink the whole dataset
        return ("skip", "corrupt", f"{name}: can't be decoded ({type(e).__name__}: {e}); re-export it")


def _write_new(dst: str, data: bytes) -> None:
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL  # never overwrite, never follow a planted link
    flags |= getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_BINARY", 0)
    fd = os.open(dst, flags, 0o644)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)


# --------------------------------------------------------------------------------------------------
# Names


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

    ``resolve=False`` skips symlink resolution, for folders this module created itself.
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


# --------------------------------------------------------------------------------------------------
# Safe extraction


# The compression ratio is checked only past a floor of output: small files legitimately compress far
# more than max_ratio (a 256x256 one-colour BMP is 196 KB, deflated to 249 bytes: 790:1), and below the
# floors a "bomb" can do no harm. A member is checked after 1 MB of its output, the archive after 10 MB.
_RATIO_FLOOR_MEMBER = 1 << 20
_RATIO_FLOOR_TOTAL = 10 << 20
# tarfile reads a compressed stream in blocks of this size (its default bufsize) and decompresses each
# whole: a member's output may come from up to one block read before the member started.
_TAR_READ_AHEAD = tarfile.RECORDSIZE


def _free_bytes(folder: str | os.PathLike) -> int:
    return shutil.disk_usage(folder).free


def _total_budget(limits: IngestLimits, folder: str | os.PathLike, archive_bytes: int | None = None
                  ) -> tuple[int, str]:
    """``IngestLimits.total_budget``, and for a refusal message which bound set it and what to do."""
    free = _free_bytes(folder)
    bounds = [(limits.max_total_bytes, "a zip bomb?", "raise IngestLimits.max_total_bytes if the data is "
               "genuine"),
              (int(free * limits.disk_share), f"{limits.disk_share:.0%} of the {free} bytes free on the disk "
               f"holding {folder}", "free disk space there, or raise IngestLimits.disk_share")]
    if archive_bytes is not None:
        ratio_cap = _ratio_cap(limits.max_ratio, archive_bytes, _RATIO_FLOOR_TOTAL)
        bounds.append((int(min(ratio_cap, 2**62)), f"{limits.max_ratio:g} times the archive's {archive_bytes} "
                       "bytes: a compression bomb?", "raise IngestLimits.max_ratio if the data is genuine"))
    cap, reason, advice = min(bounds, key=lambda b: b[0])
    return cap, f"({reason}); {advice}"


def _ratio_cap(max_ratio: float, packed: int, floor: int) -> float:
    """Output allowed for ``packed`` compressed bytes: ``max_ratio`` times as much, never under ``floor``."""
    return max(floor, max_ratio * packed)


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


# --------------------------------------------------------------------------------------------------
# Layout scanning -> candidate files


@dataclass(frozen=True)
class _Candidate:
    src: str             # absolute path of the file to read
    rel: str             # relative path in the store
    label: str
    split: str | None
    group: str | None = None


def _entries(folder: str) -> list[os.DirEntry]:
    with os.scandir(folder) as it:
        return sorted(it, key=lambda e: e.name)


def _walk_class(folder: str, rel: str, label: str, split: str | None, out: list, skipped: list) -> None:
    for entry in _entries(folder):
        entry_rel = f"{rel}/{entry.name}"
        if is_hidden(entry.name):
            skipped.append(_hidden_skip(entry_rel + ("/" if entry.is_dir(follow_symlinks=False) else "")))
        elif entry.is_symlink():
            skipped.append(Skipped(entry_rel, "link", f"{entry_rel}: refused, a symbolic link; copy "
                                   "the real file in its place"))
        elif entry.is_dir(follow_symlinks=False):
            _walk_class(entry.path, entry_rel, label, split, out, skipped)
        else:
            out.append(_Candidate(entry.path, entry_rel, label, split))


def _scan_classes(folder: str, rel: str, split: str | None, out: list, skipped: list) -> None:
    for entry in _entries(folder):
        entry_rel = f"{rel}/{entry.name}" if rel else entry.name
        if is_hidden(entry.name):
            skipped.append(_hidden_skip(entry_rel + ("/" if entry.is_dir(follow_symlinks=False) else "")))
        elif entry.is_symlink():
            skipped.append(Skipped(entry_rel, "link", f"{entry_rel}: refused, a symbolic link"))
        elif entry.is_dir(follow_symlinks=False):
            _walk_class(entry.path, entry_rel, entry.name, split, out, skipped)
        else:
            where = f"{rel}/" if rel else "the top level"
            skipped.append(Skipped(entry_rel, "outside_class_folder",
                                   f"{entry_rel}: not inside a class folder, skipped; move it into "
                                   f"{where}<class>/ to use it"))


def _visible_dirs(folder: str) -> list[os.DirEntry]:
    return [e for e in _entries(folder) if not is_hidden(e.name) and e.is_dir(follow_symlinks=False)]


def _scan_folder(folder: str) -> tuple[list[_Candidate], list[Skipped], str]:
    """Class-folder layout, or train/val/test split layout when a train folder (or only splits) exists."""
    out: list[_Candidate] = []
    skipped: list[Skipped] = []
    dirs = _visible_dirs(folder)
    split_dirs = {e.name: SPLIT_ALIASES[e.name.lower()] for e in dirs if e.name.lower() in SPLIT_ALIASES}
    is_split_layout = "train" in split_dirs.values() or (bool(dirs) and len(split_dirs) == len(dirs))
    if not is_split_layout:
        _scan_classes(folder, "", None, out, skipped)
        return out, skipped, "classes"
    canon_seen: dict[str, str] = {}
    for entry in _entries(folder):
        if is_hidden(entry.name):
            skipped.append(_hidden_skip(entry.name + ("/" if entry.is_dir(follow_symlinks=False) else "")))
        elif entry.is_symlink():
            skipped.append(Skipped(entry.name, "link", f"{entry.name}: refused, a symbolic link"))
        elif entry.name in split_dirs and split_dirs[entry.name] not in canon_seen:
            canon_seen[split_dirs[entry.name]] = entry.name
            _scan_classes(entry.path, entry.name, split_dirs[entry.name], out, skipped)
        else:
            skipped.append(Skipped(entry.name, "not_split_folder",
                                   f"{entry.name}: skipped, beside train/ only val/ and test/ folders "
                                   f"are used (found {sorted(split_dirs)})"))
    return out, skipped, "splits"


def _unwrap(folder: str) -> str:
    """Descend through single wrapping folders ("archive/dataset/<class>/...") to the dataset root."""
    while True:
        visible = [e for e in _entries(folder) if not is_hidden(e.name)]
        if len(visible) != 1 or not visible[0].is_dir(follow_symlinks=False):
            return folder
        only = visible[0]
        if only.name.lower() in SPLIT_ALIASES or not _visible_dirs(only.path):
            return folder  # a split folder, or a single class holding only images
        folder = only.path


_SPLIT_CHOICES = "train, val, test (or training, valid, validation, dev, testing)"


def _scan_csv(csv_file: BinaryIO, csv_name: str, base: str, limits: IngestLimits
              ) -> tuple[list[_Candidate], list[Skipped]]:
    text = io.TextIOWrapper(csv_file, encoding="utf-8-sig", newline="")
    reader = csv.reader(text)
    try:
        header = next(reader)
    except StopIteration:
        raise IngestError(f"{csv_name}: empty CSV; expected a header row "
                          "path,label[,split][,group]") from None
    except (csv.Error, UnicodeDecodeError) as e:
        raise IngestError(f"{csv_name}: unreadable CSV ({e}); save it as UTF-8 CSV") from None
    columns = {c.strip().lower(): i for i, c in enumerate(header)}
    if "path" not in columns or "label" not in columns:
        raise IngestError(f"{csv_name}: the CSV needs columns 'path' and 'label' (optional 'split', "
                          f"'group'); found {header}")
    real_base = os.path.realpath(base)
    out: list[_Candidate] = []
    skipped: list[Skipped] = []
    labels_by_rel: dict[str, str] = {}

    def cell(row: list[str], col: str) -> str:
        i = columns.get(col)
        return row[i].strip() if i is not None and i < len(row) else ""

    try:
        for line_no, row in enumerate(reader, start=2):
            if not any(c.strip() for c in row):
                continue
            if line_no - 1 > limits.max_members:
                raise IngestError(f"{csv_name}: refused, more than {limits.max_members} rows; raise "
                                  "IngestLimits.max_members")
            where = f"{csv_name} line {line_no}"
            path, label = cell(row, "path"), cell(row, "label")
            split_raw, group = cell(row, "split"), cell(row, "group") or None
            if not path or not label:
                skipped.append(Skipped(where, "bad_row", f"{where}: empty path or label, row skipped"))
                continue
            split = None
            if split_raw:
                split = SPLIT_ALIASES.get(split_raw.lower())
                if split is None:
                    skipped.append(Skipped(where, "bad_row", f"{where}: unknown split {split_raw!r}; use "
                                           f"one of {_SPLIT_CHOICES} or leave it empty"))
                    continue
            norm = path.replace("\\", "/")
            if norm.startswith("/") or _DRIVE.match(norm):
                skipped.append(Skipped(path, "escapes_root", f"{where}: {path} refused, absolute path; "
                                       f"paths must be relative to {base}"))
                continue
            target = os.path.realpath(os.path.join(real_base, *norm.split("/")))
            if os.path.commonpath([real_base, target]) != real_base or target == real_base:
                skipped.append(Skipped(path, "escapes_root", f"{where}: {path} refused, it points outside "
                                       f"the image root {base}"))
                continue
            rel = os.path.relpath(target, real_base).replace(os.sep, "/")
            if any(is_hidden(p) for p in rel.split("/")):
                skipped.append(_hidden_skip(rel))
                continue
            if rel in labels_by_rel:
                if labels_by_rel[rel] != label:
                    skipped.append(Skipped(path, "bad_row", f"{where}: {path} is listed again with label "
                                           f"{label!r} (first {labels_by_rel[rel]!r}); the first row wins"))
                continue
            if not os.path.lexists(target):
                skipped.append(Skipped(path, "missing_file", f"{where}: {path} not found under {base}"))
                continue
            labels_by_rel[rel] = label
            out.append(_Candidate(target, rel, label, split, group))
    except (csv.Error, UnicodeDecodeError) as e:
        raise IngestError(f"{csv_name}: unreadable CSV ({e}); save it as UTF-8 CSV") from None
    finally:
        text.detach()
    return out, skipped


def _find_csv(folder: str) -> str | None:
    """A single top-level CSV with path,label columns turns an extracted archive into a CSV dataset."""
    csvs = [e for e in _entries(folder) if e.is_file(follow_symlinks=False) and not is_hidden(e.name)
            and e.name.lower().endswith(".csv")]
    if len(csvs) != 1:
        return None
    with open(csvs[0].path, "rb") as fh:
        head = fh.readline(65536).decode("utf-8-sig", errors="replace").lower()
    cols = {c.strip() for c in head.strip().split(",")}
    return csvs[0].path if {"path", "label"} <= cols else None


# --------------------------------------------------------------------------------------------------
# The store


def _datasets_dir(workspace_dir: str | os.PathLike) -> Path:
    return Path(workspace_dir) / "datasets"


def dataset_hash(samples: Iterable[Sample]) -> str:
    """Content address: sha256 over sorted (path, content sha256, label, split, group) lines."""
    h = hashlib.sha256()
    for s in sorted(samples, key=lambda s: s.path):
        h.update(f"{s.path}\0{s.sha256}\0{s.label}\0{s.split or ''}\0{s.group or ''}\n".encode())
    return h.hexdigest()


def _atomic_write_json(path: Path, obj) -> None:
    from core.files import write_text  # fsync'd, renamed into place; a full disk is a DiskFull naming the folder

    write_text(str(path), json.dumps(obj, indent=None, separators=(",", ":"), sort_keys=True))


def _indexed(datasets: Path, key: str) -> Dataset | None:
    """The stored dataset an index entry (`.index/<key>.json`) points at, as that source ingested it: its
    name and its skipped entries (the same content may have been stored from another source with other
    junk in it). None when there is no entry, or it is unreadable, or its dataset is gone."""
    index = datasets / ".index" / f"{key}.json"
    if not index.is_file():
        return None
    with suppress(OSError, ValueError, KeyError, TypeError):
        entry = json.loads(index.read_text(encoding="utf-8"))
        if (datasets / entry["dataset_id"] / DATASET_FILE).is_file():
            stored = load_dataset_dir(datasets / entry["dataset_id"])
            skipped = entry.get("skipped")
            return replace(stored, source=entry.get("source", stored.source),
                           skipped=stored.skipped if skipped is None else
                           tuple(Skipped.from_dict(x) for x in skipped))
    return None


def _index(datasets: Path, key: str, dataset: Dataset) -> None:
    """Remember that `key` (an archive's bytes, a folder's files, the demo) ingests to `dataset`."""
    index = datasets / ".index" / f"{key}.json"
    index.parent.mkdir(exist_ok=True)
    _atomic_write_json(index, {"dataset_id": dataset.dataset_id, "source": dataset.source,
                               "skipped": [x.to_dict() for x in dataset.skipped]})


def load_dataset(workspace_dir: str | os.PathLike, dataset_id: str) -> Dataset:
    """The dataset stored under ``<workspace>/datasets/<dataset_id>/``."""
    folder = _datasets_dir(workspace_dir) / dataset_id
    if not re.fullmatch(r"[0-9a-f]{8,64}", dataset_id) or not (folder / DATASET_FILE).is_file():
        known = ", ".join(list_datasets(workspace_dir)) or "none"
        raise IngestError(f"no dataset {dataset_id!r} in {folder.parent}; known datasets: {known}")
    return load_dataset_dir(folder)


def load_dataset_dir(folder: str | os.PathLike) -> Dataset:
    """A stored dataset from its index file. The index is data, not trusted: every sample path must name a
    file inside the folder (relative, no "..", no link out of it), or IngestError names the first that does not."""
    path = Path(folder) / DATASET_FILE
    try:
        with open(path, encoding="utf-8") as fh:
            d = json.load(fh)
        root = Path(folder).resolve()
        dataset = Dataset.from_dict({**d, "root": str(root)})
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise IngestError(f"{path}: not a dataset index this version can read ({exc})") from None
    prefix = str(root).rstrip(os.sep) + os.sep
    for sample in dataset.samples:
        rel = sample.path
        parts = rel.split("/")
        unsafe = (not isinstance(rel, str) or not rel or rel.startswith("/") or "\0" in rel
                  or any(p in ("", ".", "..") for p in parts))
        if not unsafe:
            real = os.path.realpath(dataset.path_of(sample))
            unsafe = not real.startswith(prefix)
        if unsafe:
            raise IngestError(f"{path}: refused, sample {rel!r} points outside the dataset folder {root}; the index "
                              "was altered. Ingest the images again")
    return dataset


def list_datasets(workspace_dir: str | os.PathLike) -> tuple[str, ...]:
    folder = _datasets_dir(workspace_dir)
    if not folder.is_dir():
        return ()
    return tuple(sorted(e.name for e in folder.iterdir()
                        if not e.name.startswith(".") and (e / DATASET_FILE).is_file()))


def load_probes(dataset: Dataset, workers: int = 1) -> dict[str, ImageProbe]:
    """Per-content probes (keyed by sha256), from ``probes.json``; missing ones are computed now."""
    path = Path(dataset.root) / PROBES_FILE
    probes: dict[str, ImageProbe] = {}
    if path.is_file():
        with open(path, encoding="utf-8") as fh:
            stored = json.load(fh)
        if stored.get("version") == PROBE_VERSION:
            probes = {k: ImageProbe.from_list(v) for k, v in stored["probes"].items()}
    missing = {s.sha256: s for s in dataset.samples if s.sha256 not in probes}
    if missing:
        limits = IngestLimits()
        tasks = [(str(dataset.path_of(s)), None, s.path, False, limits.max_file_bytes,
                  limits.max_image_pixels) for s in missing.values()]
        for s, result in zip(missing.values(), _run_tasks(tasks, workers)):
            if result[0] == "ok":
                probes[s.sha256] = ImageProbe.from_list(result[2])
        with suppress(OSError):
            _atomic_write_json(path, {"version": PROBE_VERSION,
                                      "probes": {k: v.to_list() for k, v in probes.items()}})
    return probes


def _run_tasks(tasks: list[tuple], workers: int) -> list[tuple]:
    # One process by default: on the 2-core reference machine a pool was slower both for 10,000
    # 32x32 PNGs (7.1 s vs 4.7 s) and for 120 2000x1500 JPEGs (2.4 s vs 1.7 s); start-up and
    # pickling outweigh the decode work. Ask for workers > 1 on big machines with big images.
    if workers <= 1 or len(tasks) < 2:
        return [_process_file(t) for t in tasks]
    # spawn, not fork: the dashboard process has threads, and forking those is unsafe.
    with ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn")) as pool:
        return list(pool.map(_process_file, tasks, chunksize=max(1, min(64, len(tasks) // workers))))


def _check_folder_budget(cands: list[_Candidate], limits: IngestLimits, source: str, staging: Path) -> None:
    if len(cands) > limits.max_members:
        raise IngestError(f"{source}: refused, {len(cands)} files is more than {limits.max_members}; "
                          "raise IngestLimits.max_members")
    total = 0
    for c in cands:
        with suppress(OSError):
            total += min(os.lstat(c.src).st_size, limits.max_file_bytes + 1)
    cap, why = _total_budget(limits, staging)
    if total > cap:
        raise IngestError(f"{source}: refused, {total} bytes is more than {cap} {why}")


def _build(cands: list[_Candidate], skipped: list[Skipped], layout: str, source: str, staging: Path,
           datasets: Path, limits: IngestLimits, move: bool, workers: int) -> Dataset:
    """Read, validate and place every candidate under staging/final, then rename it into the store."""
    final = staging / "final"
    final.mkdir()
    final_root = os.path.realpath(final)
    tasks, placed = [], []
    for c in cands:
        try:
            dst = _inside(final_root, c.rel, resolve=False)
        except ImageError as e:
            skipped.append(Skipped(c.rel, e.code, str(e)))
            continue
        tasks.append((c.src, dst, c.rel, move, limits.max_file_bytes, limits.max_image_pixels))
        placed.append(c)
    samples: list[Sample] = []
    probes: dict[str, list] = {}
    for c, result in zip(placed, _run_tasks(tasks, workers)):
        if result[0] == "ok":
            samples.append(Sample(c.rel, c.label, c.split, result[1], c.group))
            probes[result[1]] = result[2]
        else:
            skipped.append(Skipped(c.rel, result[1], result[2]))
    if not samples:
        reasons = sorted({s.code for s in skipped})
        raise IngestError(f"{source}: no usable images found ({len(skipped)} entries skipped: "
                          f"{', '.join(reasons) or 'nothing there'}); expected DATA/<class>/<image>, "
                          "DATA/train/<class>/<image>, or a CSV with path,label columns")
    samples.sort(key=lambda s: s.path)
    skipped.sort(key=lambda s: (s.path, s.code))
    dataset_id = dataset_hash(samples)[:16]
    target = datasets / dataset_id
    dataset = Dataset(dataset_id, str(target.resolve()), tuple(samples), tuple(skipped), layout, source)
    if (target / DATASET_FILE).is_file():
        return dataset  # same content already stored: reuse it, the staging copy is discarded
    _atomic_write_json(final / DATASET_FILE, {k: v for k, v in dataset.to_dict().items() if k != "root"})
    _atomic_write_json(final / PROBES_FILE, {"version": PROBE_VERSION, "probes": probes})
    try:
        os.rename(final, target)  # atomic: the dataset appears complete or not at all
    except OSError:
        if not (target / DATASET_FILE).is_file():  # not a concurrent twin of ours: a real failure
            raise
    return dataset


def _source_kind(name: str) -> str:
    low = name.lower()
    if low.endswith(".csv"):
        return "csv"
    if low.endswith(".zip"):
        return "zip"
    if low.endswith((".tar.gz", ".tgz", ".tar")):
        return "tar"
    return ""


def _sniff_kind(path: str) -> str:
    with open(path, "rb") as fh:
        magic = fh.read(262)
    if magic.startswith(b"PK\x03\x04") or magic.startswith(b"PK\x05\x06"):
        return "zip"
    if magic.startswith(b"\x1f\x8b") or magic[257:262] == b"ustar":
        return "tar"
    return ""


def _spool(fileobj: BinaryIO, dst: Path, limits: IngestLimits, name: str) -> str:
    """Copy an upload to disk while hashing it; returns its sha256."""
    cap, why = _total_budget(limits, dst.parent)
    h = hashlib.sha256()
    n = 0
    with open(dst, "xb") as out:
        while chunk := fileobj.read(min(_CHUNK, cap + 1 - n)):
            n += len(chunk)
            if n > cap:
                raise IngestError(f"{name}: refused, the upload is larger than {cap} bytes {why}")
            h.update(chunk)
            out.write(chunk)
    return h.hexdigest()


def _file_sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


STALE_STAGING_S = 24 * 3600  # a staging folder untouched this long belongs to an ingest that was killed


def clean_stale_staging(datasets: Path, older_than_s: float = STALE_STAGING_S) -> int:
    """Remove what killed ingests left in the dataset store (staging folders, half-written index files);
    returns how many. An ingest running now keeps writing into its staging folder, so it is never this old."""
    from core.files import clean_leftovers

    removed = clean_leftovers(str(datasets), older_than_s)
    now = time.time()
    for entry in os.scandir(datasets):
        if entry.name.startswith(".staging-") and entry.is_dir(follow_symlinks=False):
            newest = max((os.lstat(os.path.join(d, n)).st_mtime for d, _, names in os.walk(entry.path)
                          for n in names), default=entry.stat(follow_symlinks=False).st_mtime)
            if now - newest >= older_than_s:
                shutil.rmtree(entry.path, ignore_errors=True)
                removed += 1
    return removed


def ingest(source: str | os.PathLike | BinaryIO, workspace_dir: str | os.PathLike, *,
           filename: str | None = None, image_root: str | os.PathLike | None = None,
           limits: IngestLimits = IngestLimits(), workers: int = 1) -> Dataset:
    """Ingest a folder, archive or CSV (a path, or a file-like upload with ``filename``).

    The dataset is stored under ``<workspace>/datasets/<dataset_id>/`` and reused when the same
    content is ingested again; an archive already ingested (same bytes, same limits) is not even
    re-extracted. CSV paths are relative to ``image_root`` (default: the CSV's folder).
    ``workers`` > 1 decodes in a process pool (only worth it for many large images on many cores).
    Raises ``IngestError`` when the whole source is refused; single refused files are listed in
    ``Dataset.skipped``.
    """
    datasets = _datasets_dir(workspace_dir)
    datasets.mkdir(parents=True, exist_ok=True)
    clean_stale_staging(datasets)
    staging = datasets / f".staging-{uuid.uuid4().hex}"
    staging.mkdir()
    try:
        if hasattr(source, "read"):
            name = filename or getattr(source, "name", "") or "upload"
            name = os.path.basename(str(name))
            kind = _source_kind(name)
            if kind == "csv":
                if image_root is None:
                    raise IngestError(f"{name}: an uploaded CSV needs image_root= (the folder its "
                                      "paths are relative to); or upload a zip holding the CSV and images")
                cands, skipped = _scan_csv(source, name, os.fspath(image_root), limits)
                return _finish_csv(cands, skipped, name, staging, datasets, limits, workers)
            archive = staging / "upload"
            archive_sha = _spool(source, archive, limits, name)
            return _ingest_archive(str(archive), archive_sha, kind, name, staging, datasets, limits, workers)
        path = os.fspath(source)
        name = filename or os.path.basename(os.path.normpath(path))
        if os.path.isdir(path):
            return _ingest_folder(path, name, staging, datasets, limits, workers, move=False)
        if not os.path.isfile(path):
            raise IngestError(f"{path}: not found; give a folder, a .zip/.tar.gz/.tgz archive or a .csv")
        kind = _source_kind(name)
        if kind == "csv":
            base = os.fspath(image_root) if image_root is not None else os.path.dirname(os.path.abspath(path))
            with open(path, "rb") as fh:
                cands, skipped = _scan_csv(fh, name, base, limits)
            return _finish_csv(cands, skipped, name, staging, datasets, limits, workers)
        return _ingest_archive(path, _file_sha256(path), kind, name, staging, datasets, limits, workers)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _ingest_folder(path: str, name: str, staging: Path, datasets: Path, limits: IngestLimits,
                   workers: int, move: bool) -> Dataset:
    cands, skipped, layout = _scan_folder(path)
    _check_folder_budget(cands, limits, name, staging)
    signature = None if move else _folder_signature(path, name, cands, limits)
    key = f"folder-{signature[:32]}" if signature else None
    if key is not None and (same := _indexed(datasets, key)) is not None:
        return same  # the same files as last time: no need to read them again
    dataset = _build(cands, skipped, layout, name, staging, datasets, limits, move, workers)
    if key is not None:
        _index(datasets, key, dataset)
    return dataset


def _folder_signature(path: str, name: str, cands: list[_Candidate], limits: IngestLimits) -> str | None:
    """What a folder ingest depends on: the folder, the name, the limits, and every candidate's path, label,
    split, size and modification time (as make and git's index trust them). None when a file cannot be
    stat'ed: then the folder is read in full and the read decides."""
    h = hashlib.sha256(json.dumps([os.path.realpath(path), name, limits.to_dict()]).encode())
    for c in sorted(cands, key=lambda c: c.rel):
        try:
            st = os.lstat(c.src)
        except OSError:
            return None
        h.update(f"{c.rel}\0{c.label}\0{c.split}\0{c.group}\0{st.st_mode}\0{st.st_size}\0{st.st_mtime_ns}\n"
                 .encode())
    return h.hexdigest()


def _finish_csv(cands, skipped, name, staging, datasets, limits, workers) -> Dataset:
    _check_folder_budget(cands, limits, name, staging)
    return _build(cands, skipped, "csv", name, staging, datasets, limits, False, workers)


def _ingest_archive(archive: str, archive_sha: str, kind: str, name: str, staging: Path, datasets: Path,
                    limits: IngestLimits, workers: int) -> Dataset:
    kind = kind or _sniff_kind(archive)
    if kind not in ("zip", "tar"):
        raise IngestError(f"{name}: unsupported source; give a folder, a .zip, .tar.gz, .tgz, .tar or .csv")
    # Index by archive bytes + limits: the same upload maps to its dataset without re-extraction.
    key = hashlib.sha256(f"{archive_sha}|{kind}|{json.dumps(limits.to_dict(), sort_keys=True)}"
                         .encode()).hexdigest()
    if (same := _indexed(datasets, key)) is not None:
        return same
    raw = staging / "raw"
    raw.mkdir()
    skipped: list[Skipped] = []
    # The budget is set now, from the free disk left after an upload was spooled, and from the archive's size.
    total = _total_budget(limits, staging, os.path.getsize(archive))
    (_extract_zip if kind == "zip" else _extract_tar)(archive, str(raw), limits, skipped, name, total)
    root = _unwrap(str(raw))
    prefix = os.path.relpath(root, raw).replace(os.sep, "/")
    csv_path = _find_csv(root)
    if csv_path is not None:
        with open(csv_path, "rb") as fh:
            cands, more = _scan_csv(fh, os.path.basename(csv_path), root, limits)
        layout = "csv"
    else:
        cands, more, layout = _scan_folder(root)
    if prefix != ".":  # report paths as they are named inside the archive
        more = [Skipped(f"{prefix}/{s.path}", s.code, s.reason) for s in more]
    dataset = _build(cands, skipped + more, layout, name, staging, datasets, limits, True, workers)
    _index(datasets, key, dataset)
    return dataset


# --------------------------------------------------------------------------------------------------
# Demo data


def _load_digits() -> tuple[np.ndarray, np.ndarray]:
    """``sklearn.datasets.load_digits()`` images (N, 8, 8) with values 0..16, and targets.

    Reads the CSV that scikit-learn bundles directly: importing sklearn costs ~2 s, this ~50 ms.
    """
    import importlib.util

    spec = importlib.util.find_spec("sklearn")
    locations = list(spec.submodule_search_locations or []) if spec else []
    bundled = [Path(p, "datasets", "data", "digits.csv.gz") for p in locations]
    for path in bundled:
        if path.is_file():
            data = np.loadtxt(path, delimiter=",")
            return data[:, :-1].reshape(-1, 8, 8), data[:, -1].astype(int)
    from sklearn.datasets import load_digits  # layout changed: take the slow, public road

    digits = load_digits()
    return digits.images, digits.target

DEMO_KEY = "demo-digits-v1"


def demo_dataset(workspace_dir: str | os.PathLike) -> Dataset:
    """scikit-learn's bundled digits (1797 8x8 images) as 32x32 RGB PNGs in class folders "0".."9".

    Exported on first use and ingested through the same folder path as a user's data; the result is
    deterministic, so the dataset_id is the same every time.
    """
    datasets = _datasets_dir(workspace_dir)
    if (stored := _indexed(datasets, DEMO_KEY)) is not None:
        return stored
    images, targets = _load_digits()
    datasets.mkdir(parents=True, exist_ok=True)
    staging = datasets / f".staging-{uuid.uuid4().hex}"
    export = staging / "export"
    try:
        for i, (pixels, target) in enumerate(zip(images, targets)):
            grey = np.rint(pixels * (255.0 / 16.0)).astype(np.uint8)  # 0..16 -> 0..255
            big = np.kron(grey, np.ones((4, 4), dtype=np.uint8))       # 8x8 -> 32x32, nearest
            folder = export / str(int(target))
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.stack([big] * 3, axis=-1), "RGB").save(folder / f"{i:04d}.png",
                                                                       optimize=False)
        # The user's folder path (scan, limits, decode, probe, store); the files are ours, so they
        # are moved into the store rather than copied.
        dataset = _ingest_folder(str(export), "sklearn-digits", staging, datasets, IngestLimits(), 1,
                                 move=True)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    _index(datasets, DEMO_KEY, dataset)
    return dataset


DEMO_SOURCE = "demo"


def resolve_dataset(source: Dataset | str | os.PathLike | BinaryIO, workspace_dir: str | os.PathLike, *,
                    filename: str | None = None, image_root: str | os.PathLike | None = None,
                    limits: IngestLimits = IngestLimits(), workers: int = 1) -> Dataset:
    """Whatever a user points at, as a stored Dataset: a Dataset, "demo", a stored dataset folder, a
    dataset id in the workspace, or any source ``ingest`` accepts."""
    if isinstance(source, Dataset):
        return source
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if os.fspath(source) == DEMO_SOURCE and not path.exists():
            return demo_dataset(workspace_dir)
        if (path / DATASET_FILE).is_file():  # an already-ingested dataset folder
            return load_dataset_dir(path)
        if not path.exists() and re.fullmatch(r"[0-9a-f]{8,64}", path.name):
            return load_dataset(workspace_dir, path.name)
    return ingest(source, workspace_dir, filename=filename, image_root=image_root, limits=limits, workers=workers)
