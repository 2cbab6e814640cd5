"""A cross-validated second opinion on "did fine-tuning beat the probe?" when validation is too small to say.

With fewer than 30 validation images per class, the difference one validation split shows between the best
fine-tuning epoch and the linear probe is mostly noise. This check pools train and val and splits the pool
into K folds (stratified, related images kept together as the run's split keeps them). For each fold it
fine-tunes with the run's own recipe for the run's best epoch count on the other folds (no early stopping,
no selection: the held-out fold is never looked at while training) and fits the probe on the same images;
both predict the held-out fold. Every pool image is then predicted once by each, so the paired difference
is measured on K/(K-1) times the training set instead of on the validation split: about six times as many
images at the default 70/15/15 split. It costs K short trainings on fewer images than the run had.
"""
from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from typing import Callable

import numpy as np

from core.config import TrainConfig
from core.data.split_data import Split, SplitData
from core.train.events import Dispatcher
from core.train.loop import Trainer
from core.train.outcome import Comparison, compare

MAX_POOL = 20_000  # above this many images the check would cost more than the run itself; validation is large anyway


@dataclass(frozen=True)
class CrossvalCheck:
    folds: int
    epochs: int  # fine-tuning epochs per fold
    comparison: Comparison  # fine-tuned minus probe, over every pool image

    def describe(self) -> str:
        c = self.comparison
        return (f"a {self.folds}-fold check on the {c.n} train+val images ({self.epochs} fine-tuning epochs per fold): "
                f"fine-tuned {c.model:.1%}, probe {c.probe:.1%}, difference {c.difference * 100:+.1f} points "
                f"(95% interval {c.interval[0] * 100:+.1f} to {c.interval[1] * 100:+.1f})")


class _FoldTrainer(Trainer):
    """A fold's run: records the held-out fold's predictions of the probe (epoch 0) and of the last epoch."""

    def _close_epoch(self, state, metrics, started, count=True):
        self.last_pred = [int(v) for v in self.val_pred]
        if not count:
            self.probe_pred = self.last_pred
        super()._close_epoch(state, metrics, started, count)


def fold_of(paths: list[str], labels: list[int], groups: list[int], folds: int, seed: int) -> np.ndarray:
    """Fold index per image: groups (related images, duplicates) dealt whole, class by class, round-robin
    from the biggest, so every fold gets a share of every class."""
    rng = np.random.default_rng(seed)
    fold = np.zeros(len(paths), np.int64)
    by_label: dict[int, dict[int, list[int]]] = {}
    for i, (y, g) in enumerate(zip(labels, groups)):
        by_label.setdefault(y, {}).setdefault(g, []).append(i)
    for y in sorted(by_label):
        units = list(by_label[y].values())
        order = rng.permutation(len(units))
        units = sorted((units[k] for k in order), key=len, reverse=True)
        filled = [0] * folds
        for unit in units:
            k = int(np.argmin(filled))
            fold[unit] = k
            filled[k] += len(unit)
    return fold


def crossval_check(config: TrainConfig, data: SplitData, epochs: int, work_dir: str, unit_of: Callable[[str], int],
                   folds: int = 3, should_stop: Callable[[], bool] = lambda: False,
                   progress: Callable[[str], None] = lambda message: None) -> CrossvalCheck | None:
    """The check, or None when it cannot be made (too few images per class for the folds, or stopped)."""
    paths = list(data.train.paths) + list(data.val.paths)
    labels = list(data.train.labels) + list(data.val.labels)
    if len(paths) > MAX_POOL or min(np.bincount(labels, minlength=len(data.classes))) < folds:
        return None
    fold = fold_of(paths, labels, [unit_of(p) for p in paths], folds, config.seed)
    fold_config = config.replace(epochs=max(1, epochs), early_stopping_patience=0, unfreeze_stages=0,
                                 val_every_batches=0, grad_stats=False, wandb=False, tensorboard=False,
                                 wise_ft=False, crossval_folds=0)
    probe_pred = np.zeros(len(paths), np.int64)
    tuned_pred = np.zeros(len(paths), np.int64)
    try:
        for k in range(folds):
            if should_stop():
                return None
            progress(f"cross-validated check: fold {k + 1} of {folds}")
            held, kept = np.flatnonzero(fold == k), np.flatnonzero(fold != k)
            split = SplitData(data.classes, Split(tuple(paths[i] for i in kept), tuple(labels[i] for i in kept)),
                              Split(tuple(paths[i] for i in held), tuple(labels[i] for i in held)), Split((), ()),
                              data.source, data.dataset_id)
            trainer = _FoldTrainer(f"fold{k + 1}", fold_config, split, os.path.join(work_dir, f"fold{k + 1}"),
                                   Dispatcher(), should_stop)
            summary = trainer.run()
            if summary["status"] == "stopped":
                return None
            probe_pred[held], tuned_pred[held] = trainer.probe_pred, trainer.last_pred
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)
    return CrossvalCheck(folds, fold_config.epochs, compare("pool", labels, tuned_pred, probe_pred, config.seed))
