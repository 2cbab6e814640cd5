"""WiSE-FT (Wortsman et al. 2022): the fine-tuned weights mixed with the probe's, w = (1-a) w0 + a w1, the
share a chosen on validation (a=0 is the probe itself, a=1 the fine-tuned model).
"""
from __future__ import annotations

from typing import Callable

import torch
from safetensors.torch import load_file

from core.train.scores import better

WISE_FT_ALPHAS = (1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1, 0.0)  # from the fine-tuned end: ties keep more of it


def wise_ft(model: torch.nn.Module, start_path: str, end_path: str, device: str,
            score: Callable[[], list[float]]) -> float:
    """Load each mix of the weights at `start_path` (the probe) and `end_path` (the best fine-tuning epoch)
    into `model`, from the fine-tuned end, and keep the one `score()` (of the loaded model) rates best; leaves
    the chosen mix loaded and returns its share a."""
    start = load_file(start_path, device=device)
    tuned = load_file(end_path, device=device)
    best_alpha, best = 1.0, None
    for alpha in WISE_FT_ALPHAS:
        model.load_state_dict(interpolate(start, tuned, alpha))
        current = score()
        if best is None or better(current, best):
            best_alpha, best = alpha, current
    model.load_state_dict(interpolate(start, tuned, best_alpha))
    return best_alpha


def interpolate(start: dict[str, torch.Tensor], end: dict[str, torch.Tensor], alpha: float) -> dict[str, torch.Tensor]:
    """(1 - alpha) * start + alpha * end for every floating tensor; counters (BatchNorm's) from `end`."""
    return {k: torch.lerp(start[k], v, alpha) if v.is_floating_point() else v for k, v in end.items()}
