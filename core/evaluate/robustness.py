"""Robustness of a model: accuracy under common corruptions, and on a second data source (drift).

The corruption sweep re-predicts the same cached test images under each corruption and severity
(core.evaluate.corruptions). Drift evaluates the model on images from another source (a new camera, site or
month); images that are byte-identical to ones the run trained or validated on are left out, so the
drift figure never counts memorised images.
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
import torch

from core.data.ingest import resolve_dataset
from core.data.splits import read_manifest
from core.evaluate.corruptions import CORRUPTIONS, SEVERITIES, corruption_fn, parameter
from core.evaluate.evaluation import EvaluationError, Predictions, RunEvaluation, predict_images, summarize
from core.model.cache import build_cache
from core.runs.launch import is_manifest


@dataclass(frozen=True)
class CorruptionScore:
    corruption: str
    severity: int
    parameter: float  # the corruption's strength at this severity (core.evaluate.corruptions.PARAMETERS)
    accuracy: float
    drop: float  # clean accuracy minus this accuracy

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class RobustnessResult:
    clean_accuracy: float
    scores: tuple[CorruptionScore, ...]  # corruption-major, severity 1..3
    mean_corrupted_accuracy: float  # over every corruption and severity
    worst: str  # "gaussian_noise at severity 3": the largest drop

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class DriftResult:
    source: str  # what the user pointed at
    n_images: int  # images evaluated
    excluded_overlap: int  # images left out: byte-identical to a train/val image of the run
    unknown_classes: tuple[str, ...]  # labels of the source the model does not know (those images left out)
    accuracy: float
    macro_f1: float
    reference_accuracy: float  # the model's accuracy on its own test split, for comparison
    evaluation: RunEvaluation

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def corruption_sweep(model: torch.nn.Module, pre, images: torch.Tensor, y_true, device: torch.device,
                     corruptions: Sequence[str] = CORRUPTIONS, severities: Sequence[int] = SEVERITIES,
                     clean_probs: np.ndarray | None = None, batch_size: int = 64, seed: int = 0,
                     progress: Callable[[str], None] = lambda message: None) -> RobustnessResult:
    """Accuracy of `model` on cached test images under each corruption and severity."""
    y_true = np.asarray(y_true)
    if clean_probs is None:
        clean_probs = predict_images(model, pre, images, device, batch_size)
    clean = float(np.mean(clean_probs.argmax(1) == y_true)) if len(y_true) else float("nan")
    scores = []
    for name in corruptions:
        for severity in severities:
            probs = predict_images(model, pre, images, device, batch_size, corruption_fn(name, severity, seed))
            acc = float(np.mean(probs.argmax(1) == y_true)) if len(y_true) else float("nan")
            scores.append(CorruptionScore(name, int(severity), float(parameter(name, severity)), acc, clean - acc))
            progress(f"robustness: {name} severity {severity}: accuracy {acc:.4f}")
    worst = max(scores, key=lambda s: s.drop) if scores else None
    mean = float(np.mean([s.accuracy for s in scores])) if scores else float("nan")
    return RobustnessResult(clean, tuple(scores), mean,
                            f"{worst.corruption} at severity {worst.severity}" if worst else "")


def drift_images(source: str, classes: Sequence[str], seen_sha256: set[str], workspace_dir: str
                 ) -> tuple[list[str], list[int], int, tuple[str, ...]]:
    """(paths, labels, excluded overlap, unknown classes) of every image of `source` the run never saw.

    `source` is anything a run accepts (folder, archive, CSV, stored dataset id, split manifest); of a
    manifest, its test rows when it has any, else all rows.
    """
    if os.path.isfile(source) and is_manifest(source):
        manifest = read_manifest(source)
        rows = manifest.rows_for("test") or manifest.rows
        items = [(str(manifest.path_of(r)), r.label, r.sha256) for r in rows]
    else:
        dataset = resolve_dataset(source, workspace_dir)
        items = [(str(dataset.path_of(s)), s.label, s.sha256) for s in dataset.samples]
    index = {c: i for i, c in enumerate(classes)}
    unknown = tuple(sorted({label for _, label, _ in items if label not in index}))
    kept = [(p, index[label]) for p, label, sha in items if label in index and sha not in seen_sha256]
    excluded = sum(1 for _, label, sha in items if label in index and sha in seen_sha256)
    if not kept:
        raise EvaluationError(f"{source}: no images left to evaluate ({excluded} are copies of the run's train/val "
                              f"images; unknown classes: {', '.join(unknown) or 'none'}; the model knows "
                              f"{', '.join(classes)})")
    return [p for p, _ in kept], [y for _, y in kept], excluded, unknown


def drift(model: torch.nn.Module, pre, source: str, classes: Sequence[str], seen_sha256: set[str],
          workspace_dir: str, reference_accuracy: float, device: torch.device, run_id: str = "",
          batch_size: int = 64) -> DriftResult:
    """The model on a second data source, against its accuracy on its own test split."""
    paths, labels, excluded, unknown = drift_images(source, classes, seen_sha256, workspace_dir)
    probs = predict_images(model, pre, build_cache(paths, pre, torch.device("cpu")), device, batch_size)
    ev = summarize(Predictions(tuple(classes), tuple(paths), np.asarray(labels, np.int64), probs), run_id, "drift")
    return DriftResult(source, len(paths), excluded, unknown, ev.metrics["accuracy"], ev.metrics["macro_f1"],
                       reference_accuracy, ev)
