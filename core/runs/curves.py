"""A run's metrics as tidy tables for plotting: losses, accuracy/F1 and learning rates on one epoch axis.

The inputs are what a JobSnapshot (core.runs.jobs) carries, live or rebuilt from the run store: per-epoch
rows (`epoch` = epochs completed, so row 0 is the linear-probe baseline), per-step rows
(training loss and the learning rate of every parameter group) and mid-epoch validation rows. Steps
are placed on the epoch axis as step / steps-per-epoch, so every curve shares one x axis.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

COLUMNS = ["x", "value", "series"]


@dataclass(frozen=True)
class RunCurves:
    x_label: str  # "epoch", or "step" when steps cannot be placed on epochs
    loss: pd.DataFrame  # x, value, series ("train loss (batch)", "train loss (epoch)", "val loss")
    scores: pd.DataFrame  # x, value, series ("train accuracy", "val accuracy", "val macro F1")
    lrs: pd.DataFrame  # x, value, series (parameter group name)
    baseline: dict[str, float] = field(default_factory=dict)  # linear-probe val_/test_ metrics

    @property
    def empty(self) -> bool:
        return self.loss.empty and self.scores.empty


def steps_per_epoch(epochs: Sequence[Mapping[str, Any]], total_steps: int = 0, total_epochs: int = 0
                    ) -> float | None:
    """From a live job's totals, else from stored epoch rows (which record the step they ended at)."""
    if total_steps and total_epochs:
        return total_steps / total_epochs
    for row in reversed(epochs):
        if row.get("epoch") and row.get("step"):
            return row["step"] / row["epoch"]
    return None


def run_curves(epochs: Sequence[Mapping[str, Any]], steps: Sequence[Mapping[str, Any]],
               baseline: Mapping[str, float] | None = None, total_steps: int = 0, total_epochs: int = 0
               ) -> RunCurves:
    spe = steps_per_epoch(epochs, total_steps, total_epochs)

    def step_x(row: Mapping[str, Any]) -> float | None:
        return row["step"] / spe if spe else row.get("step")

    def epoch_x(row: Mapping[str, Any]) -> float | None:
        return row["epoch"] if spe else row.get("step")

    batch_rows = [r for r in steps if "loss" in r]
    val_rows = [r for r in steps if "val_loss" in r]  # mid-epoch validation
    loss = _frame([
        *_points(batch_rows, "loss", step_x, "train loss (batch)"),
        *_points(epochs, "train_loss", epoch_x, "train loss (epoch)"),
        *_points(epochs, "val_loss", epoch_x, "val loss"),
        *_points(val_rows, "val_loss", step_x, "val loss"),
    ])
    scores = _frame([
        *_points(epochs, "train_accuracy", epoch_x, "train accuracy"),
        *_points(epochs, "val_accuracy", epoch_x, "val accuracy"),
        *_points(val_rows, "val_accuracy", step_x, "val accuracy"),
        *_points(epochs, "val_macro_f1", epoch_x, "val macro F1"),
        *_points(val_rows, "val_macro_f1", step_x, "val macro F1"),
    ])
    lr_points = []
    for row in batch_rows:
        for key, value in row.items():
            if key.startswith("lr_"):
                lr_points.append((step_x(row), value, key[3:]))
    lrs = _frame(lr_points)
    if not lrs.empty:  # the head first, then the groups from the top of the network down (as their lrs decay)
        depth = lrs.series.map(lambda name: -10**6 if name == "head" else -int(name[5:]) if name[5:].isdigit() else 0)
        lrs = lrs.assign(_depth=depth).sort_values(["_depth", "x"], kind="stable").drop(columns="_depth")
        lrs = lrs.reset_index(drop=True)
    return RunCurves("epoch" if spe else "step", loss, scores, lrs, dict(baseline or {}))


def _points(rows: Iterable[Mapping[str, Any]], key: str, x_of, series: str) -> list[tuple]:
    out = []
    for row in rows:
        value = row.get(key)
        x = x_of(row)
        if isinstance(value, (int, float)) and x is not None:
            out.append((x, float(value), series))
    return out


def _frame(points: list[tuple]) -> pd.DataFrame:
    frame = pd.DataFrame(points, columns=COLUMNS)
    return frame.sort_values(["series", "x"], kind="stable").reset_index(drop=True)


def gradient_frame(rows: Sequence[Mapping[str, Any]], spe: float | None = None) -> pd.DataFrame:
    """Per-group gradient statistics (core.train.gradients) as a tidy table: x (epochs, or steps when `spe` is
    unknown), group, grad_norm, update_ratio; groups in forward order, the head last."""
    points = []
    for row in rows:
        x = row["step"] / spe if spe else row["step"]
        for key, value in row.items():
            if key.startswith("update_ratio/"):
                group = key.split("/", 1)[1]
                points.append((x, group, row.get(f"grad_norm/{group}", 0.0), value))
    frame = pd.DataFrame(points, columns=["x", "group", "grad_norm", "update_ratio"])
    if frame.empty:
        return frame
    order = frame.group.map(lambda g: 10**6 if g == "head" else int(g[5:]) if g[5:].isdigit() else -1)
    return frame.assign(_order=order).sort_values(["_order", "x"], kind="stable").drop(columns="_order") \
        .reset_index(drop=True)


def snapshot_curves(snapshot) -> RunCurves:
    """Curves of a core.runs.jobs.JobSnapshot."""
    return run_curves(snapshot.epochs, snapshot.steps, snapshot.baseline, snapshot.total_steps,
                      snapshot.total_epochs)
