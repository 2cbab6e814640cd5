"""The content-addressed dataset store under ``<workspace>/datasets/``: one folder per dataset id holding its
files, ``dataset.json`` and ``probes.json``; the ``.index/`` that maps a source already ingested to its
dataset; loading (the index is checked, not trusted), listing, probes, and cleaning what killed ingests left."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import time
from contextlib import suppress
from dataclasses import replace
from pathlib import Path
from typing import Iterable

from core.data.images import _run_tasks
from core.data.limits import IngestLimits
from core.data.types import Dataset, ImageProbe, IngestError, Sample, Skipped
from core.files import clean_leftovers, write_text

DATASET_FILE = "dataset.json"
PROBES_FILE = "probes.json"
PROBE_VERSION = 1


def _datasets_dir(workspace_dir: str | os.PathLike) -> Path:
    return Path(workspace_dir) / "datasets"


def dataset_hash(samples: Iterable[Sample]) -> str:
    """Content address: sha256 over sorted (path, content sha256, label, split, group) lines."""
    h = hashlib.sha256()
    for s in sorted(samples, key=lambda s: s.path):
        h.update(f"{s.path}\0{s.sha256}\0{s.label}\0{s.split or ''}\0{s.group or ''}\n".encode())
    return h.hexdigest()


def _atomic_write_json(path: Path, obj) -> None:
    # fsync'd, renamed into place; a full disk is a DiskFull naming the folder
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


STALE_STAGING_S = 24 * 3600  # a staging folder untouched this long belongs to an ingest that was killed


def clean_stale_staging(datasets: Path, older_than_s: float = STALE_STAGING_S) -> int:
    """Remove what killed ingests left in the dataset store (staging folders, half-written index files);
    returns how many. An ingest running now keeps writing into its staging folder, so it is never this old."""
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
