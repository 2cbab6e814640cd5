"""One monitoring pass over a registered model: predictions computed through its bundle (as the server logs
them) give no alert in distribution, and drift, accuracy, confidence and latency alerts when each goes wrong;
alerts are updated by the next check, closed when the problem is gone, and the sentences say why."""
import json
import os
import shutil
import time

import numpy as np
import pytest
from PIL import Image, ImageOps

from core.data.images import load_rgb
from core.deploy.bundle import Bundle, OnnxModel
from core.deploy.predlog import PredictionLog
from core.deploy.registry import NotInRegistry, Registry
from core.monitor.alerts import AlertStore
from core.monitor.check import MonitorConfig, MonitorError, check_model, parse_time
from core.runs.launch import run_inputs
from core.runs.store import RunStore

NOW = time.time()


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, bundle_dir):
    root = str(tmp_path_factory.mktemp("monitor_ws"))
    registry = Registry(os.path.join(root, "registry"))
    registry.register(bundle_dir, "digits")
    registry.set_alias("digits", "champion", 1)
    return root


@pytest.fixture(scope="module")
def images(deploy_run):
    runs_dir, run_id = deploy_run
    _, data = run_inputs(RunStore(runs_dir), run_id)
    return data


def served_rows(bundle_dir, pil_images, at, latency=8.0):
    """Rows as core.deploy.server logs them: load_rgb'd image -> bundle preprocessing -> ONNX (probs, embedding)."""
    bundle = Bundle.load(bundle_dir)
    probs, emb = OnnxModel(bundle).probabilities(np.stack([bundle.preprocess(im) for im in pil_images]))
    return [{"at": at + i, "model": "digits", "version": 1, "input_sha256": "x", "width": im.width,
             "height": im.height, "predicted": bundle.classes[int(p.argmax())], "confidence": float(p.max()),
             "top_k": [[bundle.classes[int(p.argmax())], float(p.max())]], "latency_ms": latency, "embedding": e}
            for i, (im, p, e) in enumerate(zip(pil_images, probs, emb))]


def test_in_distribution_then_shifted_inputs(workspace, bundle_dir, images):
    log = PredictionLog.for_workspace(workspace)
    normal = [load_rgb(p) for p in images.test.paths] + [load_rgb(p) for p in images.train.paths[:60]]
    ids = log.log_many(served_rows(bundle_dir, normal, NOW - 7200))
    for pid, label in zip(ids, [images.classes[y] for y in images.test.labels]):
        log.add_feedback(pid, label)  # 40 labelled test images
    config = MonitorConfig(window_seconds=3600)
    report = check_model(workspace, "digits", since=NOW - 3 * 3600, until=NOW, config=config)
    assert report.version == 1 and report.has_reference and report.windows[1].n == 100
    statuses = {f.kind: f.status for f in report.findings}
    assert statuses["drift"] == "ok" and report.drift.auc < 0.75, report.drift.to_dict()
    assert statuses["latency"] == "ok" and statuses["confidence"] == "ok"
    assert report.alerts == () and "100 served predictions" in report.sentences()[0]
    # shifted: the same digits inverted (white background) with noise, 120 of them, slow
    rng = np.random.default_rng(0)
    shifted = [Image.fromarray(np.clip(np.asarray(ImageOps.invert(load_rgb(p))) + rng.normal(0, 40, (24, 24, 3)),
                                       0, 255).astype(np.uint8)) for p in images.train.paths[60:180]]
    log.log_many(served_rows(bundle_dir, shifted, NOW - 1800, latency=80.0))
    report = check_model(workspace, "digits", since=NOW - 3 * 3600, until=NOW, config=config)
    kinds = {a.kind for a in report.alerts}
    assert "drift" in kinds and "latency" in kinds, report.sentences()
    drift = next(a for a in report.alerts if a.kind == "drift")
    assert "have drifted" in drift.reason and drift.details["auc"] > 0.75 and drift.details["version"] == 1
    assert "10.0x the first window's 8 ms" in next(a.reason for a in report.alerts if a.kind == "latency")
    again = check_model(workspace, "digits", since=NOW - 3 * 3600, until=NOW, config=config)
    assert {a.id for a in again.alerts} == {a.id for a in report.alerts}  # updated, not duplicated
    # a period with in-distribution rows only: the alerts it can evaluate are closed, with why
    calm = check_model(workspace, "digits", since=NOW - 3 * 3600, until=NOW - 3000, config=config)
    assert calm.alerts == ()
    closed = {a.kind: a for a in AlertStore(workspace).history("digits") if a.closed_at is not None}
    assert "no drift" in closed["drift"].closed_why and "p99 latency" in closed["latency"].closed_why
    assert calm.to_dict()["findings"][0]["kind"] == "accuracy"


def test_accuracy_alert_from_wrong_feedback(tmp_path, bundle_dir, images):
    root = str(tmp_path)
    Registry(os.path.join(root, "registry")).register(bundle_dir, "digits")  # no alias: the latest version
    log = PredictionLog.for_workspace(root)
    ids = log.log_many(served_rows(bundle_dir, [load_rgb(p) for p in images.val.paths], NOW - 600))
    wrong = {c: images.classes[(i + 1) % len(images.classes)] for i, c in enumerate(images.classes)}
    for pid, y in zip(ids, images.val.labels):
        log.add_feedback(pid, wrong[images.classes[y]])  # every label contradicts... unless the model was wrong
    report = check_model(root, "digits", since="1h", until=None)
    accuracy = next(f for f in report.findings if f.kind == "accuracy")
    assert accuracy.status == "alert", accuracy.sentence
    assert accuracy.sentence.startswith("accuracy on 50 labelled predictions is ") and "validation figure" in \
        accuracy.sentence
    assert [a.kind for a in report.alerts] == ["accuracy"] and any("accuracy on 50" in s for s in report.sentences())
    details = report.alerts[0].details  # what core.monitor.retrain's trigger reads
    assert details["baseline"] == details["val_accuracy"] > details["accuracy"] and details["n_labelled"] == 50


def test_a_bundle_without_reference_and_bad_input(tmp_path, bundle_dir):
    old = str(tmp_path / "old")
    shutil.copytree(bundle_dir, old)
    info = Bundle.load(old).info  # as an export from before references wrote it
    info["files"].pop("reference.npz")
    os.remove(os.path.join(old, "reference.npz"))
    with open(os.path.join(old, "bundle.json"), "w") as f:
        json.dump(info, f)
    root = str(tmp_path / "ws")
    Registry(os.path.join(root, "registry")).register(old, "olddigits")
    report = check_model(root, "olddigits")
    assert not report.has_reference and report.drift is None and report.alerts == ()
    assert all(f.status == "not evaluated" for f in report.findings)
    assert "no reference.npz" in report.findings[0].sentence
    with pytest.raises(NotInRegistry):
        check_model(root, "nothere")
    with pytest.raises(MonitorError, match="not a time"):
        check_model(root, "olddigits", since="last tuesday")
    with pytest.raises(MonitorError, match="empty"):
        check_model(root, "olddigits", since=NOW, until=NOW - 10)
    assert parse_time("24h", now=1000.0 + 86400) == 1000.0
    assert parse_time("2026-03-01") == parse_time("2026-03-01T00:00:00Z")
