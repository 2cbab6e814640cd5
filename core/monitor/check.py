"""One monitoring pass over a served model: windows, drift, the four alert rules, the alert store brought up to date.

check_model reads the model's champion version (registry alias "champion", else the latest), its bundle's
reference.npz (core.deploy.reference), and the prediction log's served rows OF THAT VERSION in [since, until)
(another version's embeddings come from another network and are not comparable). The rules (MonitorConfig):

  accuracy    with at least `min_labels` labelled predictions in the period, alert when the Wilson 95% interval's
              UPPER bound of the labelled accuracy is below `accuracy_ratio` (0.9) x the validation accuracy: we
              are then 97.5% sure the model does worse than 90% of what it did in validation. (A rule on the point
              estimate alone alerts on ~5% of healthy 30-label periods of a 94% model.)
  confidence  on the latest `recent_rows` predictions (the same sample as drift): mean confidence more than
              `confidence_drop` (0.10) below the validation images' mean, or the share under `low_confidence`
              (0.5) more than `low_share_rise` (0.15) above the validation images' share.
  latency     p99 of the latest `recent_rows` predictions above `latency_factor` (2) x the p99 of the first
              window with at least min_rows predictions (and above `latency_floor_ms`, so 1 ms -> 3 ms jitter
              is no alert), or above `latency_budget_ms` when one is set.
  drift       core.monitor.drift on the latest `recent_rows` embeddings against the reference's val embeddings.

A rule that fires raises (or updates) its alert; one that was evaluated and passed closes it, saying why; one
that could not be evaluated (too few rows or labels, no reference) leaves the alert as it was and says so.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import os
import re
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from core.deploy.predlog import PredictionLog, iso
from core.deploy.reference import Reference, load_reference
from core.deploy.registry import Registry
from core.errors import StudioError
from core.monitor.alerts import Alert, AlertStore
from core.monitor.drift import DriftConfig, DriftResult, detect_drift
from core.monitor.windows import Window, combined, compute_windows, window_bounds, window_embeddings

ALERT, OK, UNKNOWN = "alert", "ok", "not evaluated"
DEFAULT_PERIOD_S = 7 * 86400.0


class MonitorError(StudioError, ValueError):
    """A monitoring request that cannot be answered: a bad period, a model the registry does not hold."""


@dataclass(frozen=True)
class MonitorConfig:
    min_labels: int = 30  # labelled predictions needed before accuracy is judged
    accuracy_ratio: float = 0.9  # alert when the accuracy's upper bound < this x the validation accuracy
    low_confidence: float = 0.5  # a prediction under this top probability is "low confidence"
    confidence_drop: float = 0.10  # alert when mean confidence < the validation mean - this
    low_share_rise: float = 0.15  # ... or the low-confidence share > the validation share + this
    latency_factor: float = 2.0  # alert when recent p99 > this x the first window's p99
    latency_floor_ms: float = 5.0  # ... and above this
    latency_budget_ms: float | None = None  # or when recent p99 > this budget
    recent_rows: int = 500  # the latest predictions confidence, latency and drift are judged on
    min_rows: int = 30  # fewer recent predictions: confidence and latency are not judged
    n_windows: int | None = None  # windows over the period (None: hourly up to two days, daily beyond)
    window_seconds: float | None = None
    drift: DriftConfig = field(default_factory=DriftConfig)

    def __post_init__(self) -> None:
        if not 0 < self.accuracy_ratio <= 1 or not 0 < self.low_confidence < 1 or self.min_labels < 1:
            raise MonitorError("accuracy_ratio in (0, 1], low_confidence in (0, 1) and min_labels >= 1 are needed")
        if self.latency_factor <= 1 or self.recent_rows < self.min_rows or self.min_rows < 1:
            raise MonitorError("latency_factor > 1 and 1 <= min_rows <= recent_rows are needed")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class Finding:
    kind: str  # one of core.monitor.alerts.KINDS
    status: str  # ALERT, OK or UNKNOWN
    sentence: str  # plain English, with the figures
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class MonitorReport:
    model: str
    version: int
    since: float
    until: float
    windows: tuple[Window, ...]
    drift: DriftResult | None  # None without a reference
    findings: tuple[Finding, ...]
    alerts: tuple[Alert, ...]  # open after this check (including ones this check could not evaluate)
    has_reference: bool
    seconds: float

    def sentences(self) -> list[str]:
        head = (f"{self.model} version {self.version}: {sum(w.n for w in self.windows)} served predictions from "
                f"{iso(self.since)} to {iso(self.until)}.")
        return [head] + [f"{f.kind}: {f.sentence}" for f in self.findings]

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "version": self.version, "since": iso(self.since), "until": iso(self.until),
                "has_reference": self.has_reference, "seconds": self.seconds,
                "windows": [w.to_dict() for w in self.windows],
                "drift": None if self.drift is None else self.drift.to_dict(),
                "findings": [f.to_dict() for f in self.findings], "alerts": [a.to_dict() for a in self.alerts],
                "sentences": self.sentences()}


def parse_time(text: str | float | None, now: float | None = None) -> float | None:
    """"7d", "24h", "90m" (that long before now), an ISO date/time (UTC unless it says otherwise) or unix
    seconds -> unix seconds; None stays None."""
    if text is None or isinstance(text, (int, float)):
        return None if text is None else float(text)
    now = time.time() if now is None else now
    s = str(text).strip()
    m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([smhdw])", s.lower())
    if m:
        unit = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}[m.group(2)]
        return now - float(m.group(1)) * unit
    try:
        at = dt.datetime.fromisoformat(s.replace("Z", "+00:00"))
    except ValueError:
        raise MonitorError(f"{text!r} is not a time: give a duration before now (7d, 24h, 30m) or an ISO date "
                           "(2026-03-01 or 2026-03-01T12:00)") from None
    return (at if at.tzinfo else at.replace(tzinfo=dt.timezone.utc)).timestamp()


def check_model(workspace_root: str, model: str, since: str | float | None = None, until: str | float | None = None,
                config: MonitorConfig = MonitorConfig(), log: PredictionLog | None = None) -> MonitorReport:
    """One monitoring pass over `model` (see the module docstring); opens, updates and closes its alerts."""
    started = time.perf_counter()
    now = time.time()
    until_s = parse_time(until, now) or now
    since_s = parse_time(since, now)
    since_s = until_s - DEFAULT_PERIOD_S if since_s is None else since_s
    if since_s >= until_s:
        raise MonitorError(f"the period is empty: since {iso(since_s)} is not before until {iso(until_s)}")
    served = Registry(os.path.join(workspace_root, "registry")).resolve(model)  # NotInRegistry names the models
    reference = load_reference(served.path)
    log = log or PredictionLog.for_workspace(workspace_root)
    bounds = window_bounds(since_s, until_s, config.n_windows, config.window_seconds)
    windows = compute_windows(log, model, bounds, served.version, reference, config.low_confidence)
    recent = _recent(log, model, served.version, since_s, until_s, config)
    drift = None
    if reference is not None:
        production = window_embeddings(log, model, since_s, until_s, served.version, config.recent_rows)
        drift = detect_drift(reference.drift_embeddings(config.drift.min_rows), production, config.drift)
    findings = (_accuracy(windows, reference, config), _confidence(recent, reference, config),
                _latency(recent, windows, config), _drift(drift))
    store = AlertStore(workspace_root)
    for f in findings:
        if f.status == ALERT:
            store.raise_or_update(model, f.kind, f.sentence, {**f.details, "version": served.version})
        elif f.status == OK:
            store.close(model, f.kind, f.sentence)
    return MonitorReport(model, served.version, since_s, until_s, tuple(windows), drift, findings,
                         tuple(store.open_alerts(model)), reference is not None,
                         round(time.perf_counter() - started, 3))


# ------------------------------------------------------------------------------------------------ the rules
def _accuracy(windows: list[Window], ref: Reference | None, config: MonitorConfig) -> Finding:
    total = combined(windows)
    n, k = total["n_labelled"], total["n_correct"]
    if ref is None or ref.val_accuracy is None:
        return Finding("accuracy", UNKNOWN, _NO_REFERENCE, {"n_labelled": n})
    floor = config.accuracy_ratio * ref.val_accuracy
    details = {"n_labelled": n, "n_correct": k, "accuracy": total["accuracy"], "ci": total["accuracy_ci"],
               "val_accuracy": ref.val_accuracy, "baseline": ref.val_accuracy, "floor": floor}  # baseline: retrain's
    if n < config.min_labels:
        return Finding("accuracy", UNKNOWN, f"{f'only {n}' if n else 'no'} labelled predictions in the period; "
                       f"accuracy is judged from "
                       f"{config.min_labels} (send feedback on more predictions)", details)
    acc, (lo, hi) = total["accuracy"], total["accuracy_ci"]
    figure = (f"accuracy on {n} labelled predictions is {_pct(acc)} (95% CI {_pct(lo, False)}-{_pct(hi)}), "
              f"{{}} {_pct(config.accuracy_ratio)} of the validation figure {_pct(ref.val_accuracy)}")
    if hi < floor:
        return Finding("accuracy", ALERT, figure.format("below"), details)
    return Finding("accuracy", OK, figure.format("not clearly below"), details)


def _confidence(recent: dict[str, Any], ref: Reference | None, config: MonitorConfig) -> Finding:
    n = recent["n"]
    if ref is None or ref.mean_confidence is None:
        return Finding("confidence", UNKNOWN, _NO_REFERENCE, {"n": n})
    if n < config.min_rows:
        return Finding("confidence", UNKNOWN, f"only {n} predictions in the period; confidence is judged from "
                       f"{config.min_rows}", {"n": n})
    ref_mean, ref_low = ref.mean_confidence, ref.low_confidence_share(config.low_confidence)
    mean, low = recent["mean_confidence"], recent["low_share"]
    details = {"n": n, "mean_confidence": mean, "low_share": low, "val_mean_confidence": ref_mean,
               "val_low_share": ref_low, "low_confidence": config.low_confidence}
    low_text = (f"{_pct(low)} of them under {config.low_confidence:.2f} confidence (validation "
                f"{_pct(ref_low)})")
    head = f"mean confidence of the latest {n} predictions is {mean:.2f} against {ref_mean:.2f} on validation images"
    if mean < ref_mean - config.confidence_drop:
        return Finding("confidence", ALERT, f"{head}, more than {config.confidence_drop:.2f} lower; {low_text}",
                       details)
    if low > ref_low + config.low_share_rise:
        return Finding("confidence", ALERT, f"{low_text}, more than {_pct(config.low_share_rise)} above "
                       f"validation; {head}", details)
    return Finding("confidence", OK, f"{head}; {low_text}", details)


def _latency(recent: dict[str, Any], windows: list[Window], config: MonitorConfig) -> Finding:
    n, p99 = recent["n"], recent["p99"]
    if n < config.min_rows:
        return Finding("latency", UNKNOWN, f"only {n} predictions in the period; latency is judged from "
                       f"{config.min_rows}", {"n": n})
    first = next((w for w in windows if w.n >= config.min_rows), None)
    base = first.latency_p99_ms if first is not None else None
    details = {"n": n, "p50_ms": recent["p50"], "p99_ms": p99, "first_window_p99_ms": base,
               "budget_ms": config.latency_budget_ms}
    head = f"p99 latency of the latest {n} predictions is {p99:.0f} ms (p50 {recent['p50']:.0f} ms)"
    if config.latency_budget_ms is not None and p99 > config.latency_budget_ms:
        return Finding("latency", ALERT, f"{head}, over the budget of {config.latency_budget_ms:.0f} ms", details)
    if base is not None and p99 > config.latency_factor * base and p99 > config.latency_floor_ms:
        return Finding("latency", ALERT, f"{head}, {p99 / base:.1f}x the first window's {base:.0f} ms (from "
                       f"{iso(first.start)}; alert above {config.latency_factor:g}x)", details)
    against = (f"within {config.latency_factor:g}x the first window's {base:.0f} ms" if base is not None
               else "no earlier window to compare with")
    return Finding("latency", OK, f"{head}; {against}", details)


def _drift(drift: DriftResult | None) -> Finding:
    if drift is None:
        return Finding("drift", UNKNOWN, _NO_REFERENCE)
    status = ALERT if drift.drifted else OK if drift.status != "not enough data" else UNKNOWN
    return Finding("drift", status, drift.sentence(), drift.to_dict())


_NO_REFERENCE = ("the served bundle has no reference.npz (exported before monitoring existed); export the run again "
                 "and register it to monitor accuracy, confidence and drift")


# ------------------------------------------------------------------------------------------------ helpers
def _recent(log: PredictionLog, model: str, version: int, since: float, until: float, config: MonitorConfig
            ) -> dict[str, Any]:
    """Confidence and latency of the latest `recent_rows` served predictions of the period."""
    rows = log.query("SELECT confidence, latency_ms FROM predictions WHERE model = ? AND version = ? AND "
                     "role = 'served' AND at >= ? AND at < ? ORDER BY at DESC LIMIT ?",
                     (model, int(version), since, until, config.recent_rows))
    conf = np.asarray([r[0] for r in rows], dtype=np.float64)
    lat = np.asarray([r[1] for r in rows], dtype=np.float64)
    if not len(rows):
        return {"n": 0, "mean_confidence": None, "low_share": None, "p50": None, "p99": None}
    return {"n": len(rows), "mean_confidence": float(conf.mean()),
            "low_share": float((conf < config.low_confidence).mean()), "p50": float(np.percentile(lat, 50)),
            "p99": float(np.percentile(lat, 99))}


def _pct(x: float, sign: bool = True) -> str:
    return f"{100 * x:.0f}%" if sign else f"{100 * x:.0f}"

