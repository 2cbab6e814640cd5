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
import tempfile
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file


def _atomic(path: str, write) -> None:
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=os.path.basename(path))
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def save_model(model: torch.nn.Module, path: str, meta: dict[str, Any]) -> str:
    """Weights to `path` (.safetensors) and `meta` beside it as JSON; returns the weights path."""
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    _atomic(path, lambda tmp: save_file(state, tmp))
    meta_path = os.path.splitext(path)[0] + ".json"
    _atomic(meta_path, lambda tmp: open(tmp, "w").write(json.dumps(meta, indent=2)))
    return path


def copy_model(src: str, dst: str) -> str:
    """Copy a saved model (weights and its JSON) to another name, each file atomically."""
    import shutil

    for a, b in ((src, dst), (os.path.splitext(src)[0] + ".json", os.path.splitext(dst)[0] + ".json")):
        _atomic(b, lambda tmp, a=a: shutil.copyfile(a, tmp))
    return dst


def read_meta(weights_path: str) -> dict[str, Any]:
    with open(os.path.splitext(weights_path)[0] + ".json") as f:
        return json.load(f)


def load_model(weights_path: str):
    """Rebuild a trained TransferModel from its checkpoint (no hub, no pretrained download)."""
    from .backbones import load_backbone
    from .model import TransferModel
    from .preprocess import PreprocessSpec

    meta = read_meta(weights_path)
    cfg = meta["config"]
    backbone = load_backbone(meta["architecture_name"], pretrained=False)
    model = TransferModel(backbone, len(meta["classes"]), cfg["adapter_layers"], cfg["adapter_dim"], cfg["dropout"])
    model.load_state_dict(load_file(weights_path, device="cpu"))
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
    _atomic(path, lambda tmp: torch.save(state, tmp))


def load_train_state(path: str) -> dict[str, Any]:
    return torch.load(path, map_location="cpu", weights_only=True)
