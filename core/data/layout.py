"""Which files of a folder or CSV make the dataset: the class-folder layout (``DATA/<class>/<image>``), the
split layout (``DATA/train/<class>/<image>`` + val/test), single wrapping folders, and a ``path,label[,split]
[,group]`` CSV; each turns into candidate files (``_Candidate``) and ``Skipped`` entries for the rest."""

from __future__ import annotations

import csv
import io
import os
from dataclasses import dataclass
from typing import BinaryIO

from core.data.limits import IngestLimits
from core.data.paths import _DRIVE, _hidden_skip, is_hidden
from core.data.types import IngestError, Skipped

SPLITS = ("train", "val", "test")
SPLIT_ALIASES = {
    "train": "train", "training": "train",
    "val": "val", "valid": "val", "validation": "val", "dev": "val",
    "test": "test", "testing": "test",
}


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
