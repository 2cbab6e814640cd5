"""Losses: cross-entropy with label smoothing, class-weighted cross-entropy, focal loss."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class FocalLoss(nn.Module):
    """Focal loss (Lin et al. 2017): down-weights easy examples, for heavily imbalanced data."""

    def __init__(self, gamma: float = 2.0, weight: torch.Tensor | None = None, label_smoothing: float = 0.0):
        super().__init__()
        self.gamma, self.label_smoothing = gamma, label_smoothing
        self.register_buffer("weight", weight)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        ce = F.cross_entropy(logits, target, weight=self.weight, reduction="none",
                             label_smoothing=self.label_smoothing)
        p_true = torch.softmax(logits.float(), dim=1).gather(1, target[:, None]).squeeze(1)
        return ((1 - p_true) ** self.gamma * ce).mean()


def class_weights(counts: list[int]) -> torch.Tensor:
    """Inverse-frequency weights normalised to mean 1; classes absent from train get weight 0."""
    c = torch.tensor(counts, dtype=torch.float32)
    w = torch.where(c > 0, c.sum() / (len(counts) * c.clamp(min=1)), torch.zeros_like(c))
    return w / w[c > 0].mean()


def make_loss(name: str, class_counts: list[int], label_smoothing: float = 0.0, focal_gamma: float = 2.0) -> nn.Module:
    if name == "cross_entropy":
        return nn.CrossEntropyLoss(label_smoothing=label_smoothing)
    if name == "weighted_cross_entropy":
        return nn.CrossEntropyLoss(weight=class_weights(class_counts), label_smoothing=label_smoothing)
    if name == "focal":
        return FocalLoss(focal_gamma, class_weights(class_counts), label_smoothing)
    raise ValueError(f"unknown loss {name!r}; choose cross_entropy, weighted_cross_entropy or focal")
