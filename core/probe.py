"""The baseline every run records: frozen pretrained features with a fitted linear head (a linear probe).

The probe's head is also the fine-tune's starting head (LP-FT, Kumar et al. 2022): fine-tuning from a
fitted head instead of a random one keeps early gradients from damaging the pretrained features. When
trainable BatchNorm layers will normalise with batch statistics, their running statistics are first
re-estimated on the training images (AdaBN, Li et al. 2016) and the head is fitted on those features,
so the head sees at step 1 what it was fitted on.
"""
from __future__ import annotations

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from torch import nn

from .data import BatchSource
from .metrics import classification_metrics


def _inputs(source: BatchSource, channels_last: bool):
    for images, y in source.batches():
        x = source.pre.eval_input(images)
        yield (x.contiguous(memory_format=torch.channels_last) if channels_last else x), y


@torch.inference_mode()
def extract_features(model, source: BatchSource, amp_dtype=None, channels_last: bool = True
                     ) -> tuple[np.ndarray, np.ndarray]:
    """(features, labels) of a split through the frozen trunk (+ adapter), eval preprocessing, no augmentation."""
    model.eval()
    feats, labels = [], []
    for x, y in _inputs(source, channels_last):
        with torch.autocast(source.device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
            f = model.forward_features(x)
        feats.append(f.float().cpu().numpy())
        labels.append(y.cpu().numpy())
    if not feats:
        return np.zeros((0, 0), np.float32), np.zeros((0,), np.int64)
    return np.concatenate(feats), np.concatenate(labels)


@torch.no_grad()
def recalibrate_batchnorm(model, source: BatchSource, amp_dtype=None, channels_last: bool = True) -> int:
    """Re-estimate the running statistics of the BatchNorm layers that train with batch statistics.

    Which layers those are is what `model.train()` decides (frozen ones stay in eval mode). Returns how
    many layers were re-estimated; 0 means nothing to do.
    """
    model.train()
    layers = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training]
    momenta = [m.momentum for m in layers]
    for m in layers:
        m.reset_running_stats()
        m.momentum = None  # a cumulative average over the whole pass
    if layers:
        for x, _ in _inputs(source, channels_last):
            with torch.autocast(source.device.type, dtype=amp_dtype or torch.float32,
                                enabled=amp_dtype is not None):
                model.forward_features(x)
    for m, momentum in zip(layers, momenta):
        m.momentum = momentum
    model.eval()
    return len(layers)


def standardisation(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-feature (mean, scale) with a floor on the scale (a quarter of the median): near-constant
    features (dead ReLU6 channels) would otherwise get huge weights that blow up the moment augmentation
    moves them."""
    std = x.std(0)
    return x.mean(0), np.maximum(std, 0.25 * float(np.median(std[std > 0])) if (std > 0).any() else 1.0)


def fit_linear_head(x_train: np.ndarray, y_train: np.ndarray, num_classes: int, seed: int = 0):
    """Logistic regression on standardised features, folded into (weight, bias) of an nn.Linear, and a
    predict function for new features."""
    mean, scale = standardisation(x_train)
    clf = LogisticRegression(C=0.5, max_iter=500, random_state=seed)
    clf.fit((x_train - mean) / scale, y_train)
    # fold the standardisation into the linear layer: W' = W / sigma, b' = b - W' . mu; classes absent
    # from train get a zero row and a very low bias
    weight = np.zeros((num_classes, x_train.shape[1]), np.float32)
    bias = np.full((num_classes,), -10.0, np.float32)
    coef, intercept = clf.coef_, clf.intercept_
    if len(clf.classes_) == 2:  # scikit-learn stores one row for binary problems
        coef, intercept = np.vstack([-coef / 2, coef / 2]), np.array([-intercept[0] / 2, intercept[0] / 2])
    w = coef / scale
    weight[clf.classes_] = w
    bias[clf.classes_] = intercept - w @ mean
    return torch.from_numpy(weight), torch.from_numpy(bias), lambda x: clf.predict((x - mean) / scale)


def linear_probe(model, train: BatchSource, val: BatchSource, test: BatchSource, num_classes: int,
                 amp_dtype=None, seed: int = 0, channels_last: bool = True
                 ) -> tuple[dict[str, float], torch.Tensor, torch.Tensor]:
    """Fit logistic regression on frozen train features; returns (val/test metrics, head weight, head bias)."""
    x_train, y_train = extract_features(model, train, amp_dtype, channels_last)
    weight, bias, predict = fit_linear_head(x_train, y_train, num_classes, seed)
    metrics: dict[str, float] = {}
    for name, source in (("val", val), ("test", test)):
        if len(source):
            x, y = extract_features(model, source, amp_dtype, channels_last)
            metrics.update(classification_metrics(y, predict(x), num_classes, f"{name}_"))
    return metrics, weight, bias
