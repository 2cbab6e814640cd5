"""The baseline every run records: frozen pretrained features with a fitted linear head (a linear probe).

The probe's head is also the fine-tune's starting head (LP-FT, Kumar et al. 2022): fine-tuning from a
fitted head instead of a random one keeps early gradients from damaging the pretrained features.
"""
from __future__ import annotations

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression

from .data import BatchSource
from .metrics import classification_metrics


@torch.inference_mode()
def extract_features(model, source: BatchSource, amp_dtype=None, channels_last: bool = True
                     ) -> tuple[np.ndarray, np.ndarray]:
    """(features, labels) of a split through the frozen trunk (+ adapter), eval preprocessing, no augmentation."""
    model.eval()
    feats, labels = [], []
    for images, y in source.batches():
        x = source.pre.eval_input(images)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(source.device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
            f = model.forward_features(x)
        feats.append(f.float().cpu().numpy())
        labels.append(y.cpu().numpy())
    if not feats:
        return np.zeros((0, 0), np.float32), np.zeros((0,), np.int64)
    return np.concatenate(feats), np.concatenate(labels)


def linear_probe(model, train: BatchSource, val: BatchSource, test: BatchSource, num_classes: int,
                 amp_dtype=None, seed: int = 0, channels_last: bool = True
                 ) -> tuple[dict[str, float], torch.Tensor, torch.Tensor]:
    """Fit logistic regression on frozen train features; returns (metrics, head weight, head bias)."""
    x_train, y_train = extract_features(model, train, amp_dtype, channels_last)
    # standardise, with a floor on the scale: near-constant features (dead ReLU6 channels) would otherwise
    # get huge weights that blow up the moment augmentation moves them
    mean = x_train.mean(0)
    std = x_train.std(0)
    scale = np.maximum(std, 0.25 * float(np.median(std[std > 0])) if (std > 0).any() else 1.0)
    clf = LogisticRegression(C=0.5, max_iter=500, random_state=seed)
    clf.fit((x_train - mean) / scale, y_train)
    metrics: dict[str, float] = {}
    for name, source in (("val", val), ("test", test)):
        if len(source):
            x, y = extract_features(model, source, amp_dtype, channels_last)
            metrics.update(classification_metrics(y, clf.predict((x - mean) / scale), num_classes, f"{name}_"))
    # fold the standardisation into the linear layer: W' = W / sigma, b' = b - W' . mu; classes absent from train
    # get a zero row and a very low bias
    weight = np.zeros((num_classes, x_train.shape[1]), np.float32)
    bias = np.full((num_classes,), -10.0, np.float32)
    coef, intercept = clf.coef_, clf.intercept_
    if len(clf.classes_) == 2:  # scikit-learn stores one row for binary problems
        coef, intercept = np.vstack([-coef / 2, coef / 2]), np.array([-intercept[0] / 2, intercept[0] / 2])
    w = coef / scale
    weight[clf.classes_] = w
    bias[clf.classes_] = intercept - w @ mean
    return metrics, torch.from_numpy(weight), torch.from_numpy(bias)
