"""Pretrained embeddings of image files: a frozen trunk's pooled features at the evaluation crop.

Used where the engine needs to know which images look alike before any training (related images for
the split, core.data.related), cached beside the stored dataset so each image is embedded once per model
and size.
"""
from __future__ import annotations

import os
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from core.model.backbones import load_backbone
from core.model.cache import build_cache
from core.model.preprocess import PreprocessSpec
from core.runtime import resolve_amp, resolve_device

CACHE_PREFIX = "embeddings"


def image_embeddings(paths: Sequence[str], model: str = "efficientnet_lite0", size: int = 128,
                     device: str = "auto", batch_size: int = 64) -> np.ndarray:
    """(N, D) float32 features of the image files, in order (frozen pretrained trunk, no augmentation)."""
    backbone = load_backbone(model)
    pre = backbone.preprocess.with_input_size(size)
    dev = resolve_device(device)
    # fp32 on the CPU: the groups these embeddings decide must not depend on whether the CPU has bf16 (measured:
    # an AMD host without it and an Intel host with it split 7 vs 5 of 36 planted objects differently)
    amp = resolve_amp("auto", dev) if dev.type == "cuda" else None
    out = []
    for start in range(0, len(paths), 2048):  # a bounded cache: decode, embed, drop
        cache = build_cache(list(paths[start:start + 2048]), pre, dev)
        out.append(embed(backbone.trunk, pre, cache, dev, amp, batch_size))
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


# ------------------------------------------------------------------------------------------- features
@torch.inference_mode()
def embed(trunk: torch.nn.Module, pre: PreprocessSpec, images: torch.Tensor, device: torch.device,
          amp_dtype: torch.dtype | None = None, batch_size: int = 32, cache_size: int | None = None,
          channels_last: bool = True) -> np.ndarray:
    """Frozen features of cached uint8 images (N, 3, S, S): eval crop, normalise, trunk, (N, F) float32.

    `cache_size`: resize each cached batch to this side first (antialiased bicubic), so a cache decoded at
    one size serves a model whose preprocessing wants another.
    """
    trunk = trunk.to(device).eval()
    if channels_last:
        trunk = trunk.to(memory_format=torch.channels_last)
    out = []
    for start in range(0, len(images), batch_size):
        batch = images[start:start + batch_size].to(device)
        if cache_size and cache_size != batch.shape[-1]:
            batch = resize_uint8(batch, cache_size)
        x = pre.eval_input(batch)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
            out.append(trunk(x).float().cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


def resize_uint8(batch: torch.Tensor, size: int) -> torch.Tensor:
    x = F.interpolate(batch.float(), size=(size, size), mode="bicubic", antialias=True, align_corners=False)
    return x.round_().clamp_(0, 255).to(torch.uint8)
