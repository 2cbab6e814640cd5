"""Predictions outside the server: the Predict page (and plain Python) classifying uploaded images with a registry
model (its ONNX bundle, exactly as the server runs it) or a run's checkpoint (PyTorch, as evaluation runs it),
logging each prediction in the workspace's prediction log so feedback joins it, and saying where the model
looked (core.deploy.saliency, on the PyTorch weights the bundle carries).

A model is named by a registry ref ("name", "name@alias", "name:3") or "run:<run id>".
"""
from __future__ import annotations

import hashlib
import io
import os
import time
from dataclasses import asdict, dataclass
from typing import Any, Sequence

import numpy as np
import torch
from PIL import Image

from core.data.images import load_rgb
from core.data.limits import IngestLimits
from core.deploy import bundle_predict
from core.deploy.bundle import OnnxModel
from core.deploy.predlog import PredictionLog
from core.deploy.reference import brightness, file_colour_mode
from core.deploy.registry import Registry
from core.deploy.saliency import Saliency, saliency
from core.evaluate.evaluation import best_checkpoint
from core.model.checkpoint import load_model
from core.runs.store import RunStore
from core.workspace import Workspace

RUN_PREFIX = "run:"


@dataclass(frozen=True)
class Prediction:
    id: str  # the prediction log's id: feedback names it
    name: str  # the file's name as uploaded
    width: int
    height: int
    predicted: str
    confidence: float
    top_k: tuple[tuple[str, float], ...]
    latency_ms: float  # preprocessing and the forward pass
    model: str
    version: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _named(name: str, data: bytes) -> io.BytesIO:
    """The bytes as a file named as uploaded, so a decoding error names the file."""
    stream = io.BytesIO(data)
    stream.name = name
    return stream


class Predictor:
    """One model, loaded once: `predict` images, `explain` one, `feedback` on a prediction."""

    def __init__(self, workspace: Workspace, ref: str, top_k: int = 5):
        self.workspace, self.ref, self.top_k = workspace, ref.strip(), top_k
        self.log = PredictionLog.for_workspace(workspace.root)
        if self.ref.startswith(RUN_PREFIX):
            run_id = self.ref[len(RUN_PREFIX):]
            weights = best_checkpoint(RunStore(workspace.runs_dir), run_id)
            self.model_name, self.version, self.onnx = self.ref, 0, None
            self.torch_model, self.pre, meta = load_model(weights)
            self.classes = tuple(meta["classes"])
            self.source = f"run {run_id} (PyTorch checkpoint)"
        else:
            version = Registry(os.path.join(workspace.root, "registry")).resolve(self.ref)
            bundle = version.bundle()
            self.model_name, self.version = version.name, int(version.version)
            self.onnx = OnnxModel(bundle)
            self.bundle = bundle
            self.classes = bundle.classes
            self.torch_model, self.pre, _ = load_model(bundle.checkpoint_path)  # for saliency only
            self.source = f"{version.name} version {version.version} (ONNX bundle)"
        self.log.set_classes(self.model_name, self.version, self.classes)

    # ---------------------------------------------------------------------------------------- predict
    def _forward(self, rgb: Image.Image) -> tuple[np.ndarray, np.ndarray]:
        """(probabilities, embedding) of one image, by the model's own path."""
        if self.onnx is not None:
            probs, emb = self.onnx.probabilities(self.bundle.preprocess(rgb)[None])
            return probs[0], emb[0]
        with torch.inference_mode():
            x = self.pre.image_to_input(rgb)
            features = self.torch_model.forward_features(x)
            logits = self.torch_model.head(features).float().numpy().astype(np.float64)
        return bundle_predict.softmax(logits)[0], features[0].float().numpy()

    def predict(self, files: Sequence[tuple[str, bytes]], max_pixels: int | None = None) -> list[Prediction]:
        """Classify (name, bytes) images and log each prediction; an undecodable one raises core.data's
        ImageError (a StudioError naming the file) before anything is logged."""
        limit = max_pixels or IngestLimits().max_image_pixels
        decoded = [(name, data, load_rgb(_named(name, data), max_pixels=limit)) for name, data in files]
        out, rows = [], []
        for name, data, rgb in decoded:
            started = time.perf_counter()
            probs, emb = self._forward(rgb)
            latency = (time.perf_counter() - started) * 1000
            order = np.argsort(-probs)[: self.top_k]
            top = tuple((self.classes[int(i)], float(probs[i])) for i in order)
            row = {"model": self.model_name, "version": self.version,
                   "input_sha256": hashlib.sha256(data).hexdigest(), "width": rgb.width, "height": rgb.height,
                   "predicted": top[0][0], "confidence": top[0][1], "top_k": top, "latency_ms": latency,
                   "embedding": emb, "brightness": brightness(rgb), "colour_mode": file_colour_mode(data),
                   "image": data}  # kept (under the log's cap): a flagged one becomes training data
            rows.append(row)
            out.append((name, rgb, top, latency))
        ids = self.log.log_many(rows)
        return [Prediction(pid, name, rgb.width, rgb.height, top[0][0], top[0][1], top, round(latency, 2),
                           self.model_name, self.version)
                for pid, (name, rgb, top, latency) in zip(ids, out)]

    def explain(self, data: bytes, class_name: str | None = None) -> Saliency:
        """Where the model looked for `class_name` (default: its prediction) in one image."""
        index = None if class_name is None else self.classes.index(class_name)
        return saliency(self.torch_model, self.pre, load_rgb(_named("the image", data)), index)

    def feedback(self, prediction_id: str, label: str, comment: str = "") -> dict[str, Any]:
        """Record that `prediction_id` should have been `label` (UnknownPrediction / LabelNotInClasses)."""
        return self.log.add_feedback(prediction_id, label, comment)
