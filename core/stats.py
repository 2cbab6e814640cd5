"""Statistics for comparing models honestly: bootstrap intervals, McNemar's test, calibration.

Everything here takes plain arrays (true labels, predicted labels, probabilities), so the same numbers are
computed one way for the fine-tuned model, every baseline and every bake-off candidate.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np

LEVEL = 0.95  # the confidence level of every interval we report
N_BOOT = 1000  # bootstrap resamples: enough for a stable 95% percentile interval
_CHUNK_CELLS = 2_000_000  # resamples are drawn in chunks of at most this many (resample, image) cells


# ------------------------------------------------------------------------------------------ bootstrap
def bootstrap_intervals(y_true, y_pred, num_classes: int, probs: np.ndarray | None = None, n_boot: int = N_BOOT,
                        level: float = LEVEL, seed: int = 0) -> dict[str, tuple[float, float]]:
    """Percentile bootstrap intervals of accuracy, macro-F1 (and log loss when `probs` is given).

    The images are resampled with replacement; macro-F1 averages over all `num_classes` labels with F1 = 0
    for a label never seen nor predicted, exactly as `core.metrics.classification_metrics` computes it.
    """
    y_true, y_pred = np.asarray(y_true, dtype=np.int64), np.asarray(y_pred, dtype=np.int64)
    n = len(y_true)
    if n == 0 or n_boot <= 0:
        return {}
    losses = None
    if probs is not None:
        losses = -np.log(np.asarray(probs)[np.arange(n), y_true] + 1e-12)
    rng = np.random.default_rng(seed)
    acc, f1, ll = [], [], []
    chunk = max(1, _CHUNK_CELLS // n)
    for start in range(0, n_boot, chunk):
        b = min(chunk, n_boot - start)
        idx = rng.integers(0, n, size=(b, n))
        t, p = y_true[idx], y_pred[idx]
        correct = t == p
        acc.append(correct.mean(axis=1))
        offsets = np.arange(b)[:, None] * num_classes
        cells = b * num_classes
        tp = np.bincount((offsets + t).ravel(), weights=correct.ravel(), minlength=cells).reshape(b, num_classes)
        support = np.bincount((offsets + t).ravel(), minlength=cells).reshape(b, num_classes)
        predicted = np.bincount((offsets + p).ravel(), minlength=cells).reshape(b, num_classes)
        denom = support + predicted
        f1.append(np.divide(2 * tp, denom, out=np.zeros_like(tp), where=denom > 0).mean(axis=1))
        if losses is not None:
            ll.append(losses[idx].mean(axis=1))
    out = {"accuracy": _percentiles(np.concatenate(acc), level), "macro_f1": _percentiles(np.concatenate(f1), level)}
    if ll:
        out["log_loss"] = _percentiles(np.concatenate(ll), level)
    return out


def bootstrap_mean_interval(values, n_boot: int = N_BOOT, level: float = LEVEL, seed: int = 0
                            ) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of per-image values (e.g. the cost of each prediction)."""
    values = np.asarray(values, dtype=np.float64)
    n = len(values)
    if n == 0 or n_boot <= 0:
        return (float("nan"), float("nan"))
    rng = np.random.default_rng(seed)
    chunk = max(1, _CHUNK_CELLS // n)
    means = [values[rng.integers(0, n, size=(min(chunk, n_boot - s), n))].mean(axis=1)
             for s in range(0, n_boot, chunk)]
    return _percentiles(np.concatenate(means), level)


def _percentiles(samples: np.ndarray, level: float) -> tuple[float, float]:
    tail = (1.0 - level) / 2 * 100
    lo, hi = np.percentile(samples, [tail, 100 - tail])
    return (float(lo), float(hi))


def overlaps(a: tuple[float, float], b: tuple[float, float]) -> bool:
    return a[0] <= b[1] and b[0] <= a[1]


# ------------------------------------------------------------------------------------------- McNemar
@dataclass(frozen=True)
class McNemarResult:
    """McNemar's test on the images where exactly one of two models is right (same images for both)."""

    model_a: str
    model_b: str
    a_only_correct: int  # images model A gets right and model B wrong
    b_only_correct: int
    statistic: float  # exact test: the smaller discordant count; otherwise the chi-square statistic
    p_value: float  # two-sided
    method: str  # "exact binomial" below 25 discordant images, else "chi-square, continuity-corrected"

    def significant(self, alpha: float = 0.05) -> bool:
        return self.p_value < alpha

    def describe(self) -> str:
        """One sentence: the discordant counts and the p-value, for reports and pages."""
        return (f"McNemar's test, {self.model_a} vs {self.model_b}: {self.a_only_correct} images right only for "
                f"{self.model_a}, {self.b_only_correct} only for {self.model_b}; p = {self.p_value:.3g} "
                f"({self.method}).")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def mcnemar(y_true, pred_a, pred_b, model_a: str = "a", model_b: str = "b") -> McNemarResult:
    """Do two models' error rates differ on the same test images? (McNemar 1947; exact below 25 pairs)."""
    from scipy.stats import binom, chi2

    y_true, pred_a, pred_b = (np.asarray(v) for v in (y_true, pred_a, pred_b))
    a_ok, b_ok = pred_a == y_true, pred_b == y_true
    b, c = int((a_ok & ~b_ok).sum()), int((~a_ok & b_ok).sum())
    if b + c == 0:
        return McNemarResult(model_a, model_b, b, c, 0.0, 1.0, "no discordant images")
    if b + c < 25:
        p = min(1.0, 2.0 * float(binom.cdf(min(b, c), b + c, 0.5)))
        return McNemarResult(model_a, model_b, b, c, float(min(b, c)), p, "exact binomial")
    stat = (abs(b - c) - 1) ** 2 / (b + c)
    return McNemarResult(model_a, model_b, b, c, float(stat), float(chi2.sf(stat, 1)),
                         "chi-square, continuity-corrected")


# --------------------------------------------------------------------------------------- calibration
@dataclass(frozen=True)
class Calibration:
    """How far confidence is from accuracy: expected calibration error and the reliability diagram's bins."""

    ece: float  # sum over bins of (share of images) * |accuracy - mean confidence|
    bins: tuple[dict[str, Any], ...]  # lower, upper, count, accuracy, confidence (None in an empty bin)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def calibration(probs: np.ndarray, y_true, n_bins: int = 15) -> Calibration:
    """ECE with `n_bins` equal-width confidence bins (Guo et al. 2017), confidence = top probability."""
    probs, y_true = np.asarray(probs), np.asarray(y_true)
    n = len(y_true)
    if n == 0:
        return Calibration(0.0, ())
    confidence = probs.max(axis=1)
    correct = (probs.argmax(axis=1) == y_true).astype(np.float64)
    # bins are (lower, upper]; a confidence of exactly 0 falls in the first
    index = np.clip(np.ceil(confidence * n_bins).astype(np.int64) - 1, 0, n_bins - 1)
    count = np.bincount(index, minlength=n_bins)
    acc = np.bincount(index, weights=correct, minlength=n_bins)
    conf = np.bincount(index, weights=confidence, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        acc_b, conf_b = acc / count, conf / count
    ece = float(np.sum(np.where(count > 0, np.abs(acc_b - conf_b), 0.0) * count) / n)
    bins = tuple({"lower": i / n_bins, "upper": (i + 1) / n_bins, "count": int(count[i]),
                  "accuracy": float(acc_b[i]) if count[i] else None,
                  "confidence": float(conf_b[i]) if count[i] else None} for i in range(n_bins))
    return Calibration(ece, bins)


# ------------------------------------------------------------------------------------------ proportions
def wilson_interval(successes: int, n: int, level: float = LEVEL) -> tuple[float, float]:
    """Wilson score interval of a proportion (successes of n), e.g. an accuracy from n labelled predictions: unlike
    the normal approximation it stays inside [0, 1] and is not zero-width at 0 or n. (nan, nan) when n is 0."""
    from statistics import NormalDist  # not scipy.stats: importing it costs seconds in a cron check

    if n <= 0:
        return (float("nan"), float("nan"))
    z = NormalDist().inv_cdf(0.5 + level / 2)
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    lo = 0.0 if successes <= 0 else max(0.0, centre - half)  # exact at the ends (no 1e-17 of float noise)
    hi = 1.0 if successes >= n else min(1.0, centre + half)
    return (float(lo), float(hi))


def difference_interval(successes_a: int, n_a: int, successes_b: int, n_b: int, level: float = LEVEL
                        ) -> tuple[float, float]:
    """Interval of p_b - p_a for two INDEPENDENT proportions (e.g. the two arms of an A/B test): Newcombe's hybrid
    score method (1998, method 10) from each arm's Wilson interval. For paired data (both models on the same
    images) use bootstrap_mean_interval of the per-image differences instead."""
    if n_a <= 0 or n_b <= 0:
        return (float("nan"), float("nan"))
    pa, pb = successes_a / n_a, successes_b / n_b
    (la, ua), (lb, ub) = wilson_interval(successes_a, n_a, level), wilson_interval(successes_b, n_b, level)
    d = pb - pa
    return (float(d - np.sqrt((pb - lb) ** 2 + (ua - pa) ** 2)), float(d + np.sqrt((ub - pb) ** 2 + (pa - la) ** 2)))
