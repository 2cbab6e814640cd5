"""The challenger against the champion, offline and online, and the promotion decision that moves the alias.

Offline (`compare_offline`): both registered bundles (ONNX Runtime, each with its own preprocessing) on the same
held-out images, the challenger run's test split. Its test images that were in the champion's dataset ("old") and
the new ones ("new") are reported apart as well as together: accuracy with Wilson intervals, the paired difference
with a bootstrap interval, McNemar's test on the shared images, per-class accuracy changes, and latency (median ms
per image at batch 1, the model call only, measured here). A label the champion does not know counts as its error.

Online (`compare_online`): from the prediction log. Shadow mode logs the challenger's prediction of a served
request with the served row's id as request_id: requests with both a champion and a challenger row and feedback
on the served row are paired. A/B rows (each version served some requests) with feedback are counted per arm.

`decide` states the rule once: promote when the challenger is NOT WORSE with the stated confidence, i.e. the lower
bound of the (paired, when there are shared images) interval of challenger minus champion accuracy is >= -margin.
With margin 0 that asks the data to rule out any loss; a positive margin accepts a loss up to that size.
`promote` moves "champion" to the challenger with the decision's sentence as the reason (the registry keeps it
in the alias history); `rollback` undoes the champion's last move.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from core.data.images import load_rgb
from core.data.splits import read_manifest
from core.deploy.bundle import OnnxModel
from core.deploy.predlog import PredictionLog
from core.deploy.registry import DEFAULT_ALIAS, ModelVersion, Registry
from core.errors import StudioError
from core.stats import LEVEL, bootstrap_mean_interval, difference_interval, mcnemar, wilson_interval

CHALLENGER = "challenger"
LATENCY_IMAGES = 20  # batch-1 timings per model, after 3 warm-up calls
BATCH = 32


class ComparisonError(StudioError, ValueError):
    """Nothing to compare: no challenger, no held-out images, the same version twice."""


class PromotionRefused(StudioError, PermissionError):
    """The evidence does not support moving the champion (or it is stale); force overrides."""


@dataclass(frozen=True)
class Group:
    """One set of shared images: both models' accuracy, their paired difference, McNemar."""
    name: str  # "all" | "old" | "new"
    n: int
    champion: float
    champion_ci: tuple[float, float]
    challenger: float
    challenger_ci: tuple[float, float]
    difference: float  # challenger - champion, accuracy points as a fraction
    difference_ci: tuple[float, float]
    mcnemar: dict[str, Any]


@dataclass(frozen=True)
class Comparison:
    model: str
    champion_version: int
    challenger_version: int
    groups: dict[str, Group]  # "all", "old", "new" (those with images)
    per_class: tuple[dict[str, Any], ...]  # label, n, champion, challenger, change
    latency_ms: dict[str, float]  # "champion" / "challenger": median ms per image at batch 1
    champion_correct: tuple[bool, ...] = ()  # per shared image, the raw evidence decide() recomputes from
    challenger_correct: tuple[bool, ...] = ()
    is_new: tuple[bool, ...] = ()
    where: str = "offline, the challenger run's test split"

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "champion_version": self.champion_version,
                "challenger_version": self.challenger_version, "where": self.where,
                "groups": {k: vars(g) for k, g in self.groups.items()}, "per_class": list(self.per_class),
                "latency_ms": self.latency_ms}


@dataclass(frozen=True)
class OnlineComparison:
    model: str
    champion_version: int
    challenger_version: int
    paired: Group | None  # shadow requests both versions predicted, with feedback
    agreement: float | None  # share of shadow-paired requests (feedback or not) where both predicted the same
    agreement_n: int
    arms: dict[str, dict[str, Any]] = field(default_factory=dict)  # A/B: "champion"/"challenger" -> n, accuracy, ci
    champion_correct: tuple[bool, ...] = ()
    challenger_correct: tuple[bool, ...] = ()
    where: str = "online, the prediction log"

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "champion_version": self.champion_version,
                "challenger_version": self.challenger_version, "where": self.where,
                "paired": None if self.paired is None else vars(self.paired), "agreement": self.agreement,
                "agreement_n": self.agreement_n, "arms": self.arms}


@dataclass(frozen=True)
class Decision:
    promote: bool
    sentence: str  # the evidence in plain English, and the verdict
    model: str = ""
    champion_version: int | None = None
    challenger_version: int | None = None
    margin: float = 0.0
    confidence: float = LEVEL


def _registry(root: str) -> Registry:
    return Registry(os.path.join(root, "registry"))


def _version(registry: Registry, model: str, which: int | str | None, alias: str) -> ModelVersion:
    if which is None:
        return registry.resolve(f"{model}@{alias}")
    if isinstance(which, int):
        return registry.get_version(model, which)
    return registry.resolve(which)


def group(name: str, a_ok: np.ndarray, b_ok: np.ndarray, level: float = LEVEL) -> Group:
    """Champion (a) and challenger (b) on the same images: Wilson intervals, bootstrap paired difference, McNemar."""
    a_ok, b_ok = np.asarray(a_ok, dtype=bool), np.asarray(b_ok, dtype=bool)
    n = len(a_ok)
    truth = np.ones(n, dtype=int)
    test = mcnemar(truth, a_ok.astype(int), b_ok.astype(int), "champion", "challenger")
    diff = b_ok.astype(float) - a_ok.astype(float)
    return Group(name, n, float(a_ok.mean()) if n else float("nan"), wilson_interval(int(a_ok.sum()), n, level),
                 float(b_ok.mean()) if n else float("nan"), wilson_interval(int(b_ok.sum()), n, level),
                 float(diff.mean()) if n else float("nan"), bootstrap_mean_interval(diff, level=level),
                 test.to_dict())


def _predict(model: OnnxModel, paths: list[str]) -> list[str]:
    classes = model.bundle.classes
    out: list[str] = []
    for start in range(0, len(paths), BATCH):
        batch = np.stack([model.bundle.preprocess(load_rgb(p)) for p in paths[start:start + BATCH]])
        probs, _ = model.probabilities(batch)
        out += [classes[int(i)] for i in probs.argmax(axis=1)]
    return out


def _latency(model: OnnxModel, paths: list[str]) -> float:
    """Median ms of one batch-1 model call, over up to LATENCY_IMAGES images after 3 warm-up calls."""
    inputs = [model.bundle.preprocess(load_rgb(p))[None] for p in paths[:LATENCY_IMAGES]]
    for x in inputs[:3]:
        model.probabilities(x)
    times = []
    for x in inputs:
        t0 = time.perf_counter()
        model.probabilities(x)
        times.append((time.perf_counter() - t0) * 1000)
    return round(float(np.median(times)), 3) if times else float("nan")


def _manifest(root: str, version: ModelVersion):
    path = os.path.join(root, "runs", version.run_id or "-", "manifest.json")
    if not os.path.isfile(path):
        raise ComparisonError(f"{version.ref}'s run {version.run_id} has no split manifest at {path}")
    return read_manifest(path)


def compare_offline(root: str, model: str, champion: int | str | None = None, challenger: int | str | None = None,
                    max_images: int | None = None) -> Comparison:
    """Champion and challenger (versions, refs, or None for the aliases) on the challenger run's test images."""
    registry = _registry(root)
    a, b = _version(registry, model, champion, DEFAULT_ALIAS), _version(registry, model, challenger, CHALLENGER)
    if a.version == b.version:
        raise ComparisonError(f"champion and challenger are both {a.ref}: nothing to compare")
    rows = list(_manifest(root, b).rows_for("test"))[:max_images]
    if not rows:
        raise ComparisonError(f"{b.ref}'s run {b.run_id} has no test images to compare on")
    manifest = _manifest(root, b)
    try:
        base = {r.sha256 for r in _manifest(root, a).rows}
    except ComparisonError:
        base = set()  # the champion's data is unknown: every test image counts as old
    paths = [str(manifest.path_of(r)) for r in rows]
    labels = [r.label for r in rows]
    fresh = np.array([bool(base) and r.sha256 not in base for r in rows])
    models = {"champion": OnnxModel(a.bundle()), "challenger": OnnxModel(b.bundle())}
    preds = {k: _predict(m, paths) for k, m in models.items()}
    latency = {k: _latency(m, paths) for k, m in models.items()}
    a_ok = np.array([p == y for p, y in zip(preds["champion"], labels)])
    b_ok = np.array([p == y for p, y in zip(preds["challenger"], labels)])
    groups = {"all": group("all", a_ok, b_ok)}
    for name, mask in (("old", ~fresh), ("new", fresh)):
        if mask.any():
            groups[name] = group(name, a_ok[mask], b_ok[mask])
    per_class = []
    for label in sorted(set(labels)):
        m = np.array([y == label for y in labels])
        ca, cb = float(a_ok[m].mean()), float(b_ok[m].mean())
        per_class.append({"label": label, "n": int(m.sum()), "champion": ca, "challenger": cb, "change": cb - ca})
    return Comparison(model, a.version, b.version, groups, tuple(per_class), latency, tuple(bool(x) for x in a_ok),
                      tuple(bool(x) for x in b_ok), tuple(bool(x) for x in fresh))


_LATEST_FEEDBACK = "(SELECT prediction_id, label, MAX(at) AS at FROM feedback GROUP BY prediction_id)"


def compare_online(root: str, model: str, champion: int | None = None, challenger: int | None = None,
                   since: float | None = None) -> OnlineComparison:
    """Champion and challenger (versions; None: the aliases) on logged requests with feedback (module docstring)."""
    if champion is None or challenger is None:
        registry = _registry(root)
        champion = champion if champion is not None else _version(registry, model, None, DEFAULT_ALIAS).version
        challenger = challenger if challenger is not None else _version(registry, model, None, CHALLENGER).version
    if champion == challenger:
        raise ComparisonError(f"champion and challenger are both {model}:{champion}: nothing to compare")
    after = " AND s.at >= ?" if since is not None else ""
    extra = (since,) if since is not None else ()
    log = PredictionLog.for_workspace(root)
    try:
        pairs = log.query(
            "SELECT s.predicted AS a_pred, h.predicted AS b_pred, f.label AS label FROM predictions s "
            "JOIN predictions h ON h.request_id = s.request_id AND h.id != s.id AND h.role = 'shadow' "
            f"LEFT JOIN {_LATEST_FEEDBACK} f ON f.prediction_id = s.id "
            f"WHERE s.model = ? AND h.model = ? AND s.role = 'served' AND s.version = ? AND h.version = ?{after}",
            (model, model, int(champion), int(challenger), *extra))
        arms = log.query(
            "SELECT s.version AS version, COUNT(*) AS n, SUM(s.predicted = f.label) AS ok FROM predictions s "
            f"JOIN {_LATEST_FEEDBACK} f ON f.prediction_id = s.id WHERE s.model = ? AND s.role = 'served' "
            f"AND s.version IN (?, ?){after} GROUP BY s.version", (model, int(champion), int(challenger), *extra))
    finally:
        log.close()
    labelled = [r for r in pairs if r["label"] is not None]
    a_ok = np.array([r["a_pred"] == r["label"] for r in labelled], dtype=bool)
    b_ok = np.array([r["b_pred"] == r["label"] for r in labelled], dtype=bool)
    agree = [r["a_pred"] == r["b_pred"] for r in pairs]
    by_version = {r["version"]: (int(r["n"]), int(r["ok"] or 0)) for r in arms}
    out_arms = {}
    if challenger in by_version:  # A/B: the challenger answered some requests itself
        for name, v in (("champion", champion), ("challenger", challenger)):
            n, ok = by_version.get(v, (0, 0))
            out_arms[name] = {"version": v, "n": n, "accuracy": ok / n if n else None, "ci": wilson_interval(ok, n)}
    return OnlineComparison(model, int(champion), int(challenger), group("shadow", a_ok, b_ok) if len(a_ok) else None,
                            float(np.mean(agree)) if agree else None, len(agree), out_arms,
                            tuple(bool(x) for x in a_ok), tuple(bool(x) for x in b_ok))


def _pct(x: float) -> str:
    return f"{x:.1%}"


def _ci(ci: tuple[float, float]) -> str:
    return f"{ci[0]:.1%}-{ci[1]:.1%}"


def decide(comparison: Comparison | OnlineComparison, margin: float = 0.0, confidence: float = LEVEL) -> Decision:
    """Promote when the challenger is not worse than the champion with `confidence`: the lower bound of the interval
    of (challenger - champion) accuracy is >= -margin. The interval is the paired bootstrap over shared images when
    there are any (offline; online shadow pairs), else Newcombe's interval of two independent A/B arms."""
    keep = dict(model=comparison.model, champion_version=comparison.champion_version,
                challenger_version=comparison.challenger_version, margin=margin, confidence=confidence)
    level = f"{confidence:.0%}"
    a_ok = np.asarray(comparison.champion_correct, dtype=bool)
    b_ok = np.asarray(comparison.challenger_correct, dtype=bool)
    if len(a_ok):
        g = group("all", a_ok, b_ok, confidence)
        lo, hi = g.difference_ci
        evidence = (f"challenger {_pct(g.challenger)} ({level} CI {_ci(g.challenger_ci)}) vs champion "
                    f"{_pct(g.champion)} ({level} CI {_ci(g.champion_ci)}) on {g.n} shared images "
                    f"({comparison.where}), difference {g.difference * 100:+.1f} points ({level} CI "
                    f"{lo * 100:+.1f} to {hi * 100:+.1f}), McNemar p={g.mcnemar['p_value']:.3g}")
    elif isinstance(comparison, OnlineComparison) and len(comparison.arms) == 2 \
            and all(arm["n"] for arm in comparison.arms.values()):
        ca, cb = comparison.arms["champion"], comparison.arms["challenger"]
        ka, kb = round(ca["accuracy"] * ca["n"]), round(cb["accuracy"] * cb["n"])
        lo, hi = difference_interval(ka, ca["n"], kb, cb["n"], confidence)
        evidence = (f"challenger {_pct(cb['accuracy'])} ({level} CI {_ci(wilson_interval(kb, cb['n'], confidence))}, "
                    f"n={cb['n']}) vs champion {_pct(ca['accuracy'])} ({level} CI "
                    f"{_ci(wilson_interval(ka, ca['n'], confidence))}, n={ca['n']}) on A/B requests with feedback, "
                    f"difference {(kb / cb['n'] - ka / ca['n']) * 100:+.1f} points ({level} CI {lo * 100:+.1f} to "
                    f"{hi * 100:+.1f})")
    else:
        return Decision(False, f"no labelled images both versions were measured on ({comparison.where}): "
                               "nothing shows the challenger is not worse; keep the champion", **keep)
    floor = f"{-margin * 100:.1f}" if margin else "0"
    if lo >= -margin:
        return Decision(True, f"{evidence}: not worse (the lower bound {lo * 100:+.1f} points is at or above "
                              f"{floor}); promote", **keep)
    return Decision(False, f"{evidence}: may be worse (the lower bound {lo * 100:+.1f} points is below "
                           f"{floor}); keep the champion", **keep)


def promote(root: str, model: str, decision: Decision, actor: str = "", force: bool = False) -> dict[str, Any]:
    """Move "champion" to the decision's challenger version, the decision's sentence as the reason. Refused when the
    decision says no, or when either alias moved since the comparison (stale evidence), unless `force`."""
    registry = _registry(root)
    if not decision.promote and not force:
        raise PromotionRefused(f"{model}: not promoted: {decision.sentence}. Use force to promote anyway.")
    target = decision.challenger_version or registry.alias_version(model, CHALLENGER)
    if target is None:
        raise PromotionRefused(f"{model} has no challenger to promote")
    now = (registry.alias_version(model, DEFAULT_ALIAS), registry.alias_version(model, CHALLENGER))
    if not force and decision.champion_version is not None and now != (decision.champion_version, target):
        raise PromotionRefused(f"{model}: the aliases moved since the comparison (champion, challenger now "
                               f"{now[0]}, {now[1]}; compared {decision.champion_version}, {target}); compare again")
    reason = decision.sentence if decision.promote else f"forced against the evidence: {decision.sentence}"
    return registry.set_alias(model, DEFAULT_ALIAS, int(target), reason=reason, actor=actor)


def rollback(root: str, model: str, actor: str = "") -> dict[str, Any]:
    """Undo the champion alias's last move (Registry.rollback): the previous champion serves again."""
    return _registry(root).rollback(model, DEFAULT_ALIAS, actor=actor)
