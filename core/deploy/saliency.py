"""Where the model looked: Grad-CAM on the trunk's last feature map (the gradient of the class logit, averaged
per channel, weighting the channels; ReLU), and an overlay of it on the image the network saw (the evaluation
crop). Trunks without a spatial feature map get the input-gradient saliency (|d logit / d pixel|, max over
channels, smoothed) instead; `method` says which was used.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from core.model.preprocess import PreprocessSpec


@dataclass(frozen=True)
class Saliency:
    heat: np.ndarray  # (H, W) in [0, 1], at the network's input size
    crop: Image.Image  # the evaluation crop the network saw, RGB
    class_index: int
    method: str  # "Grad-CAM (layer ...)" or "input gradient"

    def overlay(self, alpha: float = 0.45) -> Image.Image:
        """The crop with the heat map on top (red: where the class's evidence is)."""
        heat = np.clip(self.heat, 0, 1)
        colour = np.stack([heat, 0.25 * heat, 1.0 - heat], axis=-1) * 255  # blue (cold) -> red (hot)
        base = np.asarray(self.crop, dtype=np.float32)
        weight = alpha * (0.35 + 0.65 * heat[..., None])
        return Image.fromarray(np.clip(base * (1 - weight) + colour * weight, 0, 255).astype(np.uint8))


def _last_spatial_module(trunk: torch.nn.Module, x: torch.Tensor) -> str | None:
    """Name of the last module whose output is a (N, C, h, w) map with h, w > 1: Grad-CAM's layer."""
    shapes: dict[str, tuple] = {}
    hooks = [m.register_forward_hook(lambda _m, _i, out, name=name: shapes.__setitem__(name, tuple(out.shape))
                                     if isinstance(out, torch.Tensor) else None)
             for name, m in trunk.named_modules() if name and not list(m.children())]
    try:
        with torch.no_grad():
            trunk(x)
    finally:
        for h in hooks:
            h.remove()
    spatial = [name for name, shape in shapes.items() if len(shape) == 4 and shape[2] > 1 and shape[3] > 1]
    return spatial[-1] if spatial else None


def saliency(model: torch.nn.Module, pre: PreprocessSpec, rgb: Image.Image, class_index: int | None = None
             ) -> Saliency:
    """The saliency of `class_index` (default: the predicted class) for one RGB image, in fp32 on the CPU."""
    model = model.eval()
    cached = pre.to_cache(rgb).unsqueeze(0)
    crop_u8 = pre.center_crop(cached)[0]
    crop = Image.fromarray(crop_u8.permute(1, 2, 0).contiguous().numpy())
    x = pre.normalize(crop_u8.unsqueeze(0)).requires_grad_(True)
    layer = _last_spatial_module(model.trunk, x.detach())
    store: dict[str, torch.Tensor] = {}
    handle = None
    if layer is not None:
        module = model.trunk.get_submodule(layer)

        def keep(_m, _i, out):
            out.retain_grad()
            store["map"] = out

        handle = module.register_forward_hook(keep)
    try:
        with torch.enable_grad():
            logits = model(x)
            index = int(logits.argmax(1)) if class_index is None else int(class_index)
            model.zero_grad(set_to_none=True)
            logits[0, index].backward()
    finally:
        if handle is not None:
            handle.remove()
    size = pre.input_size
    if "map" in store and store["map"].grad is not None:
        fmap, grad = store["map"].detach()[0], store["map"].grad.detach()[0]
        cam = torch.relu((grad.mean(dim=(1, 2), keepdim=True) * fmap).sum(0))[None, None]
        heat = torch.nn.functional.interpolate(cam, size=(size, size), mode="bilinear", align_corners=False)[0, 0]
        method = f"Grad-CAM (layer {layer})"
    else:
        g = x.grad.detach().abs().amax(dim=1, keepdim=True)
        heat = torch.nn.functional.avg_pool2d(g, 5, stride=1, padding=2)[0, 0]
        method = "input gradient"
    heat = heat.numpy().astype(np.float32)
    span = float(heat.max() - heat.min())
    heat = (heat - heat.min()) / span if span > 0 else np.zeros_like(heat)
    return Saliency(heat, crop, index, method)
