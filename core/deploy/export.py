"""Export a run's kept model into a bundle (core.deploy.bundle): ONNX through the dynamo exporter (dynamic batch,
fixed height and width; the TorchScript exporter only as a stated fallback) or a torch.export program (.pt2),
with the checkpoint, the preprocessing record, class names, predict.py and a model card.

Every export runs the parity check (core.deploy.parity) before it is kept. The bundle is built in a hidden
staging folder beside its destination and renamed into place whole, so a crash leaves no half bundle; one that
fails the check is still renamed into place (its figures are worth reading) but marked "failed" in bundle.json,
which the registry and the server refuse.
"""
from __future__ import annotations

import contextlib
import datetime as dt
import glob
import json
import os
import shutil
import sys
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from core.deploy import bundle_predict
from core.deploy.bundle import BUNDLE_FORMAT, INFO_FILE, sha256_file
from core.deploy.card import deployment_figures, model_card
from core.deploy.parity import check_parity
from core.deploy.reference import write_reference
from core.errors import StudioError
from core.evaluate.evaluation import best_checkpoint
from core.files import jsonable, write_text
from core.model.checkpoint import copy_model, load_model
from core.runs.launch import run_inputs
from core.runs.store import RunStore

FORMATS = ("onnx", "pt2")
OPSET = 18


class ExportError(StudioError, ValueError):
    """An export asked for something that cannot be done: an unknown format, a destination that exists."""


@dataclass(frozen=True)
class ExportResult:
    run_id: str
    model_format: str
    bundle_dir: str
    passed: bool  # the parity check
    parity: dict[str, Any]
    exporter: str  # which exporter made the file, and why when it was the fallback
    seconds: float
    files: dict[str, str] = field(default_factory=dict)  # name -> sha256

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class ExportedModel(nn.Module):
    """The network as exported: (N, 3, H, W) normalised input -> (logits, penultimate embedding)."""

    def __init__(self, model: nn.Module, tta: bool):
        super().__init__()
        self.model, self.tta = model, tta

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.model.forward_features(x)
        logits = self.model.head(features)
        if self.tta:  # as the run evaluated: the mirror image's logits averaged in
            logits = (logits + self.model.head(self.model.forward_features(torch.flip(x, dims=[3])))) / 2
        return logits, features


def default_export_dir(runs_dir: str, run_id: str, fmt: str) -> str:
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%d-%H%M%S")
    return os.path.join(runs_dir, run_id, "exports", f"{fmt}-{stamp}")


def list_exports(runs_dir: str, run_id: str) -> list[dict[str, Any]]:
    """The bundles export_run wrote for a run (<run>/exports/<fmt>-<time>/), newest first: each one's bundle.json
    with its folder as "path" and its name as "folder" (a folder without a readable bundle.json is skipped)."""
    found = []
    for info_path in glob.glob(os.path.join(runs_dir, glob.escape(run_id), "exports", "*", INFO_FILE)):
        try:
            with open(info_path, encoding="utf-8") as f:
                info = json.load(f)
        except (OSError, ValueError):
            continue
        if isinstance(info, dict):
            folder = os.path.dirname(info_path)
            found.append({**info, "path": folder, "folder": os.path.basename(folder)})
    return sorted(found, key=lambda e: (str(e.get("exported_at", "")), e["folder"]), reverse=True)


def export_run(runs_dir: str, run_id: str, fmt: str = "onnx", out: str | None = None, checkpoint: str | None = None,
               max_parity_images: int | None = None, progress: Callable[[str], None] = lambda message: None
               ) -> ExportResult:
    """Export run `run_id`'s kept model (or `checkpoint`, a weights file of that run) as a bundle in `out`."""
    if fmt not in FORMATS:
        raise ExportError(f"unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}")
    started = time.perf_counter()
    store = RunStore(runs_dir)
    weights = checkpoint or best_checkpoint(store, run_id)
    config, data = run_inputs(store, run_id)
    model, pre, meta = load_model(weights)
    out = os.path.abspath(out or default_export_dir(runs_dir, run_id, fmt))
    if os.path.exists(out):
        raise ExportError(f"{out} already exists; an export never overwrites one. Choose another --out")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    split = "test" if len(data.test) else "val"
    paths = list(getattr(data, split).paths)[:max_parity_images]
    exported = ExportedModel(model, bool(config.tta)).eval()
    staging = tempfile.mkdtemp(prefix=".export-", dir=os.path.dirname(out))
    try:
        progress(f"exporting {meta['architecture_name']} to {fmt}")
        if fmt == "onnx":
            exporter = _export_onnx(exported, pre.input_size, os.path.join(staging, "model.onnx"))
            run_model = _onnx_runner(os.path.join(staging, "model.onnx"))
        else:
            exporter = _export_pt2(exported, pre.input_size, os.path.join(staging, "model.pt2"))
            run_model = _pt2_runner(os.path.join(staging, "model.pt2"))
        copy_model(weights, os.path.join(staging, "checkpoint.safetensors"))
        shutil.copyfile(bundle_predict.__file__, os.path.join(staging, "predict.py"))
        run = store.get_run(run_id)
        info = _info(run_id, fmt, meta, pre, exporter, run)
        info["embedding_dim"] = int(model.head.in_features)
        write_text(os.path.join(staging, INFO_FILE), _dumps(info))  # parity reads the preprocessing record
        progress(f"parity check on {len(paths)} {split} images")
        parity, ref_logits = check_parity(staging, run_model, model, pre, paths, bool(config.tta), split)
        info["parity"] = parity.to_dict()
        info["status"] = "ok" if parity.passed else "failed"
        if not parity.passed:
            info["error"] = parity.sentence()
        profile = deployment_figures(os.path.join(staging, info["model_file"]), fmt, pre.input_size)
        info["deployment"] = profile
        write_text(os.path.join(staging, "card.md"),
                   model_card(runs_dir, run_id, run, info, data, split, paths, ref_logits))
        info["reference"] = write_reference(staging, data, progress=progress)  # for monitoring (core.monitor)
        info["files"] = {name: sha256_file(os.path.join(staging, name)) for name in sorted(os.listdir(staging))
                         if name != INFO_FILE}
        write_text(os.path.join(staging, INFO_FILE), _dumps(info))
        os.rename(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    progress(parity.sentence())
    return ExportResult(run_id, fmt, out, parity.passed, parity.to_dict(), exporter,
                        round(time.perf_counter() - started, 2), info["files"])


def _info(run_id: str, fmt: str, meta: dict, pre, exporter: str, run: dict) -> dict[str, Any]:
    import onnxruntime

    size = pre.input_size
    return {
        "format": BUNDLE_FORMAT, "status": "checking", "run_id": run_id, "model_format": fmt,
        "model_file": f"model.{fmt}", "classes": list(meta["classes"]),
        "preprocessing": {**pre.to_dict(), "colour_mode": "RGB", "layout": "NCHW float32",
                          "rule": "EXIF orientation applied, alpha on white, RGB; shorter side resized to cache_size "
                                  "(interpolation), centred cache_size square, centred input_size square; "
                                  "/255, minus mean, divided by std"},
        "inputs": {"input": [None, 3, size, size]}, "outputs": ["logits", "embedding"],
        "embedding_dim": None, "architecture_name": meta["architecture_name"],
        "weights_source": meta.get("weights_source", ""), "kept": meta.get("kept", ""),
        "dataset_id": run.get("dataset_id", ""), "data_source": run.get("data_source", ""),
        "metrics": {k: v for k, v in meta.items() if k.startswith(("test_", "val_"))},
        "exporter": exporter, "exported_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "versions": {"torch": torch.__version__, "onnxruntime": onnxruntime.__version__,
                     "python": sys.version.split()[0]},
    }


def _dumps(info: dict) -> str:
    return json.dumps(jsonable(info), indent=2)


# ------------------------------------------------------------------------------------------ exporters
def _sample(size: int) -> torch.Tensor:
    return torch.randn(2, 3, size, size)


def _export_onnx(model: nn.Module, size: int, path: str) -> str:
    """ONNX through torch.onnx's dynamo exporter; the TorchScript exporter only when that raises (stated)."""
    batch = torch.export.Dim("batch", min=1, max=4096)
    try:
        with _quiet():
            torch.onnx.export(model, (_sample(size),), path, dynamo=True, input_names=["input"],
                              output_names=["logits", "embedding"], dynamic_shapes={"x": {0: batch}},
                              opset_version=OPSET, external_data=False, optimize=True, verbose=False)
        return f"torch.onnx dynamo exporter (opset {OPSET})"
    except Exception as exc:  # noqa: BLE001 - any exporter failure: try the legacy one, and say so
        reason = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
    for leftover in (path, path + ".data"):
        if os.path.exists(leftover):
            os.remove(leftover)
    with _quiet():
        torch.onnx.export(model, (_sample(size),), path, dynamo=False, input_names=["input"],
                          output_names=["logits", "embedding"], opset_version=17,
                          dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}, "embedding": {0: "batch"}})
    return f"torch.onnx TorchScript exporter (opset 17), a fallback: the dynamo exporter failed ({reason})"


def _export_pt2(model: nn.Module, size: int, path: str) -> str:
    batch = torch.export.Dim("batch", min=1, max=4096)
    with _quiet():
        program = torch.export.export(model, (_sample(size),), dynamic_shapes={"x": {0: batch}})
        torch.export.save(program, path)
    return "torch.export (ExportedProgram, .pt2)"


@contextlib.contextmanager
def _quiet():
    """The exporters print progress and warnings on stdout; the CLI keeps stdout for its JSON line."""
    with contextlib.redirect_stdout(sys.stderr), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def _onnx_runner(path: str) -> Callable[[np.ndarray], np.ndarray]:
    import onnxruntime as ort

    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    return lambda batch: bundle_predict.run(session, batch)[0]


def _pt2_runner(path: str) -> Callable[[np.ndarray], np.ndarray]:
    module = torch.export.load(path).module()

    @torch.inference_mode()
    def run(batch: np.ndarray) -> np.ndarray:
        return module(torch.from_numpy(np.ascontiguousarray(batch)))[0].float().numpy()

    return run
