"""uint8 image batches of one split, sliced from the cache or streamed through a DataLoader when the cache would
not fit: the same batches either way, so augmentation and evaluation are one code path.
"""
from __future__ import annotations

from typing import Iterator

import torch

from core.data.split_data import Split
from core.model.cache import build_cache, decode
from core.model.preprocess import PreprocessSpec


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
