"""Validation scores the loop decides on (the best epoch, early stopping, a stage's revert, the WiSE-FT
mix): `monitor_score` of a validation pass, higher is better, and `better`, which compares two of them.
"""
from __future__ import annotations


def monitor_score(metrics: dict[str, float], monitor: str) -> list[float]:
    """Higher is better: the monitored metric, then the negated val loss to break ties."""
    loss = metrics["val_loss"]
    return [-loss] if monitor == "val_loss" else [metrics[monitor], -loss]


def better(score: list[float], than: list[float], tol: float = 1e-6) -> bool:
    """Whether `score` beats `than` (compared in order; differences within `tol` are ties)."""
    if not than:
        return True
    for a, b in zip(score, than):
        if a > b + tol:
            return True
        if a < b - tol:
            return False
    return False
