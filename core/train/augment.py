"""Batched augmentation on cached uint8 images: one affine warp per batch, on whatever device holds them.

Random-resized-crop, flips and rotation are a single `affine_grid` + `grid_sample` call; colour jitter,
noise and blur are elementwise or a depthwise conv. Everything draws from an explicit generator, so a
run (and a resumed run) sees the same augmentations.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from core.config import AugmentSpec
from core.model.preprocess import PreprocessSpec


def augment_batch(batch: torch.Tensor, spec: AugmentSpec, pre: PreprocessSpec,
                  generator: torch.Generator) -> torch.Tensor:
    """uint8 (N, 3, S, S) cached images -> normalised float (N, 3, input, input) training inputs."""
    n, device = batch.shape[0], batch.device
    out = pre.input_size

    def rand(*shape: int) -> torch.Tensor:  # uniform [0, 1), drawn on the generator's device
        return torch.rand(*shape, generator=generator, device=generator.device).to(device)

    # 1. geometry: a crop of random area share in [scale_min, 1] at a random position, flips, rotation
    area = spec.scale_min + (1.0 - spec.scale_min) * rand(n)
    log_ratio = (rand(n) - 0.5) * 2 * math.log(4 / 3)
    ratio = torch.exp(log_ratio)
    sx = torch.sqrt(area * ratio).clamp(max=1.0)
    sy = torch.sqrt(area / ratio).clamp(max=1.0)
    tx = (rand(n) * 2 - 1) * (1 - sx)
    ty = (rand(n) * 2 - 1) * (1 - sy)
    flip_x = torch.where(rand(n) < 0.5, -1.0, 1.0) if spec.hflip else torch.ones(n, device=device)
    flip_y = torch.where(rand(n) < 0.5, -1.0, 1.0) if spec.vflip else torch.ones(n, device=device)
    angle = (rand(n) * 2 - 1) * math.radians(spec.rotation_deg)
    cos, sin = torch.cos(angle), torch.sin(angle)
    # theta = [R(angle) @ diag(sx * flip_x, sy * flip_y) | (tx, ty)], mapping output to source coordinates
    ax, ay = sx * flip_x, sy * flip_y
    theta = torch.stack([
        torch.stack([cos * ax, -sin * ay, tx], dim=1),
        torch.stack([sin * ax, cos * ay, ty], dim=1),
    ], dim=1)
    grid = F.affine_grid(theta, [n, 3, out, out], align_corners=False)
    x = F.grid_sample(batch.float().div_(255.0), grid, mode="bilinear", padding_mode="reflection",
                      align_corners=False)
    # 2. photometric: brightness and contrast jitter per image
    if spec.brightness > 0:
        x = x * (1 + (rand(n, 1, 1, 1) * 2 - 1) * spec.brightness)
    if spec.contrast > 0:
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        x = (x - mean) * (1 + (rand(n, 1, 1, 1) * 2 - 1) * spec.contrast) + mean
    # 3. blur a random share of the images, then noise
    if spec.blur_prob > 0:
        kernel = torch.tensor([1.0, 2.0, 1.0], device=device)
        kernel = (kernel[:, None] * kernel[None, :] / 16).expand(3, 1, 3, 3)
        blurred = F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), kernel, groups=3)
        x = torch.where(rand(n, 1, 1, 1) < spec.blur_prob, blurred, x)
    if spec.noise_std > 0:
        noise = torch.randn(x.shape, generator=generator, device=generator.device).to(device)
        x = x + noise * spec.noise_std
    return pre.normalize(x.clamp_(0.0, 1.0))


def preview_grid(images: list, pre: PreprocessSpec, spec: AugmentSpec, per_image: int = 4, seed: int = 0
                 ) -> np.ndarray:
    """Augmented samples for previewing a spec: one row per input image, `per_image` variants each.

    `images` are RGB PIL images; returns a uint8 (rows*input, cols*input, 3) array, the first column
    being the un-augmented evaluation view, so the effect of the spec is seen against the original.
    """

    cached = torch.stack([pre.to_cache(img) for img in images])
    generator = torch.Generator().manual_seed(seed)
    mean = torch.tensor(pre.mean).view(1, 3, 1, 1)
    std = torch.tensor(pre.std).view(1, 3, 1, 1)
    columns = [pre.eval_input(cached)] + [augment_batch(cached, spec, pre, generator) for _ in range(per_image)]
    pixels = [((c * std + mean).clamp(0, 1) * 255).round().to(torch.uint8) for c in columns]
    grid = torch.stack(pixels, dim=1)  # (rows, cols, 3, H, W)
    rows, cols, _, h, w = grid.shape
    return grid.permute(0, 3, 1, 4, 2).reshape(rows * h, cols * w, 3).numpy()
