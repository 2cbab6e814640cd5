"""The run advisor: reads a run's settings and curves the way a practitioner does, and says what it sees.

Each piece of advice names what is seen with its evidence in numbers and epochs, and the action to take.
Pure functions over plain data (a `TrainConfig.to_dict()`, the audit's class counts and the per-epoch rows
of a JobSnapshot), so the Configure page, the report and the CLI all give the same advice.

`advise_setup` needs no curves: the Configure page shows it before training. It must never contradict
`core.plan.suggest.suggest_settings`: it never warns about a setting that the suggestion would set. Focal loss is
suggested at the same `IMBALANCE_WARN_RATIO` this module warns at, and the imbalance warning is about
plain cross-entropy only, so after applying the suggestion there is no imbalance warning. The settings an
advice proposes are in `evidence["suggested"]`, so that promise is checked by a test.
"""
from __future__ import annotations

import dataclasses
import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from core.config import TrainConfig
from core.data.audit import IMBALANCE_WARN_RATIO

# --- setup: a tiny dataset with (nearly) the whole network unfrozen
TINY_PER_CLASS = 100  # fewer images per class than this cannot retrain a whole ImageNet trunk
TINY_TOTAL = 1_000  # ... nor can fewer than this in all, however few classes
TINY_FREEZE = 0.25  # below this share frozen, nearly every layer's pretrained features are open to overwriting
DEFAULT_FREEZE = TrainConfig().freeze_ratio  # what to go back to (0.75): read from TrainConfig, never retyped
# --- curves
OVERFIT_RISE = 0.10  # val loss this far above its minimum is more than epoch-to-epoch noise
OVERFIT_EPOCHS = 2  # consecutive rises: one rise alone is noise
MAX_FREEZE_ADVISED = 0.9  # freezing more than this leaves too little to fine-tune; probe instead
BOUNCE_WINDOW = 6  # the recent epochs judged for bouncing
BOUNCE_SIGN_CHANGES = 3  # up-down-up-down: a step size too large for the valley, not one bad epoch
BOUNCE_STEP = 0.05  # median |change| as a share of the mean val loss; smaller wiggles are noise
PLATEAU_EPOCHS = 3  # fine-tuning epochs before a flat training loss means anything
PLATEAU_DROP = 0.05  # training loss that fell less than this share from epoch 1 has not started to learn
LEARNED_ACCURACY = 0.95  # a curve flat at this training accuracy has already learned: no plateau to report
LR_HIGH = 3e-3  # above this AdamW on a pretrained trunk tends to diverge or stall
LR_LOW = 1e-5  # below this a short run barely moves the weights
TOL = 1e-6  # differences within this are ties (as the trainer's `better`)


@dataclass(frozen=True)
class Advice:
    code: str  # stable id, e.g. "overfitting"
    severity: str  # "warning" | "info"
    message: str  # what is seen, with the evidence in numbers
    action: str  # what to do
    evidence: dict  # the numbers behind it (JSON-serialisable); "suggested": TrainConfig field -> value

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# --- before training ------------------------------------------------------------------------------
def advise_setup(config: dict, class_counts: Mapping[str, int]) -> tuple[Advice, ...]:
    """Checks that need no curves. `class_counts`: images per class (the audit's, as core.plan.suggest uses)."""
    return tuple(a for a in (_tiny_data_unfrozen(config, class_counts), _imbalance(config, class_counts)) if a)


def _tiny_data_unfrozen(config: dict, class_counts: Mapping[str, int]) -> Advice | None:
    freeze, total, classes = config["freeze_ratio"], sum(class_counts.values()), len(class_counts)
    if not classes or freeze >= TINY_FREEZE:
        return None
    per_class = total / classes
    if per_class >= TINY_PER_CLASS and total >= TINY_TOTAL:
        return None
    return Advice("tiny_data_unfrozen", "warning",
                  f"freeze_ratio {freeze:g} trains {1 - freeze:.0%} of the network on {total} images "
                  f"({per_class:.0f} per class over {classes} classes)",
                  f"Set freeze_ratio {DEFAULT_FREEZE:g} (the default). With fewer than {TINY_PER_CLASS} images "
                  f"per class (or {TINY_TOTAL:,} in all) there is too little data to retrain the whole network: "
                  "the pretrained features get overwritten by ones that fit these few images.",
                  {"freeze_ratio": freeze, "images": total, "classes": classes, "per_class": round(per_class, 1),
                   "suggested": {"freeze_ratio": DEFAULT_FREEZE}})


def _imbalance(config: dict, class_counts: Mapping[str, int]) -> Advice | None:
    if config["loss"] != "cross_entropy" or not class_counts or min(class_counts.values()) <= 0:
        return None
    big, small = max(class_counts, key=class_counts.get), min(class_counts, key=class_counts.get)
    ratio = round(class_counts[big] / class_counts[small], 2)  # rounded as the audit rounds it
    if ratio < IMBALANCE_WARN_RATIO:
        return None
    return Advice("class_imbalance", "warning",
                  f"classes are imbalanced {ratio:g}:1 ({big}: {class_counts[big]} images, {small}: "
                  f"{class_counts[small]}) and the loss is plain cross_entropy",
                  'Set loss="focal" (or "weighted_cross_entropy"): plain cross-entropy lets the large classes '
                  f"drown out the small ones, and the model learns to rarely predict {small}.",
                  {"ratio": ratio, "largest": [big, class_counts[big]], "smallest": [small, class_counts[small]],
                   "loss": config["loss"], "suggested": {"loss": "focal"}})


# --- from the curves -------------------------------------------------------------------------------
def advise_curves(epochs: Sequence[Mapping[str, Any]], config: dict, *, finished: bool,
                  kept: str | None = None) -> tuple[Advice, ...]:
    """Rules over per-epoch rows (row 0: the linear probe); each stays quiet without enough epochs.
    `kept`: the model the finished run kept ("linear probe" or "fine-tuned", core.train.outcome), when known."""
    rows = sorted(epochs, key=lambda r: r.get("epoch", 0))
    tuned = [r for r in rows if r.get("epoch", 0) >= 1]
    found = (_overfitting(rows, tuned, config), _val_loss_bouncing(tuned, config),
             _plateau_from_start(tuned, config), _below_probe(rows, tuned, config, finished, kept))
    return tuple(a for a in found if a)


def _overfitting(rows: list, tuned: list, config: dict) -> Advice | None:
    """1. After val loss's minimum, >= 2 consecutive rises totalling >= 10% while training loss fell."""
    pts = [(r["epoch"], r["val_loss"], r["train_loss"]) for r in tuned if _has(r, "val_loss", "train_loss")]
    if len(pts) < OVERFIT_EPOCHS + 1:
        return None
    best = min(range(len(pts)), key=lambda i: pts[i][1])
    low, run, end = pts[best][1], 0, None
    for i in range(best + 1, len(pts)):
        rising = pts[i][1] > pts[i - 1][1] and pts[i][2] < pts[i - 1][2]  # val up while train down
        run = run + 1 if rising else 0
        if run >= OVERFIT_EPOCHS and pts[i][1] - low >= OVERFIT_RISE * low and pts[i][2] < pts[best][2]:
            end = i  # the latest epoch of a qualifying run
    if end is None:
        return None
    (e0, v0, t0), (e1, v1, t1) = pts[best], pts[end]
    kept = _best_row(rows, config.get("monitor", "val_macro_f1"))
    freeze, patience, lr = config["freeze_ratio"], config["early_stopping_patience"], config["lr"]
    freeze_more = (f"freeze more layers (freeze_ratio {freeze:g} -> {min(MAX_FREEZE_ADVISED, freeze + 0.15):.2g})"
                   if freeze < MAX_FREEZE_ADVISED else f"freeze more layers (freeze_ratio is already {freeze:g})")
    stop = ("turn on early stopping (early_stopping_patience 0 -> 2)" if not patience else
            f"stop earlier (early_stopping_patience {patience} -> 2)" if patience > 2 else "stop earlier")
    return Advice("overfitting", "warning",
                  f"validation loss rose from {v0:.3g} at epoch {e0} to {v1:.3g} at epoch {e1} "
                  f"(+{(v1 - v0) / v0:.0%}) while training loss fell from {t0:.3g} to {t1:.3g}",
                  f"The checkpoint kept is the best by {config.get('monitor', 'val_macro_f1')} (epoch "
                  f"{kept['epoch'] if kept else e0}), not the last. Next time {stop}, add augmentation, "
                  f"{freeze_more}, or lower the learning rate (lr {lr:.2g} -> {lr / 3:.2g}).",
                  {"best_epoch": e0, "best_val_loss": v0, "epoch": e1, "val_loss": v1, "train_loss_from": t0,
                   "train_loss_to": t1, "rise": round((v1 - v0) / v0, 4)})


def _val_loss_bouncing(tuned: list, config: dict) -> Advice | None:
    """2. Over the last <= 6 epochs val loss turned up/down >= 3 times by a median >= 5% of its mean."""
    pts = [(r["epoch"], r["val_loss"]) for r in tuned if _has(r, "val_loss")][-BOUNCE_WINDOW:]
    steps = [b[1] - a[1] for a, b in zip(pts, pts[1:])]
    turns = sum(1 for d0, d1 in zip(steps, steps[1:]) if d0 * d1 < 0)
    if turns < BOUNCE_SIGN_CHANGES:
        return None
    mean, typical = statistics.fmean(v for _, v in pts), statistics.median(abs(d) for d in steps)
    if typical < BOUNCE_STEP * mean:
        return None
    lr = config["lr"]
    return Advice("val_loss_bouncing", "warning",
                  f"validation loss went up and down {turns} times over epochs {pts[0][0]}-{pts[-1][0]} "
                  f"({', '.join(f'{v:.3g}' for _, v in pts)}), by a typical {typical:.3g} per epoch "
                  f"({typical / mean:.0%} of its mean)",
                  f"Halve the learning rate (lr {lr:.2g} -> {lr / 2:.2g}): the steps are too large to settle.",
                  {"epochs": [e for e, _ in pts], "val_loss": [v for _, v in pts], "sign_changes": turns,
                   "median_abs_change": typical, "mean_val_loss": mean, "suggested": {"lr": lr / 2}})


def _plateau_from_start(tuned: list, config: dict) -> Advice | None:
    """3. After >= 3 epochs, training loss fell by no more than 5% from epoch 1 (and is not learned)."""
    pts = [r for r in tuned if _has(r, "train_loss")]
    if len(pts) < PLATEAU_EPOCHS:
        return None
    first, last = pts[0], pts[-1]
    drop = (first["train_loss"] - last["train_loss"]) / first["train_loss"] if first["train_loss"] > 0 else 0.0
    if drop > PLATEAU_DROP or last.get("train_accuracy", last.get("val_accuracy", 0.0)) >= LEARNED_ACCURACY:
        return None
    lr = config["lr"]
    if lr > LR_HIGH:
        why = f"The learning rate is likely too high (lr {lr:.2g}): try lr {lr / 3:.2g}"
    elif lr < LR_LOW:
        why = f"The learning rate is likely too low (lr {lr:.2g}): try lr {lr * 3:.2g}"
    else:
        why = f"The learning rate may be too high or too low (lr {lr:.2g}): try lr {lr * 3:.2g} and lr {lr / 3:.2g}"
    return Advice("plateau_from_start", "warning",
                  f"training loss barely moved in {len(pts)} epochs: {first['train_loss']:.3g} at epoch "
                  f"{first['epoch']}, {last['train_loss']:.3g} at epoch {last['epoch']} (a change of {-drop:+.0%})",
                  f"{why}; or there is too little data to learn from: check the audit (class counts, "
                  "duplicates, mislabelled images).",
                  {"epoch_from": first["epoch"], "epoch_to": last["epoch"], "train_loss_from": first["train_loss"],
                   "train_loss_to": last["train_loss"], "drop": round(drop, 4), "lr": lr})


def _below_probe(rows: list, tuned: list, config: dict, finished: bool, kept: str | None = None) -> Advice | None:
    """4. The best fine-tuned epoch's monitored metric is worse than the linear probe's (epoch 0)."""
    monitor = config.get("monitor", "val_macro_f1")
    probe = next((r for r in rows if r.get("epoch") == 0 and _has(r, monitor, "val_loss")), None)
    best = _best_row(tuned, monitor)
    if probe is None or best is None:
        return None
    sign = -1.0 if monitor == "val_loss" else 1.0  # higher is better, except for the loss
    if sign * (probe[monitor] - best[monitor]) <= TOL:
        return None
    seen = (f"the best fine-tuned epoch ({best['epoch']}) has {monitor} {best[monitor]:.3g}, worse than the "
            f"linear probe's {probe[monitor]:.3g} (epoch 0)")
    evidence = {"monitor": monitor, "probe": probe[monitor], "best_epoch": best["epoch"], "best": best[monitor]}
    retry = ["more layers frozen", "a lower learning rate"]
    if config.get("head_init") == "random":
        retry.append('the probe\'s head to start from (head_init="linear_probe")')
    if not finished:
        return Advice("below_probe", "info", f"so far {seen}",
                      "The probe stays the model unless a later epoch beats it; keep watching.", evidence)
    if kept is not None and kept != "linear probe":
        return Advice("below_probe", "info", seen,
                      "The validation split is too small to tell the two apart, so the fine-tuned model was kept "
                      "(the run's outcome gives the interval); more validation images would settle it.", evidence)
    return Advice("below_probe", "warning", seen,
                  "The linear probe is kept as the model: fine-tuning did not earn its keep on this data. Use the "
                  f"probe, or try again with {', '.join(retry[:-1])} or {retry[-1]}.", evidence)


# --- both, and for the CLI -------------------------------------------------------------------------
def advise_run(epochs: Sequence[Mapping[str, Any]], config: dict, class_counts: Mapping[str, int], *,
               finished: bool, kept: str | None = None) -> tuple[Advice, ...]:
    """Setup advice first, then the curves', one per code."""
    seen: dict[str, Advice] = {}
    for advice in advise_setup(config, class_counts) + advise_curves(epochs, config, finished=finished, kept=kept):
        seen.setdefault(advice.code, advice)
    return tuple(seen.values())


def format_advice(advice: Sequence[Advice]) -> list[str]:
    """One plain-text line per advice: 'WARNING [overfitting] message. action'."""
    return [f"{a.severity.upper()} [{a.code}] {a.message.rstrip('.')}. {a.action}" for a in advice]


def _has(row: Mapping[str, Any], *keys: str) -> bool:
    return all(isinstance(row.get(k), (int, float)) and math.isfinite(row[k]) for k in keys)


def _best_row(rows: Sequence[Mapping[str, Any]], monitor: str) -> Mapping[str, Any] | None:
    """The row the trainer keeps: best monitored value, ties to the lower val loss, then the earlier epoch."""
    best = None
    for r in (r for r in rows if _has(r, monitor, "val_loss")):
        score = [-r["val_loss"]] if monitor == "val_loss" else [r[monitor], -r["val_loss"]]
        if best is None or _better(score, best[0]):
            best = (score, r)
    return best[1] if best else None


def _better(score: list[float], than: list[float]) -> bool:
    for a, b in zip(score, than):
        if abs(a - b) > TOL:
            return a > b
    return False
