"""Common image corruptions at three severities, for measuring how robust a model is.

The corruptions and their strengths follow ImageNet-C (Hendrycks & Dietterich, ICLR 2019): our severities
1, 2, 3 are its levels 1, 3 and 5. They are applied to the network's input view (the uint8 centre crop at
the model's input size), after the checkpoint's own preprocessing has cropped it and before
normalisation, so every model is corrupted the same way whatever its input size. Blur is defined at
224 px and scaled with the input side, so it removes the same share of the detail at any size.

Every function takes and returns a uint8 batch (N, 3, H, W) and is deterministic for a given seed.
"""
from __future__ import annotations

import io
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from core.errors import StudioError

SEVERITIES = (1, 2, 3)
# name -> the parameter at severities 1, 2, 3 (ImageNet-C levels 1, 3, 5)
PARAMETERS: dict[str, tuple[float, float, float]] = {
    "gaussian_noise": (0.08, 0.18, 0.38),  # noise standard deviation, in units of the [0, 1] pixel range
    "gaussian_blur": (1.0, 3.0, 6.0),  # blur sigma in pixels of a 224 px image
    "brightness": (0.1, 0.3, 0.5),  # added to every pixel in the [0, 1] range (ImageNet-C adds to HSV value)
    "contrast": (0.4, 0.2, 0.05),  # factor pulling each pixel toward the image's mean
    "jpeg": (25, 15, 7),  # JPEG quality
}
CORRUPTIONS = tuple(PARAMETERS)


class CorruptionError(StudioError, ValueError):
    """An unknown corruption or severity; the message lists the valid ones."""


def parameter(name: str, severity: int) -> float:
    if name not in PARAMETERS:
        raise CorruptionError(f"unknown corruption {name!r}; choose from {', '.join(CORRUPTIONS)}")
    if severity not in SEVERITIES:
        raise CorruptionError(f"severity must be one of {SEVERITIES}, got {severity!r}")
    return PARAMETERS[name][severity - 1]


def corrupt(images: torch.Tensor, name: str, severity: int, seed: int = 0) -> torch.Tensor:
    """A corrupted copy of a uint8 (N, 3, H, W) batch; the input is not modified."""
    value = parameter(name, severity)
    if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] != 3:
        raise CorruptionError(f"expected a uint8 (N, 3, H, W) batch, got {images.dtype} {tuple(images.shape)}")
    return _FUNCTIONS[name](images, value, seed)


def corruption_fn(name: str, severity: int, seed: int = 0) -> Callable[[torch.Tensor], torch.Tensor]:
    """`corrupt` with its arguments bound: a transform for evaluation batches."""
    parameter(name, severity)  # fail now, not at the first batch
    return lambda images: corrupt(images, name, severity, seed)


# ------------------------------------------------------------------------------------ the corruptions
def _to_float(images: torch.Tensor) -> torch.Tensor:
    return images.float().div_(255.0)


def _to_uint8(x: torch.Tensor) -> torch.Tensor:
    return x.clamp_(0.0, 1.0).mul_(255.0).round_().to(torch.uint8)


def gaussian_noise(images: torch.Tensor, std: float, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator(device=images.device).manual_seed(seed)
    noise = torch.randn(images.shape, generator=generator, device=images.device)
    return _to_uint8(_to_float(images) + noise * std)


def gaussian_blur(images: torch.Tensor, sigma_at_224: float, seed: int = 0) -> torch.Tensor:
    sigma = sigma_at_224 * images.shape[-1] / 224.0
    radius = max(1, int(np.ceil(3 * sigma)))
    radius = min(radius, images.shape[-1] - 1, images.shape[-2] - 1)  # reflect padding needs pad < size
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float32, device=images.device)
    kernel = torch.exp(-0.5 * (offsets / sigma) ** 2)
    kernel = kernel / kernel.sum()
    x = _to_float(images)
    n, c, h, w = x.shape
    x = F.pad(x, (radius, radius, 0, 0), mode="reflect")
    x = F.conv2d(x.view(n * c, 1, h, -1), kernel.view(1, 1, 1, -1)).view(n, c, h, w)
    x = F.pad(x, (0, 0, radius, radius), mode="reflect")
    x = F.conv2d(x.view(n * c, 1, -1, w), kernel.view(1, 1, -1, 1)).view(n, c, h, w)
    return _to_uint8(x)


def brightness(images: torch.Tensor, shift: float, seed: int = 0) -> torch.Tensor:
    return _to_uint8(_to_float(images) + shift)


def contrast(images: torch.Tensor, factor: float, seed: int = 0) -> torch.Tensor:
    x = _to_float(images)
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return _to_uint8((x - mean) * factor + mean)


def jpeg(images: torch.Tensor, quality: float, seed: int = 0) -> torch.Tensor:
    out = torch.empty_like(images, device="cpu")
    pixels = images.permute(0, 2, 3, 1).contiguous().cpu().numpy()
    for i, hwc in enumerate(pixels):
        buffer = io.BytesIO()
        Image.fromarray(hwc).save(buffer, format="JPEG", quality=int(quality))
        buffer.seek(0)
        out[i] = torch.from_numpy(np.array(Image.open(buffer).convert("RGB"))).permute(2, 0, 1)
    return out.to(images.device)


_FUNCTIONS: dict[str, Callable[[torch.Tensor, float, int], torch.Tensor]] = {
    "gaussian_noise": gaussian_noise, "gaussian_blur": gaussian_blur, "brightness": brightness,
    "contrast": contrast, "jpeg": jpeg,
}
