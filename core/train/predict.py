"""A model's predictions on a split: the evaluation pass the loop validates and reports with, at the
evaluation crop, in the run's micro-batches, with the mirror image averaged in when test-time augmentation
is on. ``core.train.loop``'s ``Trainer._predict`` calls it.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from core.model.preprocess import PreprocessSpec
from core.train.batches import BatchSource
from core.train.memory import micro_batches


@torch.inference_mode()
def predict(model: torch.nn.Module, source: BatchSource, pre: PreprocessSpec, device: torch.device,
            amp: torch.dtype | None, accumulate: int, tta: bool, channels_last: bool,
            loss_fn: torch.nn.Module) -> tuple[np.ndarray, np.ndarray, float]:
    """(true labels, predicted labels, mean `loss_fn`) of `model` on a split; `amp`: the autocast dtype, or
    None for fp32; `accumulate`: micro-batches per batch; `tta`: average in the mirror image's logits."""
    model.eval()
    total_loss, preds, labels = 0.0, [], []
    for images, y in source.batches():
        x = pre.eval_input(images)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        parts = []
        for part in micro_batches(len(x), accumulate):
            with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
                logits = model(x[part]).float()
                if tta:  # the mirror image's logits averaged in
                    logits = (logits + model(torch.flip(x[part], dims=[3])).float()) / 2
            parts.append(logits)
        logits = parts[0] if len(parts) == 1 else torch.cat(parts)
        total_loss += float(loss_fn(logits, y)) * len(y)
        preds.append(logits.argmax(1).cpu())
        labels.append(y.cpu())
    if not labels:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), math.nan
    y_true = torch.cat(labels).numpy()
    return y_true, torch.cat(preds).numpy(), total_loss / len(y_true)
