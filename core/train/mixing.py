"""Mixup and CutMix: a training batch mixed with a shuffled copy of itself, and the labels' shares."""
from __future__ import annotations

import math

import numpy as np
import torch


def mix_batch(x: torch.Tensor, y: torch.Tensor, mixup: float, cutmix: float, generator: torch.Generator
              ) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Mixup (Zhang et al. 2018) or CutMix (Yun et al. 2019) of a batch with a shuffled copy of itself.

    Returns (images, the second label of each image, the first label's share lam). lam is 1.0 (nothing
    mixed) when both are off. With both on, each batch takes one of the two at random. Draws come from
    `generator`, so a resumed epoch mixes the same way.
    """
    if not (mixup or cutmix) or len(y) < 2:
        return x, y, 1.0
    seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator, device=generator.device))
    rng = np.random.default_rng(seed)
    use_cutmix = bool(cutmix) and (not mixup or rng.random() < 0.5)
    alpha = cutmix if use_cutmix else mixup
    lam = float(rng.beta(alpha, alpha))
    perm = torch.as_tensor(rng.permutation(len(y)), device=x.device)
    if not use_cutmix:
        return x * lam + x[perm] * (1 - lam), y[perm], lam
    h, w = x.shape[-2:]
    ch, cw = int(h * math.sqrt(1 - lam)), int(w * math.sqrt(1 - lam))
    cy, cx = int(rng.integers(0, h)), int(rng.integers(0, w))
    top, bottom = max(0, cy - ch // 2), min(h, cy + ch // 2)
    left, right = max(0, cx - cw // 2), min(w, cx + cw // 2)
    x = x.clone()
    x[..., top:bottom, left:right] = x[perm][..., top:bottom, left:right]
    return x, y[perm], 1.0 - (bottom - top) * (right - left) / (h * w)
