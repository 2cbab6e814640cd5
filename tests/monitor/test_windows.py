"""Per-window figures from the prediction log: volume, latency quantiles, confidence, class shares against the
validation mix, input sizes, brightness only with logged images, accuracy from the latest feedback with its Wilson
interval; the accuracy rule with too few and with enough labels; 100,000 rows aggregated in seconds."""
import io
import time

import numpy as np
import pytest
from PIL import Image

from core.deploy.predlog import PredictionLog
from core.deploy.reference import Reference
from core.monitor.check import MonitorConfig, _accuracy
from core.monitor.windows import (
    combined,
    compute_windows,
    total_variation,
    window_bounds,
    window_embeddings,
)
from core.stats import wilson_interval

T0 = 1_700_000_000.0
CLASSES = ("cat", "dog")


def reference(val_accuracy=0.94, shares=(0.5, 0.5)):
    rng = np.random.default_rng(0)
    return Reference(classes=CLASSES, train_embeddings=rng.normal(size=(50, 8)).astype(np.float16),
                     val_embeddings=rng.normal(size=(40, 8)).astype(np.float16),
                     val_confidence=np.full(40, 0.9, np.float32), val_predicted=np.zeros(40, np.int64),
                     val_labels=np.zeros(40, np.int64), val_accuracy=val_accuracy,
                     val_class_shares=dict(zip(CLASSES, shares)), train_width=np.full(50, 24, np.float32),
                     train_height=np.full(50, 24, np.float32), train_brightness=np.full(50, 100, np.float32),
                     colour_mode_shares={"RGB": 1.0, "L": 0.0, "RGBA": 0.0, "other": 0.0}, meta={})


def rows(n, start, step=1.0, predicted="cat", confidence=0.9, latency=10.0, width=24, image=None, version=1,
         role="served", model="pets", seed=0):
    rng = np.random.default_rng(seed)
    return [{"at": start + i * step, "model": model, "version": version, "input_sha256": "x", "width": width,
             "height": width + 1, "predicted": predicted if isinstance(predicted, str) else predicted[i],
             "confidence": confidence if np.isscalar(confidence) else confidence[i],
             "top_k": [[CLASSES[0], 0.9]], "latency_ms": latency if np.isscalar(latency) else latency[i],
             "embedding": rng.normal(size=8), "image": image, "role": role} for i in range(n)]


def test_window_figures_from_the_log(tmp_path):
    log = PredictionLog(str(tmp_path))
    log.log_many(rows(100, T0, confidence=np.linspace(0.3, 1.0, 100), latency=np.arange(1, 101, dtype=float)))
    log.log_many(rows(50, T0 + 3600, predicted="dog", width=48))
    log.log_many(rows(30, T0 + 3600, role="shadow", predicted="dog"))  # a challenger's: not counted
    log.log_many(rows(30, T0 + 3600, version=2, predicted="dog"))  # another version: not counted
    bounds = window_bounds(T0, T0 + 3 * 3600)
    assert len(bounds) == 3 and bounds[0] == (T0, T0 + 3600)
    w = compute_windows(log, "pets", bounds, version=1, reference=reference(shares=(0.8, 0.2)))
    assert [x.n for x in w] == [100, 50, 0]
    assert w[0].latency_p50_ms == pytest.approx(50.5) and w[0].latency_p99_ms == pytest.approx(99.01)
    assert w[0].mean_confidence == pytest.approx(0.65) and w[0].low_confidence_share == pytest.approx(0.29)
    assert w[0].class_shares == {"cat": 1.0} and w[0].class_tvd == pytest.approx(0.2)
    assert w[1].class_shares == {"dog": 1.0} and w[1].class_tvd == pytest.approx(0.8)
    assert w[1].mean_width == 48 and w[1].mean_height == 49
    assert w[1].width_vs_reference == 2.0 and w[0].width_vs_reference == 1.0  # training images: 24 px wide
    assert w[0].mean_brightness is None and w[0].n_brightness == 0  # no image logged: no brightness
    assert w[2].mean_confidence is None and w[2].accuracy is None
    assert compute_windows(log, "pets", bounds)[1].n == 80  # every version when none is asked for
    assert total_variation({"a": 1.0}, {"b": 1.0}) == 1.0


def test_brightness_only_from_logged_images(tmp_path):
    buf = io.BytesIO()
    Image.new("RGB", (20, 20), (200, 200, 200)).save(buf, format="PNG")
    log = PredictionLog(str(tmp_path))
    log.log_many(rows(10, T0, image=buf.getvalue()) + rows(10, T0 + 20))
    (w,) = compute_windows(log, "pets", window_bounds(T0, T0 + 3600), reference=reference())
    assert w.n == 20 and w.n_brightness == 10 and w.mean_brightness == pytest.approx(200, abs=1)
    assert w.brightness_vs_reference == pytest.approx(100, abs=1)  # the training images' mean: 100


def test_logged_brightness_and_colour_modes_against_the_training_images(tmp_path):
    log = PredictionLog(str(tmp_path))
    grey = [{**r, "brightness": 40.0, "colour_mode": "L"} for r in rows(30, T0)]
    colour = [{**r, "brightness": 100.0, "colour_mode": "RGB"} for r in rows(10, T0 + 40)]
    log.log_many(grey + colour + rows(5, T0 + 60))  # 5 rows of an older server: neither logged
    (w,) = compute_windows(log, "pets", window_bounds(T0, T0 + 3600), reference=reference())
    assert w.n == 45 and w.n_brightness == 40 and w.mean_brightness == pytest.approx(55)
    assert w.brightness_vs_reference == pytest.approx(-45)
    assert w.colour_shares == {"L": 0.75, "RGB": 0.25} and w.colour_tvd == pytest.approx(0.75)  # training: all RGB


def test_accuracy_uses_the_latest_feedback_and_a_wilson_interval(tmp_path):
    log = PredictionLog(str(tmp_path))
    ids = log.log_many(rows(20, T0))
    for pid in ids[:10]:
        log.add_feedback(pid, "dog")  # wrong at first ...
    for pid in ids[:5]:
        log.add_feedback(pid, "cat")  # ... then corrected: the latest counts
    (w,) = compute_windows(log, "pets", window_bounds(T0, T0 + 3600))
    assert (w.n_labelled, w.n_correct) == (10, 5) and w.accuracy == 0.5
    assert w.accuracy_ci == wilson_interval(5, 10)
    assert w.accuracy_ci == pytest.approx((0.2366, 0.7634), abs=1e-3)  # Wilson's 95% for 5/10


def _labelled_log(tmp_path, n_labelled, n_correct):
    log = PredictionLog(str(tmp_path))
    ids = log.log_many(rows(n_labelled, T0))
    for i, pid in enumerate(ids):
        log.add_feedback(pid, "cat" if i < n_correct else "dog")
    return compute_windows(log, "pets", window_bounds(T0, T0 + 86400))


def test_the_accuracy_rule_waits_for_enough_labels_then_alerts(tmp_path):
    config, ref = MonitorConfig(), reference(val_accuracy=0.94)
    few = _accuracy(_labelled_log(tmp_path / "few", 20, 10), ref, config)  # 50% but only 20 labels
    assert few.status == "not evaluated" and "only 20 labelled predictions" in few.sentence
    many = _accuracy(_labelled_log(tmp_path / "many", 48, 34), ref, config)  # 71% on 48
    assert many.status == "alert"
    assert many.sentence == ("accuracy on 48 labelled predictions is 71% (95% CI 57-82%), below 90% of the "
                             "validation figure 94%")
    fine = _accuracy(_labelled_log(tmp_path / "fine", 48, 44), ref, config)  # 92% on 48
    assert fine.status == "ok" and "not clearly below" in fine.sentence
    assert combined(_labelled_log(tmp_path / "c", 40, 30))["accuracy"] == 0.75


def test_drift_sample_is_the_latest_rows_of_the_version(tmp_path):
    log = PredictionLog(str(tmp_path))
    log.log_many(rows(30, T0, seed=1) + rows(5, T0, version=2, seed=2))
    emb = window_embeddings(log, "pets", T0, T0 + 3600, version=1, max_rows=10)
    assert emb.shape == (10, 8) and emb.dtype == np.float32
    everything = log.embeddings("pets", version=1)
    assert np.array_equal(emb, everything[-10:])


def test_20k_logged_predictions_are_aggregated_in_a_second(tmp_path):
    # kept cheap here (writing rows costs more than reading them); benchmarks/bench_monitor.py times 100,000
    log = PredictionLog(str(tmp_path))
    rng = np.random.default_rng(0)
    n = 20_000
    batch = rows(1000, T0)
    for start in range(0, n, 1000):
        for i, r in enumerate(batch):
            r["at"] = T0 + (start + i) * 30.0  # one every 30 s: a week
            r["id"] = None
            r["predicted"] = CLASSES[int(rng.integers(2))]
        log.log_many(batch)
    t = time.perf_counter()
    w = compute_windows(log, "pets", window_bounds(T0, T0 + 7 * 86400), reference=reference())
    seconds = time.perf_counter() - t
    assert sum(x.n for x in w) == n and len(w) == 7
    assert seconds < 2, seconds
