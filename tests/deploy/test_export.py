"""Export: the bundle's contents, its parity check (which must be able to fail), the fallback exporter, TF-"same"
padding at an odd input size, and the bundle run with onnxruntime, numpy and Pillow alone."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from core.data.images import load_rgb
from core.deploy import export as export_module
from core.deploy.bundle import Bundle, BundleError, OnnxModel, sha256_file
from core.deploy.bundle_predict import preprocess, to_rgb
from core.deploy.export import ExportedModel, ExportError, export_run
from core.deploy.parity import fp32_rounding
from core.deploy.reference import load_reference
from core.model.checkpoint import load_model
from core.model.preprocess import PreprocessSpec
from core.runs.launch import run_inputs
from core.runs.store import RunStore


def test_an_onnx_export_passes_parity_and_holds_everything_it_needs(onnx_export, deploy_run):
    runs_dir, run_id = deploy_run
    parity = onnx_export.parity
    assert onnx_export.passed and parity["passed"]
    assert parity["top1_identical"] and parity["top1_disagreements"] == 0
    # 1e-4, or three times the PyTorch reference's own fp32 rounding error (fp32 vs fp64) where that is larger
    assert parity["max_abs_logit_diff"] <= parity["tolerance"] == max(1e-4, 3 * parity["fp32_rounding"])
    assert 0 < parity["fp32_rounding"] < 1e-3 and parity["within_1e4"] == (parity["max_abs_logit_diff"] <= 1e-4)
    assert parity["batch_sizes"] == [1, 16] or parity["batch_sizes"] == (1, 16)
    assert parity["max_abs_input_diff"] == 0.0  # the bundle's numpy preprocessing is the training code's, exactly
    assert "dynamo" in onnx_export.exporter and "fallback" not in onnx_export.exporter
    bundle = Bundle.load(onnx_export.bundle_dir)
    bundle.verify()
    assert set(bundle.info["files"]) == {"model.onnx", "checkpoint.safetensors", "checkpoint.json", "predict.py",
                                         "card.md", "reference.npz"}
    assert bundle.classes == tuple(str(i) for i in range(10))
    assert bundle.info["run_id"] == run_id and bundle.info["status"] == "ok"
    prep = bundle.preprocessing
    assert prep["input_size"] == 32 and prep["colour_mode"] == "RGB" and len(prep["mean"]) == 3
    # no staging folder left beside the bundle
    assert not [n for n in os.listdir(os.path.dirname(onnx_export.bundle_dir)) if n.startswith(".export-")]


def test_the_bundle_holds_a_reference_computed_through_the_exported_model_as_served(onnx_export, deploy_run,
                                                                                      tmp_path):
    import shutil

    runs_dir, run_id = deploy_run
    _, data = run_inputs(RunStore(runs_dir), run_id)
    bundle = Bundle.load(onnx_export.bundle_dir)
    ref = load_reference(bundle.path)
    assert ref is not None and ref.classes == bundle.classes
    # every training image (210 <= 1000) and every val image (50 <= 500), in split order, float16 as logged
    dim = bundle.info["embedding_dim"]
    assert ref.train_embeddings.shape == (210, dim) and ref.train_embeddings.dtype == np.float16
    assert ref.val_embeddings.shape == (50, dim)
    # the server's path: file bytes -> load_rgb -> the bundle's preprocessing -> ONNX -> (softmax, 2nd output)
    model = OnnxModel(bundle)
    for split, stored in (("val", ref.val_embeddings), ("train", ref.train_embeddings)):
        paths = getattr(data, split).paths
        x = np.stack([bundle.preprocess(load_rgb(open(p, "rb").read())) for p in paths[:5]])
        probs, embedding = model.probabilities(x)
        assert np.abs(stored[:5].astype(np.float32) - embedding).max() <= 2e-3 * max(1.0, np.abs(embedding).max())
        if split == "val":
            assert np.allclose(ref.val_confidence[:5], probs.max(axis=1), atol=1e-5)
            assert list(ref.val_predicted[:5]) == list(probs.argmax(axis=1))
    assert list(ref.val_labels) == list(data.val.labels)  # class order of the bundle == the run's
    assert ref.val_accuracy == pytest.approx(float(np.mean(ref.val_predicted == ref.val_labels)))
    assert 0.0 < ref.mean_confidence <= 1.0
    counts = np.bincount(data.val.labels, minlength=10) / len(data.val)
    assert [ref.val_class_shares[c] for c in bundle.classes] == pytest.approx(list(counts))
    # the training images' input statistics: 24 px RGB PNG digits, dark backgrounds
    assert set(ref.train_width) == {24} and set(ref.train_height) == {24}
    assert ref.colour_mode_shares == {"RGB": 1.0, "L": 0.0, "RGBA": 0.0, "other": 0.0}
    assert 0 < ref.input_summary()["brightness"] < 128
    assert bundle.info["reference"]["n_train"] == 210 and bundle.info["reference"]["seconds"] >= 0
    # a bundle exported before references existed has none
    old = str(tmp_path / "old")
    shutil.copytree(bundle.path, old)
    os.remove(os.path.join(old, "reference.npz"))
    assert load_reference(old) is None


def test_the_card_states_data_metrics_baselines_latency_license_and_weaknesses(onnx_export):
    card = open(os.path.join(onnx_export.bundle_dir, "card.md"), encoding="utf-8").read()
    for needle in ("## Training data", "| **total** | 210 | 50 | 40 |", "Accuracy:", "95% CI", "linear probe",
                   "Apache-2.0", "ImageNet", "Most confused pairs", "Robustness to corruptions", "ms/image at batch 1",
                   "Memory:", "max |logit difference|", "onnxruntime as ort", "predict.preprocess"):
        assert needle in card, needle
    info = Bundle.load(onnx_export.bundle_dir).info
    assert info["deployment"]["latency_ms_batch1"] > 0 and info["deployment"]["measured_in"] == "a clean child process"


def test_the_dynamic_batch_dimension_gives_the_same_logits_at_any_batch(bundle_dir, test_image):
    bundle = Bundle.load(bundle_dir)
    model = OnnxModel(bundle)
    x = bundle.preprocess(load_rgb(test_image))
    one = model.run(x[None])[0]
    many = model.run(np.stack([x] * 5))[0]
    assert np.abs(many - one).max() < 1e-4
    assert model.run(x[None])[1].shape == (1, bundle.info["embedding_dim"])


def test_the_bundle_runs_with_onnxruntime_numpy_and_pillow_alone(bundle_dir, test_image):
    blocked = ["torch", "torchvision", "timm", "core", "sklearn", "safetensors", "pandas"]
    code = ("import sys, runpy\n"
            f"for name in {blocked!r}: sys.modules[name] = None  # importing any of them now fails\n"
            f"sys.argv = ['predict.py', {test_image!r}, '--top-k', '3']\n"
            "runpy.run_path('predict.py', run_name='__main__')\n")
    done = subprocess.run([sys.executable, "-I", "-c", code], cwd=bundle_dir, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout.strip().splitlines()[-1])
    bundle = Bundle.load(bundle_dir)
    probs = OnnxModel(bundle).probabilities(bundle.preprocess(load_rgb(test_image))[None])[0][0]
    assert out["class"] == bundle.classes[int(probs.argmax())]
    assert out["confidence"] == pytest.approx(float(probs.max()), abs=1e-5) and len(out["top_k"]) == 3


def test_the_cards_snippet_runs_as_written(bundle_dir, test_image):
    card = open(os.path.join(bundle_dir, "card.md"), encoding="utf-8").read()
    snippet = card.split("```python\n", 1)[1].split("```", 1)[0].replace('"image.jpg"', repr(test_image))
    blocked = ["torch", "torchvision", "timm", "core", "sklearn"]
    code = f"import sys\nfor name in {blocked!r}: sys.modules[name] = None\nsys.path.insert(0, '.')\n" + snippet
    done = subprocess.run([sys.executable, "-I", "-c", code], cwd=bundle_dir, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    label, confidence = done.stdout.split()
    assert label in Bundle.load(bundle_dir).classes and 0 < float(confidence) <= 1


@pytest.mark.parametrize("mode", ["RGBA", "LA", "L", "P", "I;16", "CMYK", "exif"])
def test_the_bundles_decoding_is_the_ingest_loaders(tmp_path, mode):
    rng = np.random.default_rng(0)
    rgb = Image.fromarray(rng.integers(0, 256, (37, 53, 3), dtype=np.uint8))
    path = str(tmp_path / f"img.{'tif' if mode in ('I;16', 'CMYK') else 'png' if mode != 'exif' else 'jpg'}")
    if mode == "exif":
        exif = Image.Exif()
        exif[0x0112] = 6
        rgb.save(path, exif=exif)
    elif mode == "I;16":
        Image.fromarray(rng.integers(0, 65536, (37, 53), dtype=np.uint16)).save(path)
    elif mode in ("RGBA", "LA"):
        rgba = rgb.convert("RGBA")
        rgba.putalpha(Image.fromarray(rng.integers(0, 256, (37, 53), dtype=np.uint8)))
        rgba.convert(mode).save(path)
    else:
        rgb.convert(mode).save(path)
    with Image.open(path) as im:
        own = np.asarray(to_rgb(im))
    assert np.array_equal(own, np.asarray(load_rgb(path)))


def test_the_bundles_preprocessing_is_the_training_codes_including_upsampling():
    rng = np.random.default_rng(1)
    img = Image.fromarray(rng.integers(0, 256, (41, 67, 3), dtype=np.uint8))
    for spec in (PreprocessSpec(32, 0.875, (0.5, 0.4, 0.3), (0.2, 0.25, 0.3), "bicubic"),
                 PreprocessSpec(40, 1.0, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), "bilinear"),
                 PreprocessSpec(48, 1.15, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), "bicubic")):  # crop_pct > 1: upsampled
        ours = preprocess(img, spec.to_dict())
        theirs = spec.image_to_input(img)[0].numpy()
        assert ours.shape == theirs.shape and np.abs(ours - theirs).max() <= 1e-6, spec


def test_a_preprocessing_mismatch_fails_the_check_and_the_bundle_is_refused(deploy_run, tmp_path, monkeypatch):
    # the bundle records a different resize filter than training used: logits drift, the check must catch it
    real_info = export_module._info

    def drifted(*args, **kwargs):
        info = real_info(*args, **kwargs)
        info["preprocessing"]["interpolation"] = "nearest"
        return info

    monkeypatch.setattr(export_module, "_info", drifted)
    runs_dir, run_id = deploy_run
    result = export_run(runs_dir, run_id, "pt2", out=str(tmp_path / "drifted"))
    assert not result.passed and result.parity["max_abs_logit_diff"] > 10 * result.parity["tolerance"]
    info = json.load(open(tmp_path / "drifted" / "bundle.json"))
    assert info["status"] == "failed" and "FAILED" in info["error"]
    with pytest.raises(BundleError, match="failed its parity check"):
        Bundle.load(str(tmp_path / "drifted"))
    assert Bundle.load(str(tmp_path / "drifted"), allow_failed=True).info["parity"]["passed"] is False


def test_the_legacy_exporter_is_a_stated_fallback(deploy_run, tmp_path, monkeypatch):
    real_export = torch.onnx.export

    def no_dynamo(*args, **kwargs):
        if kwargs.get("dynamo"):
            raise RuntimeError("simulated dynamo failure")
        return real_export(*args, **kwargs)

    monkeypatch.setattr(torch.onnx, "export", no_dynamo)
    runs_dir, run_id = deploy_run
    result = export_run(runs_dir, run_id, "onnx", out=str(tmp_path / "legacy"), max_parity_images=8)
    assert "fallback" in result.exporter and "simulated dynamo failure" in result.exporter
    assert result.passed and result.parity["n_images"] == 8


def test_tf_same_padding_exports_correctly_at_an_odd_input_size(deploy_run, tmp_path):
    import onnxruntime as ort

    runs_dir, run_id = deploy_run
    model, _, _ = load_model(os.path.join(runs_dir, run_id, "checkpoints", "best.safetensors"))
    assert type(model.trunk.conv_stem).__name__ == "Conv2dSame"  # the TF-"same" padded trunk
    path = str(tmp_path / "odd.onnx")
    assert "dynamo" in export_module._export_onnx(ExportedModel(model, tta=False).eval(), 45, path)
    # inputs in the range normalised images take (mean 0.5, std 0.5: [-1, 1]), seeded; the same limit as the
    # parity check: 1e-4, or 3x the PyTorch model's own fp32 rounding where that is larger
    x = torch.rand(3, 3, 45, 45, generator=torch.Generator().manual_seed(0)) * 2 - 1
    with torch.inference_mode():
        expected = model(x).numpy()
    got = ort.InferenceSession(path, providers=["CPUExecutionProvider"]).run(["logits"], {"input": x.numpy()})[0]
    limit = max(1e-4, 3 * fp32_rounding(model, x.numpy(), expected, tta=False))
    assert np.abs(got - expected).max() <= limit
    assert (got.argmax(1) == expected.argmax(1)).all()


def test_an_export_never_overwrites_and_leaves_nothing_when_it_breaks(deploy_run, onnx_export, tmp_path, monkeypatch):
    runs_dir, run_id = deploy_run
    with pytest.raises(ExportError, match="already exists"):
        export_run(runs_dir, run_id, "onnx", out=onnx_export.bundle_dir)
    with pytest.raises(ExportError, match="onnx, pt2"):
        export_run(runs_dir, run_id, "tflite")

    def broken(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(export_module, "copy_model", broken)
    with pytest.raises(OSError):
        export_run(runs_dir, run_id, "pt2", out=str(tmp_path / "broken"))
    assert os.listdir(tmp_path) == []  # neither the bundle nor its staging folder


def test_a_changed_file_is_detected(bundle_dir, tmp_path):
    import shutil

    copy = str(tmp_path / "copy")
    shutil.copytree(bundle_dir, copy)
    with open(os.path.join(copy, "card.md"), "a") as f:
        f.write("edited")
    with pytest.raises(BundleError, match="card.md: changed since export"):
        Bundle.load(copy).verify()
    assert sha256_file(os.path.join(bundle_dir, "card.md")) == Bundle.load(bundle_dir).info["files"]["card.md"]
