"""Split a dataset into train/val/test: stratified by label, seeded, and leak-free.

Exact duplicates, near duplicates and samples sharing a CSV ``group`` (e.g. a patient id) form one
unit that lands in ONE split, so the split itself creates no leakage. Splits the source already gives
(train/val/test folders, a CSV split column) are kept as they are; a missing val or test is carved
from train, stratified. The result is a ``Manifest`` a training run can record: which dataset version
(``dataset_id``), where its files are (``root``) and which file went where.
"""

from __future__ import annotations

import csv
import io
import json
import os
import random
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from core.data.duplicates import NEAR_DUPLICATE_DISTANCE, find_duplicate_groups
from core.data.types import Dataset, Sample
from core.errors import StudioError
from core.files import write_text

SPLITS = ("train", "val", "test")
MANIFEST_FORMAT = 1
CSV_COLUMNS = ("path", "sha256", "label", "split")


class SplitError(StudioError, ValueError):
    """The dataset can't be split as asked (bad ratios, no training data)."""


@dataclass(frozen=True)
class ManifestRow:
    path: str     # relative to Manifest.root, "/"-separated
    sha256: str   # content hash: a run can check it trains on exactly these bytes
    label: str
    split: str    # "train" | "val" | "test"

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> ManifestRow:
        return cls(d["path"], d["sha256"], d["label"], d["split"])


@dataclass(frozen=True)
class Manifest:
    dataset_id: str                        # the dataset version the split was made from
    root: str                              # folder the row paths are relative to
    seed: int
    ratios: tuple[float, float, float]     # requested train/val/test fractions
    rows: tuple[ManifestRow, ...]          # sorted by path
    warnings: tuple[str, ...] = ()         # small classes, leaks in given splits, ...
    grouping: tuple[dict, ...] = ()        # related images kept together: core.data.related.RelatedGroups.to_dict()

    @property
    def labels(self) -> tuple[str, ...]:
        """Sorted class names: index i in this tuple is class index i."""
        return tuple(sorted({r.label for r in self.rows}))

    def rows_for(self, split: str) -> tuple[ManifestRow, ...]:
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
        return tuple(r for r in self.rows if r.split == split)

    def counts(self) -> dict[str, dict[str, int]]:
        """split -> label -> number of images."""
        out: dict[str, dict[str, int]] = {}
        for r in self.rows:
            per = out.setdefault(r.split, {})
            per[r.label] = per.get(r.label, 0) + 1
        return {s: dict(sorted(out[s].items())) for s in SPLITS if s in out}

    def path_of(self, row: ManifestRow) -> Path:
        return Path(self.root, *row.path.split("/"))

    def to_dict(self) -> dict:
        return {"format": MANIFEST_FORMAT, "dataset_id": self.dataset_id, "root": self.root,
                "seed": self.seed, "ratios": list(self.ratios), "warnings": list(self.warnings),
                "grouping": list(self.grouping), "rows": [r.to_dict() for r in self.rows]}

    @classmethod
    def from_dict(cls, d: dict) -> Manifest:
        return cls(dataset_id=d["dataset_id"], root=d["root"], seed=int(d["seed"]),
                   ratios=tuple(float(x) for x in d["ratios"]),
                   rows=tuple(ManifestRow.from_dict(r) for r in d["rows"]),
                   warnings=tuple(d.get("warnings", ())), grouping=tuple(d.get("grouping", ())))


# --------------------------------------------------------------------------------------------------
# Units: samples that must share a split


def _units(samples: Sequence[Sample], groups: Iterable[Iterable[str]]) -> list[list[Sample]]:
    """Connected components over duplicate groups, identical content and CSV group values."""
    parent = list(range(len(samples)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    def union(i: int, j: int) -> None:
        ri, rj = find(i), find(j)
        if ri != rj:
            parent[max(ri, rj)] = min(ri, rj)

    index = {s.path: i for i, s in enumerate(samples)}
    first_by_key: dict[tuple[str, str], int] = {}
    for i, s in enumerate(samples):
        for key in (("sha", s.sha256), ("group", s.group) if s.group is not None else None):
            if key is not None:
                union(i, first_by_key.setdefault(key, i))
    for group in groups:
        members = [index[p] for p in group if p in index]
        for m in members[1:]:
            union(members[0], m)
    by_root: dict[int, list[Sample]] = defaultdict(list)
    for i, s in enumerate(samples):
        by_root[find(i)].append(s)
    return list(by_root.values())


def unit_ids(samples: Sequence[Sample], groups: Iterable[Iterable[str]]) -> dict[str, int]:
    """Sample path -> the id of the unit that must stay in one split (what split_dataset deals whole)."""
    return {s.path: k for k, unit in enumerate(_units(tuple(samples), groups)) for s in unit}


def _unit_label(unit: list[Sample]) -> str:
    counts = Counter(s.label for s in unit)
    return min(counts, key=lambda label: (-counts[label], label))  # majority, ties by name


# --------------------------------------------------------------------------------------------------
# Stratified assignment


def _targets(n_samples: int, n_units: int, ratios: Sequence[float]) -> list[int]:
    """Images per split for one class: largest-remainder rounding, one image at least in every split
    with a non-zero ratio when the class has enough units, and train first."""
    raw = [n_samples * r for r in ratios]
    targets = [int(x) for x in raw]
    order = sorted(range(len(raw)), key=lambda i: (-(raw[i] - targets[i]), i))
    for i in order[: n_samples - sum(targets)]:
        targets[i] += 1
    active = [i for i, r in enumerate(ratios) if r > 0]
    for i in active[: min(n_units, len(active))]:
        if targets[i] == 0:
            donor = max(range(len(targets)), key=lambda k: (targets[k], -k))
            if targets[donor] > 1:
                targets[donor] -= 1
                targets[i] += 1
    return targets


def _assign(units: list[list[Sample]], ratios: Sequence[float], seed: int, label: str) -> list[int]:
    """Split index per unit: units in seeded random order, biggest first, each to the split furthest
    below its target."""
    n_samples = sum(len(u) for u in units)
    targets = _targets(n_samples, len(units), ratios)
    rng = random.Random(f"{seed}:{label}")  # per class: adding a class doesn't reshuffle the others
    order = list(range(len(units)))
    rng.shuffle(order)
    order.sort(key=lambda i: -len(units[i]))  # stable: random among equal sizes
    filled = [0] * len(ratios)
    choice = [0] * len(units)
    for i in order:
        best = max(range(len(ratios)), key=lambda k: (targets[k] - filled[k], -k) if ratios[k] > 0
                   else (float("-inf"), -k))
        choice[i] = best
        filled[best] += len(units[i])
    return choice


def _check_ratios(ratios: Sequence[float]) -> tuple[float, float, float]:
    if len(ratios) != 3 or any(r < 0 for r in ratios) or abs(sum(ratios) - 1.0) > 1e-6 or ratios[0] <= 0:
        raise SplitError(f"ratios must be three non-negative fractions (train, val, test) that sum "
                         f"to 1 with train > 0, e.g. (0.7, 0.15, 0.15); got {tuple(ratios)}")
    return (float(ratios[0]), float(ratios[1]), float(ratios[2]))


def split_dataset(dataset: Dataset, ratios: Sequence[float] = (0.7, 0.15, 0.15), seed: int = 0,
                  near_duplicate_groups: Iterable[Iterable[str]] | None = None, *,
                  respect_given_splits: bool = True, near_duplicate_distance: int | None = None,
                  related: Sequence = ()) -> Manifest:
    """Assign every sample to train/val/test; see the module docstring for the guarantees.

    ``near_duplicate_groups``: groups of sample paths to keep together (``AuditReport.duplicate_groups``);
    None computes them from the stored perceptual hashes (``near_duplicate_distance``, default the
    audit's), ``()`` keeps only exact duplicates and CSV groups together. ``respect_given_splits=False``
    re-splits data that came with splits. ``related``: ``core.data.related.RelatedGroups`` (views of one object,
    ...) whose groups are kept together too, and recorded in the manifest. The same inputs and seed give an
    identical manifest.
    """
    ratios = _check_ratios(ratios)
    samples = tuple(sorted(dataset.samples, key=lambda s: s.path))
    if not samples:
        raise SplitError(f"dataset {dataset.dataset_id} has no images to split")
    if near_duplicate_groups is None:
        distance = NEAR_DUPLICATE_DISTANCE if near_duplicate_distance is None else near_duplicate_distance
        near_duplicate_groups = find_duplicate_groups(dataset, distance)
    units = _units(samples, [*near_duplicate_groups, *(g for r in related for g in r.groups)])
    warnings: list[str] = []
    given = respect_given_splits and any(s.split is not None for s in samples)
    split_of: dict[str, str] = {}

    if given:
        for s in samples:
            if s.split is not None:
                split_of[s.path] = s.split
        unsplit = [s for s in samples if s.split is None]
        if unsplit:
            warnings.append(f"{len(unsplit)} images have no split in the source: treated as train")
        present = {s.split for s in samples if s.split is not None}
        if not (present & {"train"}) and not unsplit:
            raise SplitError(f"the dataset gives {', '.join(sorted(present))} splits but no train "
                             "split; add a train/ folder of images, or put every image in class folders without "
                             "train/val/test folders so the whole dataset is split afresh")
        leaking = [u for u in units if len({s.split or "train" for s in u}) > 1]
        if leaking:
            warnings.append(f"the given splits share {len(leaking)} groups of identical/near-duplicate "
                            "or same-group images across splits (kept as given); the audit lists them. Move them "
                            "into one split, or drop the train/val/test folders to have the data split afresh")
        # Carve each missing split (with a non-zero ratio) from the units that are wholly train.
        carve = [k for k, name in enumerate(SPLITS) if k > 0 and ratios[k] > 0 and name not in present]
        pool = [u for u in units if all(s.split in (None, "train") for s in u)]
        pool_ratios = [ratios[0]] + [ratios[k] if k in carve else 0.0 for k in (1, 2)]
        total = sum(pool_ratios)
        pool_ratios = [r / total for r in pool_ratios]
        pooled = {id(u) for u in pool}
        for u in units:
            if id(u) not in pooled:
                for s in u:
                    split_of.setdefault(s.path, "train")
    else:
        carve = [k for k in (1, 2) if ratios[k] > 0]
        pool, pool_ratios = units, list(ratios)

    by_label: dict[str, list[list[Sample]]] = defaultdict(list)
    for u in pool:
        by_label[_unit_label(u)].append(u)
    for label in sorted(by_label):
        label_units = sorted(by_label[label], key=lambda u: u[0].path)
        for u, k in zip(label_units, _assign(label_units, pool_ratios, seed, label)):
            for s in u:
                split_of[s.path] = SPLITS[k]

    rows = tuple(ManifestRow(s.path, s.sha256, s.label, split_of[s.path]) for s in samples)
    warnings += _coverage_warnings(rows, ratios)
    return Manifest(dataset.dataset_id, dataset.root, seed, ratios, rows, tuple(warnings),
                    tuple(r.to_dict() for r in related))


def training_refusal(labels_and_splits: Iterable[tuple[str, str]], source: str) -> str:
    """Why a training run refuses data whose images have these (label, split) pairs; "" when it accepts it.

    The one statement of the rule: core.data raises it as a DataError, core.data.audit reports it as an error.
    """
    pairs = list(labels_and_splits)
    classes = {label for label, _ in pairs}
    if len(classes) < 2:
        return f"{source}: found {len(classes)} class(es); a classifier needs at least 2 classes"
    sizes = Counter(split for _, split in pairs)
    if not sizes["train"] or not sizes["val"]:
        return (f"{source}: the train and val splits must both hold images "
                f"(train {sizes['train']}, val {sizes['val']})")
    return ""


def _coverage_warnings(rows: Sequence[ManifestRow], ratios: Sequence[float]) -> list[str]:
    present: dict[str, set[str]] = defaultdict(set)
    for r in rows:
        present[r.split].add(r.label)
    labels = sorted({r.label for r in rows})
    out = []
    for k, name in enumerate(SPLITS):
        if ratios[k] <= 0 and name not in present:
            continue
        missing = [label for label in labels if label not in present[name]]
        if missing:
            effect = "the model can't learn them" if name == "train" else "they won't be evaluated there"
            out.append(f"{name} has no images of {missing}: those classes have too few images (or "
                       f"one big duplicate group); {effect}. Add images to those classes.")
    return out


# --------------------------------------------------------------------------------------------------
# Reading and writing


def _manifest_csv(manifest: Manifest) -> str:
    meta = {k: v for k, v in manifest.to_dict().items() if k != "rows"}
    buf = io.StringIO()
    buf.write("# " + json.dumps(meta, sort_keys=True, separators=(",", ":")) + "\n")
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for r in manifest.rows:
        writer.writerow([r.path, r.sha256, r.label, r.split])
    return buf.getvalue()


def write_manifest(manifest: Manifest, path: str | os.PathLike) -> Path:
    """Write the manifest atomically (temp file + rename): ``.json``, or ``.csv`` whose first line is
    a ``# {json metadata}`` comment (``pandas.read_csv(path, skiprows=1)`` reads the table)."""
    path = Path(path)
    if path.suffix.lower() == ".json":
        text = json.dumps(manifest.to_dict(), sort_keys=True, indent=1) + "\n"
    elif path.suffix.lower() == ".csv":
        text = _manifest_csv(manifest)
    else:
        raise ValueError(f"{path}: a manifest file must end in .json or .csv")
    write_text(str(path), text)  # fsync'd, renamed into place; a full disk is a DiskFull naming the folder
    return path


def read_manifest(path: str | os.PathLike) -> Manifest:
    """Read a manifest written by ``write_manifest`` (JSON or CSV)."""
    path = Path(path)
    text = path.read_text(encoding="utf-8")
    if text.startswith("{"):
        return Manifest.from_dict(json.loads(text))
    first, _, rest = text.partition("\n")
    if not first.startswith("# {"):
        raise ValueError(f"{path}: not a manifest written by write_manifest (its first line should be "
                         "'# {...}' metadata or the file should be JSON)")
    meta = json.loads(first[2:])
    reader = csv.DictReader(io.StringIO(rest))
    if tuple(reader.fieldnames or ()) != CSV_COLUMNS:
        raise ValueError(f"{path}: manifest columns must be {','.join(CSV_COLUMNS)}; "
                         f"found {reader.fieldnames}")
    return Manifest.from_dict({**meta, "rows": list(reader)})


def stratified_subset(labels: Sequence[int], n: int | None, seed: int = 0) -> np.ndarray:
    """Sorted indices of about `n` items with each class's share kept (largest remainders), at least one per
    class present; all indices when n is None or covers them all."""
    labels = np.asarray(labels)
    if n is None or n >= len(labels):
        return np.arange(len(labels))
    rng = np.random.default_rng(seed)
    classes, counts = np.unique(labels, return_counts=True)
    quota = counts * n / len(labels)
    take = np.minimum(np.maximum(np.floor(quota).astype(int), 1), counts)
    for i in np.argsort(-(quota - np.floor(quota)), kind="stable"):
        if take.sum() >= n:
            break
        if take[i] < counts[i]:
            take[i] += 1
    chosen = [rng.choice(np.flatnonzero(labels == c), k, replace=False) for c, k in zip(classes, take)]
    return np.sort(np.concatenate(chosen))
