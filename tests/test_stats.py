import numpy as np
import pytest
from scipy.stats import binom, chi2
from sklearn.metrics import accuracy_score, f1_score

from core.stats import (
    bootstrap_intervals,
    bootstrap_mean_interval,
    calibration,
    difference_interval,
    mcnemar,
    wilson_interval,
)


def test_each_bootstrap_resample_scores_as_scikit_learn_does():
    rng = np.random.default_rng(0)
    y_true, y_pred = rng.integers(0, 5, 80), rng.integers(0, 5, 80)
    # one resample: its "interval" is that resample's value, drawn as the function draws it
    iv = bootstrap_intervals(y_true, y_pred, 5, n_boot=1, seed=3)
    idx = np.random.default_rng(3).integers(0, 80, size=(1, 80))[0]
    assert iv["accuracy"][0] == pytest.approx(accuracy_score(y_true[idx], y_pred[idx]))
    assert iv["macro_f1"][0] == pytest.approx(f1_score(y_true[idx], y_pred[idx], labels=range(5), average="macro",
                                                       zero_division=0))


def test_intervals_bracket_the_estimate_and_shrink_with_more_images():
    rng = np.random.default_rng(0)
    widths = []
    for n in (100, 2000):
        y = rng.integers(0, 3, n)
        pred = np.where(rng.random(n) < 0.8, y, (y + 1) % 3)
        lo, hi = bootstrap_intervals(y, pred, 3)["accuracy"]
        assert lo <= accuracy_score(y, pred) <= hi
        widths.append(hi - lo)
    assert widths[1] < widths[0] / 3
    assert bootstrap_intervals(y, y, 3)["macro_f1"] == (1.0, 1.0)
    lo, hi = bootstrap_mean_interval(np.arange(100.0))
    assert lo < 49.5 < hi


def test_mcnemar_exact_and_chi_square():
    y = np.zeros(100, int)
    a = np.zeros(100, int)
    b = np.zeros(100, int)
    a[:2], b[2:12] = 1, 1  # a wrong on 2, b wrong on 10: 10 images only a gets right, 2 only b
    r = mcnemar(y, a, b)
    assert (r.a_only_correct, r.b_only_correct) == (10, 2) and r.method == "exact binomial"
    assert r.p_value == pytest.approx(2 * binom.cdf(2, 12, 0.5))
    a2, b2 = np.zeros(100, int), np.zeros(100, int)
    a2[:20], b2[20:60] = 1, 1  # discordant 40 vs 20
    r = mcnemar(y, a2, b2)
    assert r.method.startswith("chi-square") and r.statistic == pytest.approx(19**2 / 60)
    assert r.p_value == pytest.approx(chi2.sf(19**2 / 60, 1)) and r.significant()
    assert mcnemar(y, y, y).p_value == 1.0


def test_calibration_error_of_known_cases():
    y = np.array([0] * 10)
    sure = np.tile([1.0, 0.0], (10, 1))
    half_wrong = sure.copy()
    half_wrong[:5] = [0.0, 1.0]
    assert calibration(sure, y).ece == pytest.approx(0.0)
    assert calibration(half_wrong, y).ece == pytest.approx(0.5)  # confidence 1.0, accuracy 0.5
    ninety = np.tile([0.9, 0.1], (10, 1))
    y9 = np.array([0] * 9 + [1])
    assert calibration(ninety, y9).ece == pytest.approx(0.0, abs=1e-9)


def test_wilson_interval_matches_published_values():
    assert wilson_interval(8, 10) == pytest.approx((0.4902, 0.9433), abs=1e-4)  # the textbook Wilson interval of 8/10
    lo, hi = wilson_interval(0, 10)
    assert lo == 0.0 and hi == pytest.approx(0.2775, abs=1e-4)  # not zero-width at 0 of n
    assert wilson_interval(10, 10)[1] == 1.0
    assert np.isnan(wilson_interval(0, 0)[0])
    assert wilson_interval(80, 100, 0.99)[0] < wilson_interval(80, 100)[0]  # higher confidence, wider


def test_difference_interval_is_newcombes_method_10():
    # Newcombe 1998 (Stat Med 17:873), example (a): 56/70 vs 48/80, difference 0.2000, method 10: 0.0524 to 0.3339
    assert difference_interval(48, 80, 56, 70) == pytest.approx((0.0524, 0.3339), abs=1e-4)
    lo, hi = difference_interval(56, 70, 48, 80)
    assert (lo, hi) == pytest.approx((-0.3339, -0.0524), abs=1e-4)
