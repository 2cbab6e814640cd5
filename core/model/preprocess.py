"""Preprocessing derived from the model: one spec, saved with every checkpoint, used at train, eval and export.

Images are decoded once into a uint8 cache at `cache_size` (shorter side resized, centre-cropped square).
Evaluation centre-crops `input_size` from it, which equals timm's eval transform (resize to
input_size / crop_pct, centre crop); training takes random crops of the same cached pixels.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch
from PIL import Image

_PIL_FILTERS = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR,
                "nearest": Image.Resampling.NEAREST, "lanczos": Image.Resampling.LANCZOS}


@dataclass(frozen=True)
class PreprocessSpec:
    input_size: int  # the square the network sees
    crop_pct: float  # share of the resized image kept by the centre crop at eval
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str = "bicubic"

    @property
    def cache_size(self) -> int:
        return int(round(self.input_size / self.crop_pct))

    @classmethod
    def from_model(cls, model: torch.nn.Module, entry: Any = None) -> "PreprocessSpec":
        try:
            from timm.data import resolve_model_data_config

            cfg = resolve_model_data_config(model)
            return cls(int(cfg["input_size"][-1]), float(cfg["crop_pct"]), tuple(cfg["mean"]), tuple(cfg["std"]),
                       str(cfg.get("interpolation", "bicubic")))
        except Exception:  # torchvision models carry no timm config: use the catalog entry's
            return cls(entry.input_size, 0.875, tuple(entry.mean), tuple(entry.std), "bilinear")

    def with_input_size(self, size: int | None) -> "PreprocessSpec":
        return self if not size else dataclasses.replace(self, input_size=int(size))

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "cache_size": self.cache_size}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "PreprocessSpec":
        return cls(int(d["input_size"]), float(d["crop_pct"]), tuple(d["mean"]), tuple(d["std"]),
                   d.get("interpolation", "bicubic"))

    # --- the three uses of the same spec
    def to_cache(self, img: Image.Image) -> torch.Tensor:
        """RGB PIL image -> uint8 (3, cache_size, cache_size): shorter side resized, centre crop."""
        size = self.cache_size
        w, h = img.size
        scale = size / min(w, h)
        nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
        img = img.resize((nw, nh), _PIL_FILTERS.get(self.interpolation, Image.Resampling.BICUBIC))
        left, top = (nw - size) // 2, (nh - size) // 2
        img = img.crop((left, top, left + size, top + size))
        return torch.frombuffer(bytearray(img.tobytes()), dtype=torch.uint8).view(size, size, 3).permute(2, 0, 1)

    def center_crop(self, batch: torch.Tensor) -> torch.Tensor:
        """Cached uint8 batch (N, 3, S, S) -> centre crop (N, 3, input_size, input_size), still uint8."""
        s, c = batch.shape[-1], self.input_size
        if s < c:
            return torch.nn.functional.interpolate(batch.float(), size=(c, c), mode="bilinear",
                                                   align_corners=False).round().clamp(0, 255).to(torch.uint8)
        off = (s - c) // 2
        return batch[..., off:off + c, off:off + c]

    def normalize(self, batch: torch.Tensor) -> torch.Tensor:
        """uint8 or [0, 1] float batch -> the normalised float input the network expects."""
        x = batch.float().div_(255.0) if batch.dtype == torch.uint8 else batch.float()
        mean = torch.tensor(self.mean, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=x.device).view(1, 3, 1, 1)
        return (x - mean) / std

    def eval_input(self, batch: torch.Tensor) -> torch.Tensor:
        return self.normalize(self.center_crop(batch))

    def image_to_input(self, img: Image.Image) -> torch.Tensor:
        """One RGB PIL image -> a (1, 3, H, W) network input: the export/serving path."""
        return self.eval_input(self.to_cache(img).unsqueeze(0))
