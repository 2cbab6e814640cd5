"""Baselines a fine-tuned model must beat, each scored on the same test images as the model itself.

- majority class: always the most frequent training class (its probabilities: the training class shares);
- heuristic: a colour histogram and HOG features (skimage) with logistic regression, no deep learning;
- linear probe: the frozen pretrained trunk with a fitted linear head (what every run records as its
  baseline; recomputed here so that each test image's prediction is known, for McNemar's test and costs);
- from scratch: the same architecture with random weights, trained with the run's own budget (epochs,
  image size, batch size, augmentation, optimiser, schedule, early stopping), every layer trainable.

Each baseline returns class probabilities for the test images: (N, C) rows summing to 1, so every baseline
goes through the same metrics as the fine-tuned model.
"""
from __future__ import annotations

import copy
import math
import time
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F

from core.model.backbones import load_backbone
from core.model.embeddings import embed, resize_uint8
from core.model.preprocess import PreprocessSpec
from core.model.transfer import TransferModel
from core.runtime import resolve_amp, seed_everything
from core.train.augment import augment_batch
from core.train.losses import make_loss
from core.train.probe import fit_logistic, standardisation
from core.train.schedules import make_scheduler

HOG_SIDE = 64  # grayscale side HOG is computed at: 8x8-pixel cells, 2x2-cell blocks -> 1,764 features
COLOUR_BINS = 4  # per channel: a 4x4x4 joint RGB histogram


# ---------------------------------------------------------------------------------- linear classifier
class LinearClassifier:
    """Standardised features -> logistic regression; probabilities over all classes, also unseen ones.

    Standardised with core.train.probe.standardisation (a floor on the scale); fitted by core.train.probe.fit_logistic
    (scikit-learn's objective, L-BFGS in torch).
    """

    def __init__(self, num_classes: int, c: float = 0.5, max_iter: int = 100, seed: int = 0,
                 device: torch.device | str | None = None):
        self.num_classes, self.c, self.max_iter, self.device = num_classes, c, max_iter, device

    def fit(self, x: np.ndarray, y: np.ndarray) -> "LinearClassifier":
        self.mean, self.scale = standardisation(x)
        self.present = np.isin(np.arange(self.num_classes), y)  # classes never seen get probability 0
        self.coef, self.intercept = fit_logistic((x - self.mean) / self.scale, y, self.num_classes, self.c,
                                                 self.device, self.max_iter)
        return self

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        logits = ((x - self.mean) / self.scale) @ self.coef.T + self.intercept
        logits = np.where(self.present, logits, -np.inf)
        logits = logits - logits.max(1, keepdims=True)
        p = np.exp(logits)
        return p / p.sum(1, keepdims=True)


def heuristic_features(images: torch.Tensor) -> np.ndarray:
    """Colour histogram (4x4x4 joint RGB, shares) + HOG of the 64 px grayscale image, per uint8 image."""
    from skimage.feature import hog  # lazy: scikit-image's import takes seconds, and only this baseline needs it

    small = resize_uint8(images.cpu(), HOG_SIDE).numpy()  # (N, 3, 64, 64)
    bins = (small // (256 // COLOUR_BINS)).astype(np.int64)
    joint = bins[:, 0] * COLOUR_BINS**2 + bins[:, 1] * COLOUR_BINS + bins[:, 2]
    hist = np.stack([np.bincount(j.ravel(), minlength=COLOUR_BINS**3) for j in joint]) / (HOG_SIDE * HOG_SIDE)
    gray = small[:, 0] * 0.299 + small[:, 1] * 0.587 + small[:, 2] * 0.114
    hogs = np.stack([hog(g, orientations=9, pixels_per_cell=(8, 8), cells_per_block=(2, 2)) for g in gray])
    return np.concatenate([hist, hogs], axis=1).astype(np.float32)


# ------------------------------------------------------------------------------------------ baselines
def majority_class(y_train, num_classes: int, n_test: int) -> np.ndarray:
    """The training class shares for every test image: the argmax is the most frequent training class."""
    counts = np.bincount(np.asarray(y_train, dtype=np.int64), minlength=num_classes).astype(np.float64)
    prior = counts / max(1.0, counts.sum())
    return np.tile(prior, (n_test, 1))


def heuristic(train_images: torch.Tensor, y_train, test_images: torch.Tensor, num_classes: int, seed: int = 0
              ) -> np.ndarray:
    """Colour histogram + HOG with logistic regression."""
    clf = LinearClassifier(num_classes, seed=seed).fit(heuristic_features(train_images), np.asarray(y_train))
    return clf.predict_proba(heuristic_features(test_images))


def linear_probe(trunk: torch.nn.Module, pre: PreprocessSpec, train_images: torch.Tensor, y_train,
                 test_images: torch.Tensor, num_classes: int, device: torch.device,
                 amp_dtype: torch.dtype | None = None, seed: int = 0) -> np.ndarray:
    """Frozen pretrained trunk + logistic regression on its features: fitted on features under `amp_dtype`,
    scored on fp32 features (as a saved probe computes), like the run's own probe (core.train.probe)."""
    x_train = embed(trunk, pre, train_images, device, amp_dtype)
    clf = LinearClassifier(num_classes, seed=seed).fit(x_train, np.asarray(y_train))
    return clf.predict_proba(embed(trunk, pre, test_images, device, None))


def train_from_scratch(config, num_classes: int, pre: PreprocessSpec, train_images: torch.Tensor, y_train,
                       val_images: torch.Tensor, y_val, device: torch.device,
                       progress: Callable[[str], None] = lambda message: None) -> tuple[torch.nn.Module, dict]:
    """The run's architecture from random weights, trained with the run's budget; the best-val-loss weights.

    Same epochs (including progressive-unfreezing stages), batch size, augmentation, loss, optimiser,
    learning rate and schedule as the run's `config` (a TrainConfig), and early stopping on validation
    loss (every epoch here shares one objective, so the loss compares them fairly); all layers train at `lr` (discriminative rates and frozen layers only make sense
    for pretrained weights) and BatchNorm learns its statistics.
    """
    started = time.time()
    seed_everything(config.seed)
    backbone = load_backbone(config.model, pretrained=False)
    model = TransferModel(backbone, num_classes, config.adapter_layers, config.adapter_dim, config.dropout,
                          bn_stats="all").to(device)
    model.freeze_groups(0)
    if config.channels_last:
        model.to(memory_format=torch.channels_last)
    amp = resolve_amp(config.amp, device)
    y_train_t = torch.as_tensor(np.asarray(y_train), dtype=torch.long)
    y_val_t = torch.as_tensor(np.asarray(y_val), dtype=torch.long)
    counts = np.bincount(y_train_t.numpy(), minlength=num_classes).tolist()
    loss_fn = make_loss(config.loss, counts, config.label_smoothing, config.focal_gamma).to(device)
    bs = config.batch_size
    n = len(train_images)
    steps = n // bs if n >= bs else 1
    epochs = config.epochs + config.unfreeze_stages * config.stage_epochs
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay) \
        if config.optimizer == "adamw" else \
        torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay,
                        nesterov=True)
    per_step, plateau = make_scheduler(optimizer, config.schedule, epochs * steps, steps, config.warmup_epochs,
                                       config.step_epochs, config.plateau_patience)
    best_loss, best_state, best_epoch, bad, history = math.inf, None, 0, 0, []
    for epoch in range(epochs):
        model.train()
        order = torch.randperm(n, generator=torch.Generator().manual_seed(config.seed * 7919 + epoch))
        generator = torch.Generator(device=device).manual_seed(config.seed * 104729 + epoch)
        for b in range(steps):
            idx = order[b * bs:(b + 1) * bs]
            x = augment_batch(train_images[idx].to(device), config.augment, pre, generator)
            if config.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
                logits = model(x)
            loss = loss_fn(logits.float(), y_train_t[idx].to(device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if per_step is not None:
                per_step.step()
        val_loss = _loss(model, pre, val_images, y_val_t, device, amp, config.channels_last)
        if plateau is not None:
            plateau.step(val_loss)
        history.append({"epoch": epoch + 1, "val_loss": val_loss})
        progress(f"from scratch: epoch {epoch + 1}/{epochs}, val loss {val_loss:.4f}")
        if val_loss < best_loss - 1e-6:
            best_loss, best_epoch, bad = val_loss, epoch + 1, 0
            best_state = copy.deepcopy(model.state_dict())
        else:
            bad += 1
            if config.early_stopping_patience and bad >= config.early_stopping_patience:
                break
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    return model, {"epochs_run": len(history), "best_epoch": best_epoch, "best_val_loss": best_loss,
                   "seconds": time.time() - started, "history": history}


@torch.inference_mode()
def _loss(model, pre, images, labels, device, amp, channels_last, batch_size: int = 64) -> float:
    model.eval()
    if not len(images):
        return math.inf
    total = 0.0
    for start in range(0, len(images), batch_size):
        x = pre.eval_input(images[start:start + batch_size].to(device))
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
            logits = model(x).float()
        total += float(F.cross_entropy(logits, labels[start:start + batch_size].to(device), reduction="sum"))
    return total / len(images)


def describe() -> dict[str, Any]:
    """One line per baseline, for reports."""
    return {
        "majority class": "always predicts the most frequent training class",
        "colour + HOG": f"{COLOUR_BINS}x{COLOUR_BINS}x{COLOUR_BINS} RGB histogram and HOG at {HOG_SIDE} px, "
                        "logistic regression",
        "linear probe": "frozen pretrained trunk, logistic regression on its features",
        "from scratch": "same architecture from random weights, the run's epochs/image size/recipe",
    }
