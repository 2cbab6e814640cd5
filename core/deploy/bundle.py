"""An exported bundle: one folder a model leaves the studio in, read back for the registry and the server.

    <bundle>/bundle.json          what the folder holds: status ("ok" or "failed"), the run, classes, the
                                  preprocessing record, the model file and its format, parity, every file's sha256
    <bundle>/model.onnx | .pt2    the network: input "input" (N, 3, H, W) float32, outputs "logits", "embedding"
    <bundle>/checkpoint.*         the PyTorch weights it was exported from (saliency, re-export)
    <bundle>/card.md              the model card        <bundle>/predict.py   runs it with onnxruntime alone

An export that failed its parity check stays on disk with status "failed" (so the figure can be read) and
``Bundle.load`` refuses it unless asked for failed ones too.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from core.deploy import bundle_predict
from core.errors import StudioError

BUNDLE_FORMAT = "transfer-studio-bundle/1"
INFO_FILE = "bundle.json"


class BundleError(StudioError, ValueError):
    """A bundle folder is missing, damaged, failed its parity check, or is not the format asked for."""


def sha256_file(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass(frozen=True)
class Bundle:
    path: str                 # the folder, absolute
    info: dict[str, Any]      # bundle.json

    @classmethod
    def load(cls, path: str, allow_failed: bool = False) -> "Bundle":
        path = os.path.abspath(path)
        info_path = os.path.join(path, INFO_FILE)
        try:
            with open(info_path, encoding="utf-8") as f:
                info = json.load(f)
        except FileNotFoundError:
            raise BundleError(f"{path}: not an exported bundle (no {INFO_FILE}); export a run with "
                              "`python -m core export RUN_ID`") from None
        except (OSError, ValueError) as exc:
            raise BundleError(f"{info_path}: damaged ({exc})") from None
        if not isinstance(info, dict) or info.get("format") != BUNDLE_FORMAT:
            raise BundleError(f"{info_path}: not a {BUNDLE_FORMAT} bundle description")
        if info.get("status") != "ok" and not allow_failed:
            raise BundleError(f"{path}: this export failed its parity check and must not be used "
                              f"({info.get('error') or 'see parity in bundle.json'})")
        files = info.get("files", {})
        outside = [name for name in files if os.path.dirname(os.path.normpath(name)) or name in (".", "..")]
        if outside:
            raise BundleError(f"{info_path}: names files outside the bundle folder ({', '.join(outside[:3])})")
        missing = [name for name in files if not os.path.isfile(os.path.join(path, name))]
        if missing:
            raise BundleError(f"{path}: files missing from the bundle: {', '.join(missing)}")
        return cls(path, info)

    # --- what it holds
    @property
    def classes(self) -> tuple[str, ...]:
        return tuple(self.info["classes"])

    @property
    def preprocessing(self) -> dict[str, Any]:
        return self.info["preprocessing"]

    @property
    def model_format(self) -> str:  # "onnx" or "pt2"
        return self.info["model_format"]

    @property
    def model_path(self) -> str:
        return os.path.join(self.path, self.info["model_file"])

    @property
    def checkpoint_path(self) -> str:
        return os.path.join(self.path, "checkpoint.safetensors")

    def verify(self) -> None:
        """Every file's sha256 against bundle.json: BundleError naming the first file that changed."""
        for name, digest in self.info.get("files", {}).items():
            if sha256_file(os.path.join(self.path, name)) != digest:
                raise BundleError(f"{os.path.join(self.path, name)}: changed since export (sha256 differs)")

    # --- using it
    def preprocess(self, rgb: Image.Image) -> np.ndarray:
        """One RGB image (core.data.images.load_rgb's output) -> (3, H, W) float32: the bundle's own rule."""
        return bundle_predict.preprocess(rgb, self.preprocessing)

    def onnx_session(self, threads: int = 0, spinning: bool = True):
        """An ONNX Runtime CPU session of the model; BundleError for a pt2 bundle or a file ORT refuses.
        `spinning` False: idle intra-op threads sleep instead of spinning (a server shares its cores with its
        own request handling)."""
        if self.model_format != "onnx":
            raise BundleError(f"{self.path}: a {self.model_format} bundle; serving needs an ONNX export "
                              "(`python -m core export RUN_ID --format onnx`)")
        import onnxruntime as ort

        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
        if not spinning:
            opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            return ort.InferenceSession(self.model_path, opts, providers=["CPUExecutionProvider"])
        except Exception as exc:  # noqa: BLE001 - ORT raises its own exception types for a bad file
            raise BundleError(f"{self.model_path}: ONNX Runtime cannot load it ({str(exc)[:300]})") from None


class OnnxModel:
    """A bundle's ONNX model ready to run: `run(batch)` -> (logits, embedding), thread-safe (ORT sessions are)."""

    def __init__(self, bundle: Bundle, threads: int = 0, spinning: bool = True):
        self.bundle = bundle
        self.session = bundle.onnx_session(threads, spinning)

    def run(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return bundle_predict.run(self.session, np.ascontiguousarray(batch, dtype=np.float32))

    def probabilities(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(softmax probabilities, embedding) of a batch."""
        logits, embedding = self.run(batch)
        return bundle_predict.softmax(logits.astype(np.float64)), embedding
