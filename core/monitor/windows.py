"""Per-window figures of one served model, from the prediction log (core.deploy.predlog), aggregated in SQLite.

A period [since, until) is cut into equal windows (hourly up to two days, daily beyond; or as asked). For each
window, only the model's "served" rows (what clients got; shadow rows are a challenger's) of one version:

  volume, latency p50/p99, mean confidence, share under the low-confidence threshold, predicted-class shares and
  their total variation distance from the validation split's class shares (0 = the same mix, 1 = disjoint),
  mean input width/height (logged for every prediction) as a ratio to the training images', mean brightness and its
  difference from theirs (the server logs each input's brightness; for older rows without it, measured on at most
  `brightness_sample` logged images a window), colour-mode shares and their distance from the training images',
  and accuracy on the predictions that got feedback (the latest feedback on each counts) with its Wilson 95%
  interval.

Counts, means, class shares and feedback joins are GROUP BY queries; latency quantiles need the values, so one
light column (bucket, latency) is read. Embeddings are not read here (window_embeddings does, for drift only).
A whole check_model over 100,000 logged predictions took 2.5-3.4 s on two busy cores (benchmarks/bench_monitor.py;
docs/BENCHMARKS.md).
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from core.data.images import ImageError, load_rgb
from core.deploy.predlog import PredictionLog, decode_embedding, iso
from core.deploy.reference import Reference, brightness
from core.stats import wilson_interval

HOUR, DAY = 3600.0, 86400.0
MAX_WINDOWS = 500


@dataclass(frozen=True)
class Window:
    start: float  # unix seconds, UTC; the window is [start, end)
    end: float
    n: int  # served predictions
    latency_p50_ms: float | None = None
    latency_p99_ms: float | None = None
    mean_confidence: float | None = None
    low_confidence_share: float | None = None  # share of predictions under the low-confidence threshold
    class_shares: dict[str, float] = dataclasses.field(default_factory=dict)  # predicted class -> share
    class_tvd: float | None = None  # total variation distance from the validation class shares
    mean_width: float | None = None
    mean_height: float | None = None
    mean_brightness: float | None = None  # None when no image of the window was logged
    n_brightness: int = 0  # logged images the brightness was measured on
    width_vs_reference: float | None = None  # mean width / the training images' mean width
    height_vs_reference: float | None = None
    brightness_vs_reference: float | None = None  # mean brightness - the training images' (0-255 levels)
    colour_shares: dict[str, float] = dataclasses.field(default_factory=dict)  # colour mode -> share (logged)
    colour_tvd: float | None = None  # total variation distance from the training images' colour modes
    n_labelled: int = 0  # predictions with feedback
    n_correct: int = 0  # ... whose latest feedback agrees with the prediction
    accuracy: float | None = None
    accuracy_ci: tuple[float, float] | None = None  # Wilson 95%

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["start_iso"], out["end_iso"] = iso(self.start), iso(self.end)
        return out


def window_bounds(since: float, until: float, n_windows: int | None = None, seconds: float | None = None
                  ) -> list[tuple[float, float]]:
    """[since, until) cut into `n_windows` equal windows, or windows of `seconds` (the last one may be shorter);
    default: hourly up to two days, daily beyond."""
    if until <= since:
        return []
    span = until - since
    if n_windows is None:
        width = seconds or (HOUR if span <= 2 * DAY else DAY)
        n_windows = max(1, math.ceil(span / width - 1e-9))
        if n_windows > MAX_WINDOWS:
            n_windows, width = MAX_WINDOWS, span / MAX_WINDOWS
    else:
        width = span / max(1, int(n_windows))
    return [(since + i * width, min(until, since + (i + 1) * width)) for i in range(int(n_windows))]


def compute_windows(log: PredictionLog, model: str, bounds: list[tuple[float, float]], version: int | None = None,
                    reference: Reference | None = None, low_confidence: float = 0.5, brightness_sample: int = 50
                    ) -> list[Window]:
    """One Window per (start, end) in `bounds` (contiguous, ascending), from `model`'s served rows (of `version`
    when given)."""
    if not bounds:
        return []
    since, until = bounds[0][0], bounds[-1][1]
    starts = np.asarray([b[0] for b in bounds])
    bucket, where, params = _bucket_sql(starts, model, version, since, until)
    rows = {r["b"]: r for r in log.query(
        f"SELECT {bucket} AS b, COUNT(*) AS n, AVG(confidence) AS conf, SUM(confidence < ?) AS low, "
        f"AVG(width) AS w, AVG(height) AS h, AVG(brightness) AS br, COUNT(brightness) AS nbr FROM predictions p "
        f"{where} GROUP BY b", [low_confidence, *params])}
    modes: dict[int, dict[str, int]] = {}
    for r in log.query(f"SELECT {bucket} AS b, colour_mode, COUNT(*) AS n FROM predictions p {where} AND "
                       "colour_mode IS NOT NULL GROUP BY b, colour_mode", params):
        modes.setdefault(r["b"], {})[r["colour_mode"]] = r["n"]
    classes: dict[int, dict[str, int]] = {}
    for r in log.query(f"SELECT {bucket} AS b, predicted, COUNT(*) AS n FROM predictions p {where} "
                       "GROUP BY b, predicted", params):
        classes.setdefault(r["b"], {})[r["predicted"]] = r["n"]
    labelled = {r["b"]: r for r in log.query(
        f"SELECT {bucket} AS b, COUNT(*) AS n, SUM(f.label = p.predicted) AS correct FROM predictions p JOIN "
        "(SELECT prediction_id, label, MAX(at) AS at FROM feedback GROUP BY prediction_id) f "  # SQLite: the label
        f"ON f.prediction_id = p.id {where} GROUP BY b", params)}                           # of the latest feedback
    latencies = log.query(f"SELECT {bucket} AS b, latency_ms FROM predictions p {where}", params)
    lat_b = np.fromiter((r[0] for r in latencies), dtype=np.int64, count=len(latencies))
    lat_v = np.fromiter((r[1] for r in latencies), dtype=np.float64, count=len(latencies))
    order = np.argsort(lat_b, kind="stable")
    lat_b, lat_v = lat_b[order], lat_v[order]
    cuts = np.searchsorted(lat_b, np.arange(len(bounds) + 1))
    logged = any(r["nbr"] for r in rows.values())  # the server logs each input's brightness; older rows do not
    bright = {} if logged else _brightness(log, bucket, where, params, brightness_sample)
    ref_modes = reference.colour_mode_shares if reference is not None else None
    val_shares = reference.val_class_shares if reference is not None else None
    ref_w, ref_h, ref_b = (_mean(a) for a in (reference.train_width, reference.train_height,
                                              reference.train_brightness)) if reference is not None else (None,) * 3
    out = []
    for i, (start, end) in enumerate(bounds):
        r = rows.get(i)
        if r is None:
            out.append(Window(start, end, 0))
            continue
        n = int(r["n"])
        lat = lat_v[cuts[i]:cuts[i + 1]]
        shares = {c: k / n for c, k in sorted(classes.get(i, {}).items())}
        fb = labelled.get(i)
        n_lab, n_ok = (int(fb["n"]), int(fb["correct"])) if fb is not None else (0, 0)
        b = bright.get(i, [])
        if r["nbr"]:
            b = [float(r["br"])] * int(r["nbr"])  # the logged mean, weighted by its count
        counted = modes.get(i, {})
        mode_shares = {m: k / sum(counted.values()) for m, k in sorted(counted.items())}
        out.append(Window(
            start, end, n, latency_p50_ms=_q(lat, 50), latency_p99_ms=_q(lat, 99), mean_confidence=float(r["conf"]),
            low_confidence_share=float(r["low"]) / n, class_shares=shares,
            class_tvd=None if not val_shares else total_variation(shares, val_shares),
            mean_width=float(r["w"]), mean_height=float(r["h"]),
            mean_brightness=float(np.mean(b)) if b else None, n_brightness=len(b),
            width_vs_reference=float(r["w"]) / ref_w if ref_w else None,
            height_vs_reference=float(r["h"]) / ref_h if ref_h else None,
            brightness_vs_reference=float(np.mean(b)) - ref_b if b and ref_b is not None else None,
            colour_shares=mode_shares,
            colour_tvd=total_variation(mode_shares, ref_modes) if mode_shares and ref_modes else None,
            n_labelled=n_lab, n_correct=n_ok, accuracy=n_ok / n_lab if n_lab else None,
            accuracy_ci=wilson_interval(n_ok, n_lab) if n_lab else None))
    return out


def total_variation(a: dict[str, float], b: dict[str, float]) -> float:
    """Half the L1 distance between two class-share dicts (a class absent from one has share 0 there)."""
    return 0.5 * float(sum(abs(a.get(c, 0.0) - b.get(c, 0.0)) for c in set(a) | set(b)))


def window_embeddings(log: PredictionLog, model: str, since: float, until: float, version: int | None = None,
                      max_rows: int = 500) -> np.ndarray:
    """The latest `max_rows` served embeddings of [since, until) (float32, oldest first): the drift sample."""
    clauses, params = ["model = ?", "role = 'served'", "at >= ?", "at < ?"], [model, since, until]
    if version is not None:
        clauses.append("version = ?")
        params.append(int(version))
    rows = log.query(f"SELECT embedding, embedding_dim FROM predictions WHERE {' AND '.join(clauses)} "
                     "ORDER BY at DESC LIMIT ?", [*params, int(max_rows)])
    if not rows:
        return np.zeros((0, 0), dtype=np.float32)
    dim = rows[0]["embedding_dim"]
    return np.stack([decode_embedding(r["embedding"], dim) for r in reversed(rows) if r["embedding_dim"] == dim])


def combined(windows: list[Window]) -> dict[str, Any]:
    """The whole period's labelled accuracy (with its Wilson interval), volume and mean confidence."""
    n = sum(w.n for w in windows)
    n_lab, n_ok = sum(w.n_labelled for w in windows), sum(w.n_correct for w in windows)
    conf = sum((w.mean_confidence or 0.0) * w.n for w in windows) / n if n else None
    low = sum((w.low_confidence_share or 0.0) * w.n for w in windows) / n if n else None
    return {"n": n, "n_labelled": n_lab, "n_correct": n_ok, "accuracy": n_ok / n_lab if n_lab else None,
            "accuracy_ci": wilson_interval(n_ok, n_lab) if n_lab else None, "mean_confidence": conf,
            "low_confidence_share": low}


# ------------------------------------------------------------------------------------------------ helpers
def _bucket_sql(starts: np.ndarray, model: str, version: int | None, since: float, until: float):
    """The SQL expression of a row's window index, and the WHERE clause of the period's served rows."""
    widths = np.diff(starts)
    if len(widths) and np.allclose(widths, widths[0]):
        bucket = f"MIN(CAST((p.at - {float(starts[0])!r}) / {float(widths[0])!r} AS INTEGER), {len(starts) - 1})"
    else:  # uneven windows: a CASE over the starts
        cases = " ".join(f"WHEN p.at >= {float(s)!r} THEN {i}" for i, s in reversed(list(enumerate(starts))))
        bucket = f"(CASE {cases} ELSE 0 END)"
    clauses, params = ["p.model = ?", "p.role = 'served'", "p.at >= ?", "p.at < ?"], [model, since, until]
    if version is not None:
        clauses.append("p.version = ?")
        params.append(int(version))
    return bucket, f"WHERE {' AND '.join(clauses)}", params


def _brightness(log: PredictionLog, bucket: str, where: str, params: list, per_window: int) -> dict[int, list[float]]:
    """Mean brightness of up to `per_window` logged images a window (evenly spread over the window's rows)."""
    if per_window <= 0:
        return {}
    ids = log.query(f"SELECT {bucket} AS b, p.id AS id FROM predictions p {where} AND p.image IS NOT NULL "
                    "ORDER BY p.at", params)
    by_window: dict[int, list[str]] = {}
    for r in ids:
        by_window.setdefault(r["b"], []).append(r["id"])
    out: dict[int, list[float]] = {}
    for b, window_ids in by_window.items():
        pick = [window_ids[int(j)] for j in np.linspace(0, len(window_ids) - 1, min(per_window, len(window_ids)))]
        marks = ", ".join("?" * len(pick))
        for r in log.query(f"SELECT image FROM predictions WHERE id IN ({marks})", pick):
            try:
                out.setdefault(b, []).append(brightness(load_rgb(bytes(r["image"]))))
            except ImageError:
                continue  # the server decoded it once; a log row whose bytes no longer decode is left out
    return out


def _mean(values: np.ndarray) -> float | None:
    return float(np.mean(values)) if len(values) else None


def _q(values: np.ndarray, q: float) -> float | None:
    return float(np.percentile(values, q)) if len(values) else None
