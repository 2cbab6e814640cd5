"""The decode-once image cache: every image decoded and resized once per run into a uint8 tensor at the
preprocessing spec's `cache_size` (on the GPU when training there and it fits), and the memory it may take
(`memory_budget`, from `available_memory`, which core.train.memory's free-memory check shares).
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from typing import Sequence

import torch

from core.data.images import load_rgb
from core.model.preprocess import PreprocessSpec


# --------------------------------------------------------------------------------------------- cache
def cache_bytes(n: int, pre: PreprocessSpec) -> int:
    return n * 3 * pre.cache_size ** 2


def available_memory(device: torch.device) -> int | None:
    """Bytes free on `device` now: CUDA's free memory, elsewhere the system's MemAvailable (which counts
    reclaimable page cache too, unlike the free-pages count); None when /proc/meminfo cannot be read.
    CUDA's errors propagate."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        with open("/proc/meminfo") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("MemAvailable:")) * 1024
    except (OSError, StopIteration, ValueError):
        return None


def memory_budget(device: torch.device, max_cache_gb: float | None) -> int:
    """Bytes the image cache may take: the user's cap, else half of what is free on the device."""
    if max_cache_gb is not None:
        return int(max_cache_gb * 2**30)
    free = available_memory(device)
    return free // 2 if free is not None else 4 * 2**30


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
