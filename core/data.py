"""Data for a run: which files and labels are in which split, and the decode-once image cache.

Which files are in which split comes from a split manifest (core/splits.py) over a stored dataset
(core/ingest.py); `SplitData` is that manifest resolved to absolute paths and class indices.

Every image is decoded and resized once per run into a uint8 tensor cache at the spec's `cache_size`
(on the GPU when training there and it fits); batches are sliced from it and augmented in place. A
dataset too large for the memory budget streams through a DataLoader with workers instead, producing
the same uint8 batches, so augmentation and evaluation are one code path either way.
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Iterator, Sequence

import torch

from .ingest import load_rgb
from .preprocess import PreprocessSpec
from .splits import training_refusal

SPLITS = ("train", "val", "test")


class DataError(ValueError):
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
    """A split manifest (core.splits.Manifest) -> SplitData with absolute paths."""
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


# --------------------------------------------------------------------------------------------- cache
def cache_bytes(n: int, pre: PreprocessSpec) -> int:
    return n * 3 * pre.cache_size ** 2


def memory_budget(device: torch.device, max_cache_gb: float | None) -> int:
    """Bytes the image cache may take: the user's cap, else half of what is free on the device."""
    if max_cache_gb is not None:
        return int(max_cache_gb * 2**30)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free // 2
    try:  # MemAvailable counts reclaimable page cache too, unlike the free-pages count
        with open("/proc/meminfo") as f:
            kib = next(int(line.split()[1]) for line in f if line.startswith("MemAvailable:"))
        return kib * 1024 // 2
    except (OSError, StopIteration, ValueError):
        return 4 * 2**30


def decode(path: str, pre: PreprocessSpec) -> torch.Tensor:
    return pre.to_cache(load_rgb(path))


def build_cache(paths: Sequence[str], pre: PreprocessSpec, device: torch.device, threads: int = 0) -> torch.Tensor:
    """Decode every image once into a uint8 (N, 3, S, S) tensor; Pillow releases the GIL, so threads help."""
    size = pre.cache_size
    cache = torch.empty((len(paths), 3, size, size), dtype=torch.uint8)
    threads = threads or min(8, (os.cpu_count() or 2))

    def work(i: int) -> None:
        cache[i] = decode(paths[i], pre)

    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(work, range(len(paths))))
    return cache.to(device, non_blocking=True) if device.type != "cpu" else cache


class _Decoded(torch.utils.data.Dataset):
    def __init__(self, split: Split, pre: PreprocessSpec):
        self.split, self.pre = split, pre

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, i: int):
        return decode(self.split.paths[i], self.pre), self.split.labels[i]


class BatchSource:
    """uint8 image batches and labels of one split, from the cache or streamed, on the run's device."""

    def __init__(self, split: Split, pre: PreprocessSpec, device: torch.device, batch_size: int,
                 cached: bool, num_workers: int = 2):
        self.split, self.pre, self.device, self.batch_size = split, pre, device, batch_size
        self.labels = torch.tensor(split.labels, dtype=torch.long, device=device)
        self.images = build_cache(split.paths, pre, device) if cached and len(split) else None
        self.num_workers = num_workers

    def __len__(self) -> int:
        return len(self.split)

    def num_batches(self, drop_last: bool = False) -> int:
        n = len(self.split)
        return n // self.batch_size if drop_last and n >= self.batch_size else -(-n // self.batch_size)

    def batches(self, order: torch.Tensor | None = None, drop_last: bool = False
                ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield (uint8 images, labels) in `order` (a permutation) or in file order."""
        n = len(self.split)
        order = torch.arange(n) if order is None else order.cpu()
        stop = self.num_batches(drop_last) * self.batch_size
        if self.images is not None:
            for start in range(0, min(stop, n), self.batch_size):
                idx = order[start:start + self.batch_size].to(self.device)
                yield self.images.index_select(0, idx), self.labels.index_select(0, idx)
            return
        subset = torch.utils.data.Subset(_Decoded(self.split, self.pre), order[:stop].tolist())
        loader = torch.utils.data.DataLoader(subset, batch_size=self.batch_size, shuffle=False,
                                             num_workers=self.num_workers,
                                             pin_memory=self.device.type == "cuda")
        for images, labels in loader:
            yield images.to(self.device, non_blocking=True), labels.to(self.device, non_blocking=True)

