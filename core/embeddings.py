"""Pretrained embeddings of image files: a frozen trunk's pooled features at the evaluation crop.

Used where the engine needs to know which images look alike before any training (related images for
the split, core.related), cached beside the stored dataset so each image is embedded once per model
and size.
"""
from __future__ import annotations

import os
from typing import Sequence

import numpy as np
import torch

from .backbones import load_backbone
from .baselines import embed
from .data import build_cache
from .train import resolve_amp, resolve_device

CACHE_PREFIX = "embeddings"


def image_embeddings(paths: Sequence[str], model: str = "efficientnet_lite0", size: int = 128,
                     device: str = "auto", batch_size: int = 64) -> np.ndarray:
    """(N, D) float32 features of the image files, in order (frozen pretrained trunk, no augmentation)."""
    backbone = load_backbone(model)
    pre = backbone.preprocess.with_input_size(size)
    dev = resolve_device(device)
    out = []
    for start in range(0, len(paths), 2048):  # a bounded cache: decode, embed, drop
        cache = build_cache(list(paths[start:start + 2048]), pre, dev)
        out.append(embed(backbone.trunk, pre, cache, dev, resolve_amp("auto", dev), batch_size))
    return np.concatenate(out) if out else np.zeros((0, backbone.num_features), np.float32)


def cached_embeddings(folder: str, keys: Sequence[str], paths: Sequence[str], model: str, size: int,
                      device: str = "auto") -> np.ndarray:
    """`image_embeddings` of `paths`, remembered in `folder` under their content `keys` (sha256s): images
    embedded before are read back, only new ones are computed. float16 on disk (half the size, and far
    more precise than the similarities they feed)."""
    file = os.path.join(folder, f"{CACHE_PREFIX}-{model}-{size}.npz")
    known: dict[str, np.ndarray] = {}
    if os.path.exists(file):
        try:
            with np.load(file) as saved:
                known = dict(zip(saved["keys"].tolist(), saved["x"]))
        except (OSError, ValueError, KeyError):
            known = {}  # a damaged cache is recomputed
    missing = [i for i, k in enumerate(keys) if k not in known]
    if missing:
        fresh = image_embeddings([paths[i] for i in missing], model, size, device)
        for i, row in zip(missing, fresh):
            known[keys[i]] = row.astype(np.float16)
        _save_npz(file, np.array(list(known)), np.stack(list(known.values())))
    return np.stack([known[k] for k in keys]).astype(np.float32) if keys else np.zeros((0, 0), np.float32)


def _save_npz(file: str, keys: np.ndarray, x: np.ndarray) -> None:
    tmp = f"{file}.{os.getpid()}.tmp.npz"
    try:
        np.savez(tmp, keys=keys, x=x)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, file)
    except OSError:
        if os.path.exists(tmp):
            os.remove(tmp)
        # a cache that cannot be written (read-only store) only costs recomputation next time
