"""The Predict page's engine: a registry model runs its ONNX bundle exactly as the server does, a run runs its
PyTorch checkpoint, both log each prediction so feedback joins it, and the saliency map points where the class's
evidence is."""
from __future__ import annotations

import os
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from core.data.types import ImageError
from core.deploy.bundle import Bundle, OnnxModel
from core.deploy.predictor import Predictor
from core.deploy.predlog import LabelNotInClasses, PredictionLog, UnknownPrediction
from core.deploy.registry import Registry
from core.deploy.saliency import saliency
from core.model.preprocess import PreprocessSpec
from core.workspace import Workspace


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, deploy_run, bundle_dir):
    runs_dir, run_id = deploy_run
    ws = Workspace(str(tmp_path_factory.mktemp("predict_ws")))
    shutil.copytree(runs_dir, ws.runs_dir)
    registry = Registry(os.path.join(ws.root, "registry"))
    version = registry.register(bundle_dir, "digits")
    registry.set_alias("digits", "champion", version.version)
    return ws, run_id


def png(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def test_a_registry_model_and_its_run_agree_and_every_prediction_is_logged(workspace, test_image, bundle_dir):
    ws, run_id = workspace
    data = png(test_image)
    by_bundle = Predictor(ws, "digits@champion").predict([("a.png", data), ("b.png", data)])
    by_run = Predictor(ws, f"run:{run_id}").predict([("a.png", data)])
    assert by_bundle[0].model == "digits" and by_bundle[0].version == 1 and by_run[0].version == 0
    assert by_bundle[0].predicted == by_run[0].predicted
    assert by_bundle[0].confidence == pytest.approx(by_run[0].confidence, abs=1e-4)
    bundle = Bundle.load(bundle_dir)
    from core.data.images import load_rgb

    probs = OnnxModel(bundle).probabilities(bundle.preprocess(load_rgb(test_image))[None])[0][0]
    assert by_bundle[0].confidence == pytest.approx(float(probs.max()), abs=1e-6)  # the server's path, exactly
    assert len(by_bundle[0].top_k) == 5 and by_bundle[0].id != by_bundle[1].id
    log = PredictionLog.for_workspace(ws.root)
    row = log.get(by_bundle[0].id)
    assert row["predicted"] == by_bundle[0].predicted and row["embedding"].shape == (bundle.info["embedding_dim"],)


def test_feedback_joins_by_prediction_id_and_checks_the_label(workspace, test_image):
    ws, _ = workspace
    predictor = Predictor(ws, "digits")
    pred = predictor.predict([("a.png", png(test_image))])[0]
    wrong = next(c for c in predictor.classes if c != pred.predicted)
    predictor.feedback(pred.id, wrong, "it is another digit")
    assert PredictionLog.for_workspace(ws.root).get(pred.id)["feedback"][0]["label"] == wrong
    with pytest.raises(LabelNotInClasses, match="choose one of"):
        predictor.feedback(pred.id, "not-a-digit")
    with pytest.raises(UnknownPrediction):
        predictor.feedback("0" * 32, wrong)


def test_a_bad_image_logs_nothing(workspace, test_image):
    ws, _ = workspace
    log = PredictionLog.for_workspace(ws.root)
    before = log.count()
    with pytest.raises(ImageError):
        Predictor(ws, "digits").predict([("good.png", png(test_image)), ("bad.png", b"not an image at all")])
    assert log.count() == before


class RedDetector(torch.nn.Module):
    """A trunk whose channel 0 fires on red pixels; the head's class 0 is that channel's mean."""

    def __init__(self):
        super().__init__()
        conv = torch.nn.Conv2d(3, 2, 1)
        with torch.no_grad():
            conv.weight.zero_()
            conv.bias.zero_()
            conv.weight[0, 0] = 1.0
            conv.weight[0, 1] = -1.0
            conv.weight[1, 2] = 1.0
        self.trunk = torch.nn.Sequential(conv, torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
        self.head = torch.nn.Linear(2, 2)
        with torch.no_grad():
            self.head.weight.copy_(torch.eye(2))
            self.head.bias.zero_()

    def forward(self, x):
        return self.head(self.trunk(x))


def test_grad_cam_points_at_the_evidence():
    image = np.zeros((64, 64, 3), np.uint8)
    image[40:60, 8:28, 0] = 255  # a red patch, bottom left
    pre = PreprocessSpec(64, 1.0, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), "bilinear")
    result = saliency(RedDetector(), pre, Image.fromarray(image), class_index=0)
    assert result.method.startswith("Grad-CAM") and result.heat.shape == (64, 64)
    inside, outside = result.heat[42:58, 10:26].mean(), result.heat[:30, 34:].mean()
    assert inside > 0.8 and outside < 0.1
    assert result.overlay().size == (64, 64)
