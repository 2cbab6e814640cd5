"""Evaluation of a finished run on its own test split (or any split / other data).

`evaluate_run` reloads the best checkpoint with the preprocessing it was trained with, predicts the
split recorded in the run's manifest, and returns a typed report: headline metrics (accuracy, macro
precision/recall/F1, top-k accuracy, log loss, ECE) with bootstrap 95% intervals, per-class
precision/recall/F1, the confusion matrix (counts and row-normalised), calibration (the reliability
diagram's bins), and the error analysis: misclassified images, the most confused class pairs and the
highest-loss images; and the baseline the run recorded.

The whole audit of a run (baselines side by side, McNemar's test, deployment figures, robustness, drift,
the cost of errors, the HTML/JSON/CSV export) is `core.report.build_report`; `python -m core evaluate`
is `main` below.
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import torch
from sklearn.metrics import confusion_matrix, precision_recall_fscore_support, top_k_accuracy_score

from .checkpoint import load_model
from .data import BatchSource, Split
from .metrics import classification_metrics
from .runs import run_inputs
from .stats import Calibration, bootstrap_intervals, calibration
from .store import RunStore

TOP_K = (3, 5)  # top-k accuracies reported where k is below the number of classes
N_HIGHEST_LOSS = 20  # highest-loss images listed
N_CONFUSED_PAIRS = 10


class EvaluationError(ValueError):
    """The run cannot be evaluated (not finished, no checkpoint, empty split); the message says why."""


@dataclass(frozen=True)
class Predictions:
    classes: tuple[str, ...]
    paths: tuple[str, ...]
    y_true: np.ndarray  # (N,) class indices
    probs: np.ndarray  # (N, C) softmax probabilities

    @property
    def y_pred(self) -> np.ndarray:
        return self.probs.argmax(axis=1) if len(self.probs) else np.zeros(0, np.int64)


@dataclass(frozen=True)
class RunEvaluation:
    run_id: str
    split: str
    classes: tuple[str, ...]
    metrics: dict[str, float]  # accuracy, macro precision/recall/F1, top3/top5_accuracy, log_loss, ece
    per_class: tuple[dict[str, Any], ...]  # class, precision, recall, f1, support
    confusion: tuple[tuple[int, ...], ...]  # rows: true class, columns: predicted class
    confusion_normalized: tuple[tuple[float, ...], ...]
    misclassified: tuple[dict[str, Any], ...]  # path, true, predicted, confidence; most confident first
    baseline: dict[str, float] = field(default_factory=dict)  # what the run recorded for its linear probe
    # bootstrap 95% intervals of accuracy, macro_f1 and log_loss
    intervals: dict[str, tuple[float, float]] = field(default_factory=dict)
    calibration: Calibration | None = None  # ECE and the reliability diagram's bins
    confused_pairs: tuple[dict[str, Any], ...] = ()  # true, predicted, count, share (of the true class); most first
    highest_loss: tuple[dict[str, Any], ...] = ()  # path, true, predicted, p_true, loss; highest first
    n_images: int = 0

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# ---------------------------------------------------------------------------------------- prediction
@torch.inference_mode()
def predict(model: torch.nn.Module, pre, split: Split, classes: tuple[str, ...], device: torch.device | None = None,
            batch_size: int = 64) -> Predictions:
    """Softmax probabilities for every image of a split, with the checkpoint's own preprocessing."""
    device = device or torch.device("cpu")
    model = model.to(device).eval()
    source = BatchSource(split, pre, device, batch_size, cached=False, num_workers=0)
    probs = []
    for images, _ in source.batches():
        probs.append(torch.softmax(model(pre.eval_input(images)).float(), dim=1).cpu().numpy())
    return Predictions(classes, split.paths, np.asarray(split.labels, dtype=np.int64),
                       np.concatenate(probs) if probs else np.zeros((0, len(classes)), np.float32))


@torch.inference_mode()
def predict_images(model: torch.nn.Module, pre, images: torch.Tensor, device: torch.device | None = None,
                   batch_size: int = 64, corrupt: Callable[[torch.Tensor], torch.Tensor] | None = None,
                   amp_dtype: torch.dtype | None = None) -> np.ndarray:
    """(N, C) softmax probabilities of cached uint8 images (N, 3, S, S) (core.data.build_cache).

    `corrupt` transforms each uint8 batch after the eval crop, before normalisation (core.corruptions).
    """
    device = device or torch.device("cpu")
    model = model.to(device).eval()
    out = []
    for start in range(0, len(images), batch_size):
        x = pre.center_crop(images[start:start + batch_size].to(device))
        if corrupt is not None:
            x = corrupt(x)
        with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
            logits = model(pre.normalize(x))
        out.append(torch.softmax(logits.float(), dim=1).cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


# ------------------------------------------------------------------------------------------- summary
def summarize(pred: Predictions, run_id: str = "", split: str = "test", baseline: dict | None = None,
              top_k: Sequence[int] = TOP_K, n_boot: int = 1000, seed: int = 0) -> RunEvaluation:
    """Metrics, intervals, per-class scores, confusion matrix, calibration and error analysis of predictions."""
    n = len(pred.classes)
    y_pred = pred.y_pred
    labels = list(range(n))
    metrics = classification_metrics(pred.y_true, y_pred, n)
    eps = 1e-12
    p_true = pred.probs[np.arange(len(y_pred)), pred.y_true] if len(y_pred) else np.zeros(0)
    losses = -np.log(p_true + eps)
    metrics["log_loss"] = float(np.mean(losses)) if len(losses) else float("nan")
    for k in top_k:
        if k < n and len(y_pred):
            metrics[f"top{k}_accuracy"] = float(top_k_accuracy_score(pred.y_true, pred.probs, k=k, labels=labels))
    calib = calibration(pred.probs, pred.y_true)
    metrics["ece"] = calib.ece
    p, r, f, support = precision_recall_fscore_support(pred.y_true, y_pred, labels=labels, zero_division=0)
    per_class = tuple({"class": c, "precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]),
                       "support": int(support[i])} for i, c in enumerate(pred.classes))
    cm = confusion_matrix(pred.y_true, y_pred, labels=labels)
    rows = cm.sum(axis=1, keepdims=True)
    cm_norm = np.divide(cm, rows, out=np.zeros_like(cm, dtype=float), where=rows > 0)
    wrong = np.flatnonzero(y_pred != pred.y_true)
    confidence = pred.probs[wrong, y_pred[wrong]] if len(wrong) else np.zeros(0)
    misclassified = tuple({"path": pred.paths[i], "true": pred.classes[pred.y_true[i]],
                           "predicted": pred.classes[y_pred[i]], "confidence": float(c)}
                          for i, c in sorted(zip(wrong, confidence), key=lambda t: -t[1]))
    return RunEvaluation(run_id, split, pred.classes, metrics, per_class,
                         tuple(tuple(int(v) for v in row) for row in cm),
                         tuple(tuple(float(v) for v in row) for row in cm_norm), misclassified, baseline or {},
                         bootstrap_intervals(pred.y_true, y_pred, n, pred.probs, n_boot=n_boot, seed=seed),
                         calib, confused_pairs(cm, pred.classes), _highest_loss(pred, y_pred, losses),
                         len(y_pred))


def confused_pairs(cm: np.ndarray, classes: Sequence[str], top: int = N_CONFUSED_PAIRS
                   ) -> tuple[dict[str, Any], ...]:
    """The off-diagonal cells of a confusion matrix, largest first: which class is taken for which."""
    cm = np.asarray(cm)
    rows = cm.sum(axis=1)
    cells = [(int(cm[t, p]), t, p) for t in range(len(cm)) for p in range(len(cm)) if t != p and cm[t, p] > 0]
    cells.sort(key=lambda c: (-c[0], c[1], c[2]))
    return tuple({"true": classes[t], "predicted": classes[p], "count": count, "share": float(count / rows[t])}
                 for count, t, p in cells[:top])


def _highest_loss(pred: Predictions, y_pred: np.ndarray, losses: np.ndarray, top: int = N_HIGHEST_LOSS
                  ) -> tuple[dict[str, Any], ...]:
    order = np.argsort(-losses, kind="stable")[:top]
    return tuple({"path": pred.paths[i], "true": pred.classes[pred.y_true[i]], "predicted": pred.classes[y_pred[i]],
                  "p_true": float(pred.probs[i, pred.y_true[i]]), "loss": float(losses[i])} for i in order)


# -------------------------------------------------------------------------------------------- a run
def evaluate_run(runs_dir: str, run_id: str, split: str = "test", device: str = "cpu") -> RunEvaluation:
    """Evaluate a run's best checkpoint on a split of the data it was trained with."""
    store = RunStore(runs_dir)
    weights = best_checkpoint(store, run_id)
    _, data = run_inputs(store, run_id)
    part = getattr(data, split)
    if not len(part):
        raise EvaluationError(f"run {run_id} has no {split} split; evaluate on 'val' or give data with a test set")
    model, pre, meta = load_model(weights)
    pred = predict(model, pre, part, tuple(meta["classes"]), torch.device(device))
    return summarize(pred, run_id, split, recorded_baseline(store, run_id, split))


def best_checkpoint(store: RunStore, run_id: str) -> str:
    """The run's best weights file; EvaluationError when it has none yet."""
    run = store.get_run(run_id)
    weights = run.get("best_checkpoint") or ""
    if not weights or not os.path.exists(weights):
        raise EvaluationError(f"run {run_id} has no best checkpoint yet (status: {run['status']}); "
                              "evaluate it once it has finished at least one epoch")
    return weights


def recorded_baseline(store: RunStore, run_id: str, split: str = "test") -> dict[str, float]:
    """The linear-probe metrics the run recorded for `split` (test_accuracy, ...)."""
    rows = store.metrics(run_id, "baseline")
    return {k: v for k, v in (rows[0] if rows else {}).items() if k.startswith(f"{split}_")}


# ---------------------------------------------------------------------------------------------- CLI
def main(argv: Sequence[str] | None = None) -> int:
    """`python -m core evaluate RUN_ID [...]` (argv excludes the word "evaluate"); see core.report.main."""
    from .report import main as report_main

    return report_main(argv)
