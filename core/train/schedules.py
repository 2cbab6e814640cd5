"""Learning-rate schedules as per-step multipliers, plus reduce-on-plateau stepped per epoch."""
from __future__ import annotations

import math

import torch


def lr_multiplier(step: int, total_steps: int, steps_per_epoch: int, schedule: str, warmup_epochs: float = 0.0,
                  step_epochs: int = 3) -> float:
    """The factor applied to every group's base lr at optimizer step `step` (0-based)."""
    if schedule == "cosine":
        warmup = int(warmup_epochs * steps_per_epoch)
        # 1) linear warmup from ~0 so the fresh head does not wreck pretrained features
        if step < warmup:
            return (step + 1) / (warmup + 1)
        # 2) cosine decay from 1 to 0 over the remaining steps
        progress = (step - warmup) / max(1, total_steps - warmup)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    if schedule == "step":  # divide by 10 every `step_epochs` epochs
        return 0.1 ** (step // max(1, step_epochs * steps_per_epoch))
    return 1.0  # "constant", and "plateau" (which changes lrs itself, per epoch)


def make_scheduler(optimizer: torch.optim.Optimizer, schedule: str, total_steps: int, steps_per_epoch: int,
                   warmup_epochs: float, step_epochs: int, plateau_patience: int, head_only_steps: int = 0):
    """A per-step LambdaLR, and for 'plateau' also a ReduceLROnPlateau to step with the val loss.

    `head_only_steps`: the trunk's groups (every group but the first, the head's) stay at lr 0 for this many
    steps, so a fresh head learns from features it cannot yet damage (head warm-up).
    """
    if schedule == "plateau":  # a LambdaLR would reset the reduced lrs every step, so it gets none
        return None, torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="min", factor=0.1,
                                                                patience=plateau_patience)

    def head(s: int) -> float:
        return lr_multiplier(s, total_steps, steps_per_epoch, schedule, warmup_epochs, step_epochs)

    def trunk(s: int) -> float:
        return 0.0 if s < head_only_steps else head(s)

    lambdas = [head] + [trunk] * (len(optimizer.param_groups) - 1)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambdas), None
