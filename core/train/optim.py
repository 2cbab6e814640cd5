"""What a training stage optimises with: its optimizer (SGD or AdamW over the model's layer-wise parameter
groups), the L2-SP penalty that pulls the trunk toward its pretrained weights instead of weight decay
toward zero, and the exponential moving average of the weights. ``core.train.loop`` builds them per stage.
"""
from __future__ import annotations

import torch
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from core.config import TrainConfig
from core.model.transfer import TransferModel

Pairs = list[tuple[torch.Tensor, torch.Tensor]]


def make_optimizer(model: TransferModel, cfg: TrainConfig, lr: float,
                   anchor: dict[str, torch.Tensor]) -> tuple[torch.optim.Optimizer, Pairs]:
    """The stage's optimizer at `lr`, and the (trainable trunk parameter, its pretrained value) pairs L2-SP
    pulls together (empty when L2-SP is off; `anchor`: the pretrained trunk weights by name)."""
    groups = model.param_groups(lr, cfg.lr_decay, cfg.trunk_lr_ratio)
    pairs: Pairs = []
    if cfg.l2sp:  # the trunk is pulled toward its pretrained weights (the loss's L2-SP term), not toward 0
        for g in groups[1:]:
            g["weight_decay"] = 0.0
        pairs = [(p, anchor[n]) for n, p in model.trunk.named_parameters() if p.requires_grad]
    if cfg.optimizer == "sgd":
        optimizer = torch.optim.SGD(groups, lr=lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                                    nesterov=True)
    else:
        optimizer = torch.optim.AdamW(groups, lr=lr, weight_decay=cfg.weight_decay)
    return optimizer, pairs


def l2sp_penalty(strength: float, pairs: Pairs) -> torch.Tensor:
    """The L2-SP term of the loss: half `strength` times the squared distance from the pretrained weights."""
    return 0.5 * strength * sum(((p - p0) ** 2).sum() for p, p0 in pairs)


def new_ema(model: torch.nn.Module, cfg: TrainConfig, steps_per_epoch: int) -> AveragedModel | None:
    """An exponential moving average of the weights (and BatchNorm statistics), or None when off."""
    if not cfg.ema_epochs:
        return None
    decay = 0.5 ** (1.0 / max(1.0, cfg.ema_epochs * steps_per_epoch))
    return AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)
