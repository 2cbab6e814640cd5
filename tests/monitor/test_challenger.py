"""The challenger against the champion: offline on the tiny retrained pair, online from constructed log rows, the
decision both ways, and promotion / rollback moving the champion alias."""
from __future__ import annotations

import hashlib
import os

import numpy as np
import pytest
from test_newdata import fake_bundle
from test_retrain import shared_retrain

from core.data.splits import read_manifest
from core.deploy.predlog import PredictionLog
from core.deploy.registry import Registry
from core.monitor.challenger import (
    Comparison,
    ComparisonError,
    OnlineComparison,
    PromotionRefused,
    compare_offline,
    compare_online,
    decide,
    group,
    promote,
    rollback,
)


@pytest.fixture(scope="session")
def retrained(tmp_path_factory, deploy_run, bundle_dir, digits_dir) -> dict:
    return shared_retrain(tmp_path_factory, deploy_run, bundle_dir, digits_dir)


@pytest.fixture(scope="session")
def offline(retrained) -> Comparison:
    return compare_offline(retrained["root"], "digits")


def test_offline_comparison_reports_old_and_new_test_images_apart(retrained, offline):
    root = retrained["root"]
    registry = Registry(os.path.join(root, "registry"))
    assert (offline.champion_version, offline.challenger_version) == (1, 2)
    g = offline.groups
    assert set(g) == {"all", "old", "new"} and g["all"].n == g["old"].n + g["new"].n
    manifest = read_manifest(os.path.join(root, "runs", retrained["result"].run_id, "manifest.json"))
    new_test = sum(r.sha256 in retrained["labels"] for r in manifest.rows_for("test"))
    assert g["new"].n == new_test > 0 and sum(offline.is_new) == new_test
    # the old test images are the champion run's own test split: ONNX there agrees with the run's recorded figure
    recorded = registry.get_version("digits", 1).info["metrics"]["test_accuracy"]
    assert g["old"].champion == pytest.approx(recorded, abs=1.01 / g["old"].n)
    for grp in g.values():
        assert grp.champion_ci[0] <= grp.champion <= grp.champion_ci[1]
        assert grp.challenger_ci[0] <= grp.challenger <= grp.challenger_ci[1]
        assert grp.difference == pytest.approx(grp.challenger - grp.champion)
        assert grp.mcnemar["a_only_correct"] + grp.mcnemar["b_only_correct"] <= grp.n
    assert {c["label"] for c in offline.per_class} == {str(d) for d in range(10)}
    assert sum(c["n"] for c in offline.per_class) == g["all"].n
    assert all(0 < ms < 1000 for ms in offline.latency_ms.values()) and set(offline.latency_ms) == {
        "champion", "challenger"}
    sentence = decide(offline).sentence
    assert f"on {g['all'].n} shared images" in sentence and "McNemar p=" in sentence
    with pytest.raises(ComparisonError, match="nothing to compare"):
        compare_offline(root, "digits", champion=2, challenger=2)


def constructed(a_right: int, b_right: int, both: int, neither: int) -> Comparison:
    """Paired outcomes: a_right images only the champion gets right, b_right only the challenger, ..."""
    a = [True] * a_right + [False] * b_right + [True] * both + [False] * neither
    b = [False] * a_right + [True] * b_right + [True] * both + [False] * neither
    g = group("all", np.array(a), np.array(b))
    return Comparison("digits", 1, 2, {"all": g}, (), {}, tuple(a), tuple(b), (False,) * len(a))


def test_decide_promotes_only_when_the_challenger_is_not_worse():
    better = decide(constructed(a_right=2, b_right=30, both=360, neither=20))
    assert better.promote and ": not worse (the lower bound " in better.sentence
    assert better.sentence.endswith("; promote")
    assert "on 412 shared images" in better.sentence and "promote" in better.sentence
    assert "challenger 94.7%" in better.sentence and "champion 87.9%" in better.sentence
    worse = decide(constructed(a_right=30, b_right=2, both=360, neither=20))
    assert not worse.promote and "may be worse" in worse.sentence and "keep the champion" in worse.sentence
    close = constructed(a_right=6, b_right=4, both=380, neither=22)  # 2 images worse of 412: not ruled out at 0
    assert not decide(close).promote
    assert decide(close, margin=0.03).promote  # a 3-point loss is acceptable: the interval rules out worse
    assert not decide(constructed(0, 0, 0, 0)).promote


def test_decide_on_ab_arms_uses_the_independent_interval():
    arms = {"champion": {"version": 1, "n": 400, "accuracy": 0.80}, "challenger": {"version": 2, "n": 400,
                                                                                   "accuracy": 0.90}}
    online = OnlineComparison("digits", 1, 2, None, None, 0, arms)
    d = decide(online)
    assert d.promote and "A/B requests" in d.sentence and "n=400" in d.sentence
    arms["challenger"] = {"version": 2, "n": 400, "accuracy": 0.78}
    assert not decide(OnlineComparison("digits", 1, 2, None, None, 0, arms)).promote


@pytest.fixture
def two_versions(tmp_path):
    root = str(tmp_path / "ws")
    registry = Registry(os.path.join(root, "registry"))
    for k in (1, 2):
        registry.register(fake_bundle(str(tmp_path / f"b{k}"), f"run-{k}", ["a", "b"]), "digits")
    registry.set_alias("digits", "champion", 1)
    registry.set_alias("digits", "challenger", 2)
    return root, registry


def test_promote_and_rollback_move_the_champion(two_versions):
    root, registry = two_versions
    yes = decide(constructed(2, 30, 360, 20))
    with pytest.raises(PromotionRefused, match="not promoted"):
        promote(root, "digits", decide(constructed(30, 2, 360, 20)))
    assert registry.alias_version("digits", "champion") == 1
    move = promote(root, "digits", yes, actor="ana")
    assert move["to_version"] == 2 and registry.alias_version("digits", "champion") == 2
    assert registry.history("digits", "champion")[0]["reason"] == yes.sentence
    with pytest.raises(PromotionRefused, match="moved since the comparison"):
        promote(root, "digits", yes)  # the champion is 2 now: this evidence compared 1 with 2
    rollback(root, "digits")
    assert registry.alias_version("digits", "champion") == 1
    forced = promote(root, "digits", decide(constructed(30, 2, 360, 20)), force=True)
    assert forced["to_version"] == 2 and forced["reason"].startswith("forced against the evidence")


def _row(model, version, predicted, role="served", request_id=None, pid=None):
    return {"id": pid, "model": model, "version": version, "input_sha256": hashlib.sha256(b"x").hexdigest(),
            "width": 8, "height": 8, "predicted": predicted, "confidence": 0.9, "top_k": [[predicted, 0.9]],
            "latency_ms": 1.0, "embedding": np.zeros(4), "role": role, "request_id": request_id}


def test_compare_online_pairs_shadow_rows_by_request_and_counts_ab_arms(tmp_path):
    root = str(tmp_path / "ws")
    log = PredictionLog.for_workspace(root)
    truth = ["a"] * 30 + ["b"] * 30
    champion_says = ["a"] * 24 + ["b"] * 6 + ["b"] * 30  # 54 / 60 right
    challenger_says = ["a"] * 30 + ["b"] * 27 + ["a"] * 3  # 57 / 60 right
    for i, (y, a, b) in enumerate(zip(truth, champion_says, challenger_says)):
        pid = f"served{i:03d}"
        log.log(_row("digits", 1, a, pid=pid, request_id=pid))
        log.log(_row("digits", 2, b, role="shadow", request_id=pid))
        if i < 50:  # feedback on 50 of the 60 requests
            log.add_feedback(pid, "zzz")
            log.add_feedback(pid, y)  # the latest label counts
    log.log(_row("digits", 2, "a", role="shadow", request_id="served-unknown"))  # no served row: not paired
    log.log(_row("other", 1, "a", pid="x1", request_id="x1"))
    log.close()
    online = compare_online(root, "digits", champion=1, challenger=2)
    assert online.paired.n == 50 and online.agreement_n == 60
    ys, ca, cb = truth[:50], champion_says[:50], challenger_says[:50]
    assert online.paired.champion == pytest.approx(np.mean([p == y for p, y in zip(ca, ys)]))
    assert online.paired.challenger == pytest.approx(np.mean([p == y for p, y in zip(cb, ys)]))
    assert online.agreement == pytest.approx(np.mean([a == b for a, b in zip(champion_says, challenger_says)]))
    assert online.arms == {}  # shadow only: the challenger answered no request
    assert "on 50 shared images (online" in decide(online).sentence

    log = PredictionLog.for_workspace(root)
    for i in range(10):  # A/B: the challenger answers some requests itself
        pid = f"ab{i}"
        log.log(_row("digits", 2, "a", pid=pid, request_id=pid))
        log.add_feedback(pid, "a" if i < 8 else "b")
    log.close()
    arms = compare_online(root, "digits", champion=1, challenger=2).arms
    assert arms["challenger"]["n"] == 10 and arms["challenger"]["accuracy"] == pytest.approx(0.8)
    assert arms["champion"]["n"] == 50 and arms["champion"]["accuracy"] == pytest.approx(online.paired.champion)
    assert arms["challenger"]["ci"][0] < 0.8 < arms["challenger"]["ci"][1]
