"""Which files and labels are in which split of a run: a split manifest (core.data.splits) over a stored dataset
(core.data.store), resolved to absolute paths and class indices.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from core.data.splits import training_refusal
from core.errors import StudioError

SPLITS = ("train", "val", "test")


class DataError(StudioError, ValueError):
    """The data cannot be used as given; the message says what to fix."""


@dataclass(frozen=True)
class Split:
    paths: tuple[str, ...]
    labels: tuple[int, ...]

    def __len__(self) -> int:
        return len(self.paths)


@dataclass(frozen=True)
class SplitData:
    classes: tuple[str, ...]
    train: Split
    val: Split
    test: Split
    source: str  # what the user pointed at
    dataset_id: str = ""  # content address, when the data came through the dataset store

    def class_counts(self) -> list[int]:
        counts = [0] * len(self.classes)
        for y in self.train.labels:
            counts[y] += 1
        return counts

    def describe(self) -> dict:
        return {"source": self.source, "dataset_id": self.dataset_id, "classes": list(self.classes),
                "train": len(self.train), "val": len(self.val), "test": len(self.test),
                "train_class_counts": dict(zip(self.classes, self.class_counts()))}


def from_manifest(manifest, source: str = "") -> SplitData:
    """A split manifest (core.data.splits.Manifest) -> SplitData with absolute paths."""
    rows = [(str(manifest.path_of(r)), r.label, r.split) for r in manifest.rows]
    return from_rows(rows, source or manifest.root, manifest.dataset_id)


def from_rows(rows: Sequence[tuple[str, str, str]], source: str, dataset_id: str = "") -> SplitData:
    """(path, label, split) rows -> SplitData, with classes sorted by name."""
    refusal = training_refusal(((label, split) for _, label, split in rows), source)
    if refusal:
        raise DataError(refusal)
    classes = tuple(sorted({label for _, label, _ in rows}))
    index = {c: i for i, c in enumerate(classes)}
    parts: dict[str, tuple[list[str], list[int]]] = {s: ([], []) for s in SPLITS}
    for path, label, split in rows:
        parts[split][0].append(path)
        parts[split][1].append(index[label])
    made = {s: Split(tuple(p), tuple(y)) for s, (p, y) in parts.items()}
    return SplitData(classes, made["train"], made["val"], made["test"], source, dataset_id)
