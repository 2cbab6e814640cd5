"""Embedding drift: bounded false alarms without a shift, a mean shift and a new cluster detected, too few rows
said so, seeded (the same answer twice)."""
import numpy as np
import pytest

from core.monitor.drift import DRIFT, NO_DRIFT, NOT_ENOUGH, DriftConfig, DriftError, detect_drift

DIM = 48


def _reference(n=1000):
    return np.random.default_rng(0).normal(size=(n, DIM)).astype(np.float16)  # stored as reference.npz stores it


def _production(seed, n=150):
    return np.random.default_rng(1000 + seed).normal(size=(n, DIM))


def test_no_shift_false_alarms_bounded_over_20_windows():
    ref = _reference()
    results = [detect_drift(ref, _production(seed)) for seed in range(20)]
    alarms = sum(r.drifted for r in results)
    # measured: 0 of 20 windows, AUC at most 0.55; a bound of 1 in 20 (5%) leaves room for other BLAS builds
    assert alarms <= 1, [r.to_dict() for r in results if r.drifted]
    assert max(r.auc for r in results) < 0.65
    assert all(r.status in (NO_DRIFT, DRIFT) for r in results)


def test_a_mean_shift_is_detected_and_a_tiny_one_is_not():
    ref = _reference()
    shifted = _production(0)
    shifted[:, :8] += 1.0  # one standard deviation on 8 of 48 values
    result = detect_drift(ref, shifted)
    assert result.status == DRIFT and result.auc > 0.85 and result.p_value < 0.01
    assert "have drifted" in result.sentence() and "ROC-AUC" in result.sentence()
    tiny = _production(1)
    tiny[:, :8] += 0.1
    assert detect_drift(ref, tiny).status == NO_DRIFT


def test_a_new_cluster_is_detected():
    ref = _reference()
    prod = _production(2)
    prod[:100] = np.random.default_rng(7).normal(size=DIM) * 2 + prod[:100] * 0.5  # 2 of 3 images from elsewhere
    result = detect_drift(ref, prod)
    assert result.drifted, result.to_dict()


def test_too_few_rows_is_not_enough_data():
    result = detect_drift(_reference(), _production(0, n=29))
    assert result.status == NOT_ENOUGH and not result.drifted and result.auc is None
    assert "not enough data" in result.sentence() and "29 production" in result.sentence()
    assert detect_drift(_reference(20), _production(0)).status == NOT_ENOUGH
    assert detect_drift(_reference(), np.zeros((0, 0))).status == NOT_ENOUGH


def test_seeded_and_subsampled_to_max_rows():
    ref, prod = _reference(), _production(3, n=800)
    prod[:, 0] += 0.5
    a, b = detect_drift(ref, prod), detect_drift(ref, prod)
    assert a == b and a.n_reference == 500 and a.n_production == 500
    small = detect_drift(ref, prod, DriftConfig(max_rows=100, n_permutations=50))
    assert small.n_production == 100 and small.p_value >= 1 / 51


def test_mismatched_dimensions_and_bad_config_are_refused():
    with pytest.raises(DriftError, match="different model architecture"):
        detect_drift(_reference(), np.zeros((50, DIM + 1)))
    with pytest.raises(ValueError):
        DriftConfig(auc_threshold=0.3)
    with pytest.raises(DriftError):
        DriftConfig(min_rows=2)
