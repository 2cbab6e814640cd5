"""New labelled data (feedback with logged images, an uploaded batch) and the dataset version it makes with the
champion's data: old rows keep their split, new images get their own, nothing half-written on failure."""
from __future__ import annotations

import hashlib
import io
import json
import os
import zipfile
from collections import Counter

import numpy as np
import pytest
from conftest import export_digits
from PIL import Image

from core.data.ingest import ingest, load_dataset_dir
from core.data.splits import split_dataset, write_manifest
from core.data.types import IngestError
from core.deploy.bundle import BUNDLE_FORMAT
from core.deploy.predlog import PredictionLog
from core.deploy.registry import Registry
from core.monitor import newdata
from core.monitor.newdata import NEW_PREFIX, NewDataError, build_dataset_version, collect_new_data


def png(seed: int, size: int = 24) -> bytes:
    """A unique small PNG (noise seeded by `seed`)."""
    pixels = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def fake_bundle(folder: str, run_id: str, classes) -> str:
    """Enough of a bundle for the registry (never run)."""
    os.makedirs(folder, exist_ok=True)
    contents = {"model.onnx": run_id.encode(), "checkpoint.safetensors": b"x"}
    for name, data in contents.items():
        with open(os.path.join(folder, name), "wb") as f:
            f.write(data)
    info = {"format": BUNDLE_FORMAT, "status": "ok", "run_id": run_id, "model_format": "onnx",
            "model_file": "model.onnx", "classes": list(classes),
            "files": {n: hashlib.sha256(d).hexdigest() for n, d in contents.items()}}
    with open(os.path.join(folder, "bundle.json"), "w") as f:
        json.dump(info, f)
    return folder


def make_champion(root: str, data_dir: str, model: str = "digits", run_id: str = "run-1"):
    """A workspace whose registry's champion is a (fake) bundle of run `run_id`, whose manifest splits data_dir."""
    dataset = ingest(data_dir, root)
    manifest = split_dataset(dataset, (0.6, 0.2, 0.2), near_duplicate_groups=())
    write_manifest(manifest, os.path.join(root, "runs", run_id, "manifest.json"))
    registry = Registry(os.path.join(root, "registry"))
    version = registry.register(fake_bundle(os.path.join(root, "b-" + run_id), run_id, manifest.labels), model)
    registry.set_alias(model, "champion", version.version)
    return manifest


def log_prediction(log: PredictionLog, image: bytes | None, predicted: str, model: str = "digits",
                   width: int = 24, height: int = 24, sha: str | None = None) -> str:
    return log.log({"model": model, "version": 1, "input_sha256": sha or hashlib.sha256(image or b"").hexdigest(),
                    "width": width, "height": height, "predicted": predicted, "confidence": 0.5,
                    "top_k": [[predicted, 0.5]], "latency_ms": 1.0, "embedding": np.zeros(4), "image": image})


@pytest.fixture
def workspace(tmp_path):
    root = str(tmp_path / "ws")
    data = export_digits(str(tmp_path / "old"), per_class=6)
    return root, make_champion(root, data)


def test_collect_counts_feedback_with_images_and_says_what_it_left_out(workspace):
    root, manifest = workspace
    log = PredictionLog.for_workspace(root)
    for i in range(12):  # usable: unique images, labelled
        log.add_feedback(log_prediction(log, png(i), "1"), str(i % 3))
    log.add_feedback(log_prediction(log, None, "1", sha="f" * 64), "2")  # no stored image
    old = manifest.rows[0]
    old_bytes = open(manifest.path_of(old), "rb").read()
    log.add_feedback(log_prediction(log, old_bytes, "1"), old.label)  # already in the champion's dataset
    again = log_prediction(log, png(100), "4")
    log.add_feedback(again, "4")
    log.add_feedback(again, "5")  # the latest label wins
    log.add_feedback(log_prediction(log, png(100), "4"), "5")  # the same image on another prediction: once
    log.add_feedback(log_prediction(log, png(101), "1"), "zebra")  # a class the champion lacks: allowed
    log.add_feedback(log_prediction(log, png(102), "1"), ".hidden")  # cannot be a class folder
    log_prediction(log, png(103), "1")  # no feedback: not labelled
    log.add_feedback(log_prediction(log, png(104), "1", model="other"), "1")  # another model's
    log.close()

    new = collect_new_data(root, "digits")
    assert len(new) == 14 and new.per_source == {"feedback": 14}
    assert new.per_class["5"] == 1 and "4" not in new.per_class
    assert new.new_classes == ("zebra",) and new.classes == manifest.labels
    skipped = {reason.split(" (")[0]: n for reason, n in new.skipped.items()}
    assert skipped["labelled predictions without a stored image"] == 1
    assert skipped["images already in the champion's dataset"] == 1
    assert skipped["labels that cannot be a class folder name"] == 1
    assert skipped["repeat labels of an image already counted"] == 1
    assert any("without a stored image" in s for s in new.sentences())


def test_collect_takes_an_uploaded_folder_or_zip(workspace, tmp_path):
    root, _ = workspace
    batch = tmp_path / "batch"
    for k in range(6):
        (batch / ("a" if k % 2 else "b")).mkdir(parents=True, exist_ok=True)
        (batch / ("a" if k % 2 else "b") / f"{k}.png").write_bytes(png(200 + k))
    (batch / "a" / "notes.txt").write_text("not an image")
    new = collect_new_data(root, "digits", str(batch))
    assert new.per_source == {"upload": 6} and new.per_class == {"a": 3, "b": 3}
    assert any("upload refused" in reason for reason in new.skipped)
    archive = tmp_path / "batch.zip"
    with zipfile.ZipFile(archive, "w") as z:
        for path in batch.rglob("*.png"):
            z.write(path, path.relative_to(batch).as_posix())
    assert collect_new_data(root, "digits", str(archive)).per_class == {"a": 3, "b": 3}


def test_dataset_version_keeps_old_splits_and_splits_new_images_apart(workspace):
    root, manifest = workspace
    log = PredictionLog.for_workspace(root)
    shas = {}
    for i in range(60):
        image = png(300 + i)
        shas[hashlib.sha256(image).hexdigest()] = str(i % 3)
        log.add_feedback(log_prediction(log, image, "1"), str(i % 3))
    log.close()
    new = collect_new_data(root, "digits")
    repeat = {sha: 3 for sha, label in shas.items() if label == "2"}
    version = build_dataset_version(root, "digits", new, repeat)

    dataset = load_dataset_dir(version.root)
    assert dataset.layout == "splits"
    old_split = {r.sha256: r.split for r in manifest.rows}
    rows = [(s, os.path.basename(s.path).startswith(NEW_PREFIX)) for s in dataset.samples]
    assert all(old_split[s.sha256] == s.split for s, is_new in rows if not is_new)  # old test stays test
    assert sum(not is_new for _, is_new in rows) == len(manifest.rows)
    new_split = {s.sha256: s.split for s, is_new in rows if is_new}
    assert set(new_split) == set(shas) == set(version.new_sha256)
    per = Counter(new_split.values())
    assert per == {"train": 42, "val": 9, "test": 9}  # 70/15/15 of 60, stratified: 20 per class
    assert all(Counter(new_split[s] for s in shas if shas[s] == c)["test"] == 3 for c in "012")
    copies = Counter(s.sha256 for s, is_new in rows if is_new)
    assert all(copies[s] == (3 if shas[s] == "2" and new_split[s] == "train" else 1) for s in shas)
    assert set(version.repeated) == {s for s in shas if shas[s] == "2" and new_split[s] == "train"}
    assert version.counts["new"] == {"train": 42 + 2 * len(version.repeated), "val": 9, "test": 9}

    record = json.load(open(version.record))
    assert record["dataset_id"] == version.dataset_id and set(record["new_sha256"]) == set(shas)
    assert not [n for n in os.listdir(os.path.join(root, "datasets")) if n.startswith(".staging")]

    from core.config import TrainConfig
    from core.runs.launch import prepare_data
    prepared = prepare_data(version.root, TrainConfig(group_by="none"), root)  # what start_run will train on
    assert {r.path: r.split for r in prepared.rows} == {s.path: s.split for s in dataset.samples}


def test_a_failed_build_leaves_nothing(workspace, monkeypatch):
    root, _ = workspace
    log = PredictionLog.for_workspace(root)
    for i in range(5):
        log.add_feedback(log_prediction(log, png(500 + i), "1"), "1")
    log.close()
    new = collect_new_data(root, "digits")
    before = sorted(os.listdir(os.path.join(root, "datasets")))

    def refuse(*args, **kwargs):
        raise IngestError("disk said no")

    monkeypatch.setattr(newdata, "resolve_dataset", refuse)
    with pytest.raises(IngestError):
        build_dataset_version(root, "digits", new)
    assert sorted(os.listdir(os.path.join(root, "datasets"))) == before
    monkeypatch.undo()
    with pytest.raises(NewDataError, match="no new labelled images"):
        build_dataset_version(root, "digits", newdata.NewData("digits", ("1",), ()))


def test_no_champion_is_a_clear_error(tmp_path):
    with pytest.raises(Exception, match="digits"):
        collect_new_data(str(tmp_path), "digits")
