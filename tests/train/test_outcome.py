"""core.train.outcome: the kept model against the probe, paired on the same images, and the keep-or-not rule."""
from __future__ import annotations

import numpy as np

from core.train.outcome import FINE_TUNED, PROBE, Outcome, choose, compare


def test_a_paired_difference_is_tighter_than_two_separate_scores():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 5, 400)
    probe = np.where(rng.random(400) < 0.8, y, (y + 1) % 5)
    model = probe.copy()
    wrong = np.flatnonzero(probe != y)
    model[wrong[:30]] = y[wrong[:30]]  # the model fixes 30 of the probe's errors and adds none
    c = compare("test", y, model, probe)
    assert abs(c.difference - 30 / 400) < 1e-9 and c.clear and c.interval[0] > 0.04
    same = compare("test", y, probe, probe)
    assert same.difference == 0 and same.interval == (0.0, 0.0) and not same.clear


def test_small_validation_follows_the_metric_and_says_how_uncertain_it_is():
    y = np.repeat(np.arange(10), 9)  # 9 validation images per class
    probe = y.copy()
    slightly_worse = y.copy()
    slightly_worse[:3] = (y[:3] + 1) % 10  # 3 of 90 wrong: within the noise of 90 images
    kept, rule = choose(y, probe, slightly_worse, tuned_better=False, num_classes=10)
    assert kept == PROBE and "too few to tell the two apart" in rule and "paired 95% interval" in rule
    kept, rule = choose(y, slightly_worse, probe, tuned_better=True, num_classes=10)
    assert kept == FINE_TUNED and "too few" in rule
    much_worse = y.copy()
    much_worse[:30] = (y[:30] + 1) % 10
    kept, rule = choose(y, probe, much_worse, tuned_better=False, num_classes=10)
    assert kept == PROBE and "excludes zero" in rule


def test_large_validation_decides_on_the_monitored_metric():
    y = np.repeat(np.arange(4), 40)  # 40 per class
    assert choose(y, y, y, tuned_better=False, num_classes=4)[0] == PROBE
    assert choose(y, y, y, tuned_better=True, num_classes=4)[0] == FINE_TUNED
    assert choose(y, y, [], tuned_better=True, num_classes=4)[0] == PROBE  # no fine-tuning epoch yet


def test_the_sentence_says_which_model_and_by_how_much():
    y = np.repeat(np.arange(2), 50)
    probe = y.copy()
    probe[:20] = 1 - y[:20]
    out = Outcome(FINE_TUNED, 3, "validation", (compare("test", y, y, probe), compare("val", y, y, probe)))
    text = out.sentence()
    assert "beat the linear probe" in text and "+20.0 points" in text and "100 images" in text
    kept_probe = Outcome(PROBE, 0, "validation", (compare("test", y, probe, probe),))
    assert "did not beat the linear probe" in kept_probe.sentence() and "80.0%" in kept_probe.sentence()
    assert Outcome.from_dict(out.to_dict()).to_dict() == out.to_dict()
