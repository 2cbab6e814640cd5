"""Evaluation of a finished run on its own test split (or any split / other data).

`evaluate_run` reloads the best checkpoint with the preprocessing it was trained with, predicts the
split recorded in the run's manifest, and returns a typed report: headline metrics (accuracy, macro
precision/recall/F1, top-k accuracy, log loss, ECE) with bootstrap 95% intervals, per-class
precision/recall/F1, the confusion matrix (counts and row-normalised), calibration (the reliability
diagram's bins), and the error analysis: misclassified images, the most confused class pairs and the
highest-loss images; and the baseline the run recorded. It keeps each image's prediction, so the images
behind any cell of the confusion matrix (`cell_images`) and a paired comparison of two runs
(`compare_evaluations`, McNemar's test) need no second pass over the data.

The whole audit of a run (baselines side by side, McNemar's test, deployment figures, robustness, drift,
the cost of errors, the HTML/JSON/CSV export) is `core.evaluate.report.build_report`; `python -m core evaluate`
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

from core.data.split_data import Split
from core.errors import StudioError
from core.metrics import classification_metrics
from core.model.checkpoint import load_model
from core.runs.launch import run_inputs
from core.runs.store import RunStore
from core.stats import Calibration, McNemarResult, bootstrap_intervals, calibration, mcnemar
from core.train.batches import BatchSource
from core.train.outcome import PROBE

TOP_K = (3, 5)  # top-k accuracies reported where k is below the number of classes
N_HIGHEST_LOSS = 20  # highest-loss images listed
N_CONFUSED_PAIRS = 10


class EvaluationError(StudioError, ValueError):
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
    # per image, in the split's order: what `cell_images` and the paired tests (McNemar) work from
    paths: tuple[str, ...] = ()
    y_true: tuple[int, ...] = ()
    y_pred: tuple[int, ...] = ()
    confidence: tuple[float, ...] = ()  # the probability of the predicted class
    kept: str = ""  # what the run saved as its model: "linear probe", "fine-tuned", or "" when not recorded

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
    """(N, C) softmax probabilities of cached uint8 images (N, 3, S, S) (core.model.cache.build_cache).

    `corrupt` transforms each uint8 batch after the eval crop, before normalisation (core.evaluate.corruptions).
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
                         len(y_pred), tuple(pred.paths), tuple(int(v) for v in pred.y_true),
                         tuple(int(v) for v in y_pred),
                         tuple(float(v) for v in pred.probs[np.arange(len(y_pred)), y_pred]))


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


def class_index(classes: Sequence[str], cls: int | str) -> int:
    """A class given by index or by name, as an index; EvaluationError naming the classes otherwise."""
    if isinstance(cls, (int, np.integer)) and not isinstance(cls, bool):
        if 0 <= cls < len(classes):
            return int(cls)
    elif str(cls) in classes:
        return list(classes).index(str(cls))
    raise EvaluationError(f"unknown class {cls!r}; the classes are {', '.join(classes)} "
                          f"(or their indices 0-{len(classes) - 1})")


def cell_images(evaluation: RunEvaluation, true_class: int | str, predicted_class: int | str
                ) -> tuple[dict[str, Any], ...]:
    """The images behind one cell of the confusion matrix, most confident first: those of `true_class`
    predicted as `predicted_class` (on the diagonal, the ones the model got right).

    Each is a dict of path, true, predicted and confidence (the probability of the predicted class).
    """
    t, p = class_index(evaluation.classes, true_class), class_index(evaluation.classes, predicted_class)
    if evaluation.n_images and not evaluation.y_pred:
        raise EvaluationError("this evaluation kept no per-image predictions; evaluate the run again")
    hits = [i for i, (yt, yp) in enumerate(zip(evaluation.y_true, evaluation.y_pred)) if yt == t and yp == p]
    hits.sort(key=lambda i: -evaluation.confidence[i])
    return tuple({"path": evaluation.paths[i], "true": evaluation.classes[t], "predicted": evaluation.classes[p],
                  "confidence": evaluation.confidence[i]} for i in hits)


# ------------------------------------------------------------------------------------ two runs compared
COMPARED_METRICS = ("accuracy", "macro_f1", "macro_precision", "macro_recall", "top3_accuracy", "top5_accuracy",
                    "log_loss", "ece")
LOWER_IS_BETTER = ("log_loss", "ece")


@dataclass(frozen=True)
class RunComparison:
    """Two evaluations side by side, and McNemar's paired test when they scored the same images."""

    run_a: str
    run_b: str
    rows: tuple[dict[str, Any], ...]  # metric, a, b, difference (b - a), a_interval, b_interval
    paired: McNemarResult | None  # None when the runs were not evaluated on the same images
    reason: str  # what the paired test says, or why there is none
    n_common: int  # images both were evaluated on

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def compare_evaluations(a: RunEvaluation, b: RunEvaluation) -> RunComparison:
    """Metrics of two runs side by side; McNemar's test when both scored the same images with the same labels.

    Images are matched by path, so two runs on the same stored dataset with the same split (seed and
    fractions) are comparable whatever order they predicted in.
    """
    rows = tuple({"metric": m, "a": a.metrics[m], "b": b.metrics[m], "difference": b.metrics[m] - a.metrics[m],
                  "a_interval": a.intervals.get(m), "b_interval": b.intervals.get(m)}
                 for m in COMPARED_METRICS if m in a.metrics and m in b.metrics)
    common = set(a.paths) & set(b.paths)
    names = f"run {a.run_id} ({a.split}) and run {b.run_id} ({b.split})"
    if tuple(a.classes) != tuple(b.classes):
        return RunComparison(a.run_id, b.run_id, rows, None, f"{names} predict different classes "
                             f"({', '.join(a.classes)} vs {', '.join(b.classes)}): no paired test is possible.",
                             len(common))
    if not a.paths or set(a.paths) != set(b.paths):
        return RunComparison(a.run_id, b.run_id, rows, None, (
            f"{names} were evaluated on different images ({a.n_images} and {b.n_images}, {len(common)} in "
            "common): McNemar's paired test needs the same images. Train both on the same dataset with the same "
            "split seed and fractions to compare them image by image."), len(common))
    where = {path: i for i, path in enumerate(b.paths)}
    order = [where[path] for path in a.paths]
    y_true_b = np.asarray(b.y_true)[order]
    if not np.array_equal(np.asarray(a.y_true), y_true_b):
        return RunComparison(a.run_id, b.run_id, rows, None, f"{names} label the same images differently: "
                             "no paired test is possible.", len(common))
    test = mcnemar(np.asarray(a.y_true), np.asarray(a.y_pred), np.asarray(b.y_pred)[order], a.run_id, b.run_id)
    if test.method == "no discordant images":
        said = "both runs get exactly the same images right: no difference."
    elif test.significant():
        better = a.run_id if test.a_only_correct > test.b_only_correct else b.run_id
        said = f"run {better} is better, a difference unlikely to be chance."
    else:
        said = "the difference could be chance; more test images would settle it."
    reason = (f"McNemar's test on the same {len(order)} images: {test.a_only_correct} right only for run "
              f"{a.run_id}, {test.b_only_correct} only for run {b.run_id}; p = {test.p_value:.3g} ({test.method}): "
              f"{said}")
    identical = (np.array_equal(np.asarray(a.y_pred), np.asarray(b.y_pred)[order])
                 and len(a.confidence) == len(b.confidence)
                 and np.allclose(np.asarray(a.confidence), np.asarray(b.confidence)[order], rtol=0, atol=1e-6))
    why = _why_alike(a, b, identical, len(order))
    return RunComparison(a.run_id, b.run_id, rows, test, f"{why} {reason}" if why else reason, len(common))


def _why_alike(a: RunEvaluation, b: RunEvaluation, identical: bool, n: int) -> str:
    """Why two runs may predict alike: both saved their linear probe rather than a fine-tuned model (the same
    frozen pretrained trunk, a linear classifier fitted alike on the same training images), or the same weights."""
    probes = [e.run_id for e in (a, b) if e.kept == PROBE]
    if len(probes) == 2 and identical:
        return (f"Both runs' saved models are the same linear probe: neither run's fine-tuning beat its probe on "
                "validation, so each kept the frozen pretrained model with a linear classifier fitted on the same "
                f"training images, and the two give identical predictions and confidences on all {n} images. There "
                "is nothing to tell apart; to compare fine-tuning recipes, change what makes fine-tuning beat the "
                "probe (more epochs, another learning rate or freeze ratio).")
    if identical:
        return (f"The two saved models give identical predictions and confidences on all {n} images: they are the "
                "same weights (the same checkpoint, or the same linear probe), so there is nothing to tell apart.")
    if len(probes) == 2:
        return ("Both runs kept their linear probe (their fine-tuning did not beat it on validation): this compares "
                "the two probes, not fine-tuning.")
    if probes:
        return (f"Run {probes[0]} kept its linear probe (its fine-tuning did not beat it on validation): this "
                "compares that probe with the other run's model.")
    return ""


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
    evaluation = summarize(pred, run_id, split, recorded_baseline(store, run_id, split))
    return dataclasses.replace(evaluation, kept=str(meta.get("kept") or ""))


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


