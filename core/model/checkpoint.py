"""Checkpoints as plain files, each written atomically (temp file + rename), so a kill never leaves half a file.

- `<name>.safetensors` + `<name>.json`: model weights, and what is needed to use them (architecture,
  class names, preprocessing, the run's config). This is what evaluation and export read.
- `last_state.pt`: the full training state for resuming (optimizer, schedulers, scaler, counters, RNG);
  tensors and plain containers only, loaded back with `weights_only=True`.
"""
from __future__ import annotations

import json
import os
import random
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from core.errors import StudioError
from core.files import atomic_write
from core.model.backbones import load_backbone
from core.model.preprocess import PreprocessSpec
from core.model.transfer import TransferModel


class CheckpointError(StudioError, ValueError):
    """A checkpoint file is missing, truncated or not what it claims to be; the message names the file."""


def _atomic(path: str, write, size: int = 0) -> None:
    """Write through a temporary file, fsync'd, renamed over `path`; DiskFull (naming the folder, what is free
    and what is needed) before writing when `size` bytes do not fit, or when the disk fills up meanwhile."""
    atomic_write(path, write, size)


def _nbytes(obj) -> int:
    """Bytes of the tensors in a (nested) state: what a checkpoint of it needs on disk, about."""
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(_nbytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(_nbytes(v) for v in obj)
    return 0


def save_model(model: torch.nn.Module, path: str, meta: dict[str, Any]) -> str:
    """Weights to `path` (.safetensors) and `meta` beside it as JSON; returns the weights path."""
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    _atomic(path, lambda tmp: save_file(state, tmp), _nbytes(state))
    meta_path = os.path.splitext(path)[0] + ".json"
    text = json.dumps(meta, indent=2)
    _atomic(meta_path, lambda tmp: _write_text(tmp, text), len(text))
    return path


def copy_model(src: str, dst: str) -> str:
    """Copy a saved model (weights and its JSON) to another name, each file atomically."""
    import shutil

    for a, b in ((src, dst), (os.path.splitext(src)[0] + ".json", os.path.splitext(dst)[0] + ".json")):
        _atomic(b, lambda tmp, a=a: shutil.copyfile(a, tmp), os.path.getsize(a))
    return dst


def _write_text(path: str, text: str) -> None:
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)


def read_meta(weights_path: str) -> dict[str, Any]:
    path = os.path.splitext(weights_path)[0] + ".json"
    try:
        with open(path, encoding="utf-8") as f:
            meta = json.load(f)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: missing; a checkpoint needs its .json beside the weights") from None
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: damaged or not a checkpoint's description ({exc})") from None
    if not isinstance(meta, dict) or not {"classes", "config", "preprocess", "architecture_name"} <= meta.keys():
        raise CheckpointError(f"{path}: not a checkpoint's description (classes, config, preprocess missing)")
    return meta


def read_weights(weights_path: str, device: str = "cpu") -> dict[str, torch.Tensor]:
    """The tensors of a .safetensors file; CheckpointError when it is missing, truncated or damaged."""
    try:
        return load_file(weights_path, device=device)
    except FileNotFoundError:
        raise CheckpointError(f"{weights_path}: missing") from None
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        size = os.path.getsize(weights_path) if os.path.exists(weights_path) else 0
        raise CheckpointError(f"{weights_path}: damaged or truncated ({size} bytes; {exc}). Evaluate another "
                              "checkpoint of the run (probe.safetensors, best_tuned.safetensors) or retrain") from None


def load_model(weights_path: str):
    """Rebuild a trained TransferModel from its checkpoint (no hub, no pretrained download)."""

    meta = read_meta(weights_path)
    cfg = meta["config"]
    backbone = load_backbone(meta["architecture_name"], pretrained=False)
    model = TransferModel(backbone, len(meta["classes"]), cfg["adapter_layers"], cfg["adapter_dim"], cfg["dropout"])
    try:
        model.load_state_dict(read_weights(weights_path))
    except RuntimeError as exc:  # tensors of another architecture or class count
        raise CheckpointError(f"{weights_path}: its weights do not fit its description ({str(exc)[:300]})") from None
    model.eval()
    return model, PreprocessSpec.from_dict(meta["preprocess"]), meta


def rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": _numpy_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _numpy_state() -> tuple:
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached


def save_train_state(path: str, state: dict[str, Any]) -> None:
    _atomic(path, lambda tmp: torch.save(state, tmp), _nbytes(state))


def load_train_state(path: str) -> dict[str, Any]:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as exc:  # truncated zip, bad pickle: the state cannot be resumed from
        raise CheckpointError(f"{path}: damaged or truncated ({str(exc)[:200]}); the run cannot resume from it. "
                              "Its best checkpoint can still be evaluated; start a new run to train further") from None
