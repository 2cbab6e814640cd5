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

This module orchestrates; the parts are ``types`` (the records and errors), ``limits``, ``paths`` (hidden and
unsafe names), ``images`` (decode and probe), ``archives`` (extraction), ``layout`` (folders and CSVs ->
candidate files), ``store`` (the content-addressed store) and ``demo`` (the digits), all in ``core.data``.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import uuid
from contextlib import suppress
from pathlib import Path
from typing import BinaryIO

from core.data.archives import _extract_tar, _extract_zip
from core.data.demo import _export_digits, _load_digits
from core.data.images import _run_tasks
from core.data.layout import _Candidate, _find_csv, _scan_csv, _scan_folder, _unwrap
from core.data.limits import _CHUNK, IngestLimits, _total_budget
from core.data.paths import _inside
from core.data.store import (
    DATASET_FILE,
    PROBE_VERSION,
    PROBES_FILE,
    _atomic_write_json,
    _datasets_dir,
    _index,
    _indexed,
    clean_stale_staging,
    dataset_hash,
    load_dataset,
    load_dataset_dir,
)
from core.data.types import Dataset, ImageError, IngestError, Sample, Skipped


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
        _export_digits(images, targets, export)
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
