"""The baseline every run records: frozen pretrained features with a fitted linear head (a linear probe).

The probe's head is also the fine-tune's starting head (LP-FT, Kumar et al. 2022): fine-tuning from a
fitted head instead of a random one keeps early gradients from damaging the pretrained features. When
trainable BatchNorm layers will normalise with batch statistics, their running statistics are first
re-estimated on the training images (AdaBN, Li et al. 2016) and the head is fitted on those features,
so the head sees at step 1 what it was fitted on. ``set_starting_head`` sets the head fine-tuning starts from.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from core.config import TrainConfig
from core.metrics import classification_metrics
from core.train.augment import augment_batch
from core.train.batches import BatchSource


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


@torch.inference_mode()
def extract_augmented_features(model, source: BatchSource, spec, views: int, seed: int, amp_dtype=None,
                               channels_last: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """(features, labels) of `views` augmented copies of every image, as training will show them.

    A probe fitted on un-augmented views is brittle: on 420 digits it was right on every training image
    at the evaluation crop and on 68% of the same images through the training augmentation, so
    fine-tuning from it starts with a head that is wrong on most of what it is shown.
    """
    model.eval()
    generator = torch.Generator(device=source.device).manual_seed(seed * 15485863 + 1)
    feats, labels = [], []
    for _ in range(views):
        for images, y in source.batches():
            x = augment_batch(images, spec, source.pre, generator)
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with torch.autocast(source.device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
                feats.append(model.forward_features(x).float().cpu().numpy())
            labels.append(y.cpu().numpy())
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


def fit_logistic(x: np.ndarray, y: np.ndarray, num_classes: int, c: float = 0.5,
                 device: torch.device | str | None = None, max_iter: int = 100) -> tuple[np.ndarray, np.ndarray]:
    """Multinomial logistic regression, scikit-learn's objective (C * summed cross-entropy + ||W||^2 / 2, the
    intercept unpenalised), minimised by full-batch L-BFGS in torch on `device` (default: the CPU).

    Returns (coef (num_classes, D), intercept (num_classes,)). Classes absent from `y` get a zero row and a
    very low intercept. Deterministic (it starts from zeros). scikit-learn's lbfgs took 3.3 s and 97
    iterations on 1,259 digits x 1,280 lite0 features here; this reaches a lower objective in 100
    iterations in 0.25 s on the same two cores, and runs on the GPU when training does.
    """
    present = np.unique(y)
    coef = np.zeros((num_classes, x.shape[1]), np.float32)
    intercept = np.full((num_classes,), -10.0, np.float32)
    if len(present) < 2:  # one class: predict it
        intercept[present] = 0.0
        return coef, intercept
    index = np.full(num_classes, -1)
    index[present] = np.arange(len(present))
    dev = torch.device(device) if device is not None else torch.device("cpu")
    with torch.enable_grad():  # callers may sit inside inference_mode
        xs = torch.as_tensor(x, dtype=torch.float32, device=dev)
        ys = torch.as_tensor(index[y], dtype=torch.long, device=dev)
        w = torch.zeros(x.shape[1], len(present), device=dev, requires_grad=True)
        b = torch.zeros(len(present), device=dev, requires_grad=True)
        opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=max_iter, history_size=20, line_search_fn="strong_wolfe",
                                tolerance_grad=1e-6, tolerance_change=1e-9)

        def objective() -> torch.Tensor:
            opt.zero_grad()
            loss = c * nn.functional.cross_entropy(xs @ w + b, ys, reduction="sum") + 0.5 * (w * w).sum()
            loss.backward()
            return loss

        opt.step(objective)
    coef[present] = w.detach().T.cpu().numpy()
    intercept[present] = b.detach().cpu().numpy()
    return coef, intercept


def fit_linear_head(x_train: np.ndarray, y_train: np.ndarray, num_classes: int, seed: int = 0,
                    device: torch.device | str | None = None):
    """Logistic regression on standardised features, folded into (weight, bias) of an nn.Linear, and a
    predict function for new features. (`seed` is kept for callers; the fit is deterministic.)"""
    mean, scale = standardisation(x_train)
    coef, intercept = fit_logistic((x_train - mean) / scale, y_train, num_classes, device=device)
    # fold the standardisation into the linear layer: W' = W / sigma, b' = b - W' . mu
    weight = (coef / scale).astype(np.float32)
    bias = (intercept - weight @ mean).astype(np.float32)
    return (torch.from_numpy(weight), torch.from_numpy(bias),
            lambda x: (((x - mean) / scale) @ coef.T + intercept).argmax(1))


def linear_probe(model, train: BatchSource, val: BatchSource, test: BatchSource, num_classes: int,
                 amp_dtype=None, seed: int = 0, channels_last: bool = True
                 ) -> tuple[dict[str, float], torch.Tensor, torch.Tensor]:
    """Fit logistic regression on frozen train features; returns (val/test metrics, head weight, head bias).
    The head is fitted on features under `amp_dtype`; val and test are scored in fp32, as the saved probe
    computes when evaluated or exported."""
    x_train, y_train = extract_features(model, train, amp_dtype, channels_last)
    weight, bias, predict = fit_linear_head(x_train, y_train, num_classes, seed, train.device)
    metrics: dict[str, float] = {}
    for name, source in (("val", val), ("test", test)):
        if len(source):
            x, y = extract_features(model, source, None, channels_last)
            metrics.update(classification_metrics(y, predict(x), num_classes, f"{name}_"))
    return metrics, weight, bias


def set_head(model, weight: torch.Tensor, bias: torch.Tensor) -> None:
    """Load a fitted (weight, bias) into the model's linear head, on the head's device."""
    with torch.no_grad():
        model.head.weight.copy_(weight.to(model.head.weight.device))
        model.head.bias.copy_(bias.to(model.head.bias.device))


def set_starting_head(model, cfg: TrainConfig, train: BatchSource, fresh_head: dict[str, torch.Tensor],
                      num_classes: int, amp_dtype=None) -> None:
    """The head fine-tuning starts from (`cfg.head_init`): a fresh one ("random": `fresh_head`), or the
    probe's (LP-FT), refitted on re-estimated statistics where trainable BatchNorm layers will normalise
    with batch statistics ("augmented_probe": refitted on augmented views of the training images)."""
    if cfg.head_init == "random":
        model.head.load_state_dict(fresh_head)
        return
    if cfg.head_init == "augmented_probe":
        recalibrate_batchnorm(model, train, amp_dtype, cfg.channels_last)
        x_train, y_train = extract_augmented_features(model, train, cfg.augment, cfg.probe_views, cfg.seed,
                                                      amp_dtype, cfg.channels_last)
    elif recalibrate_batchnorm(model, train, amp_dtype, cfg.channels_last):
        x_train, y_train = extract_features(model, train, amp_dtype, cfg.channels_last)
    else:
        return
    set_head(model, *fit_linear_head(x_train, y_train, num_classes, cfg.seed, train.device)[:2])
