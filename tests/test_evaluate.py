import numpy as np
import pytest
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, log_loss, precision_recall_fscore_support

from core.evaluate import EvaluationError, Predictions, evaluate_run, summarize
from core.runs import start_run
from core.store import RunStore


def test_summary_agrees_with_scikit_learn_on_fixed_predictions():
    rng = np.random.default_rng(0)
    y_true = rng.integers(0, 3, 60)
    probs = rng.dirichlet(np.ones(3), 60)
    probs[np.arange(40), y_true[:40]] += 1.0  # two thirds made right
    probs /= probs.sum(axis=1, keepdims=True)
    pred = Predictions(("a", "b", "c"), tuple(f"img{i}.png" for i in range(60)), y_true, probs)
    ev = summarize(pred)
    y_pred = probs.argmax(1)
    assert ev.metrics["accuracy"] == pytest.approx(accuracy_score(y_true, y_pred))
    assert ev.metrics["macro_f1"] == pytest.approx(f1_score(y_true, y_pred, average="macro"))
    assert ev.metrics["log_loss"] == pytest.approx(log_loss(y_true, probs), rel=1e-6)
    assert np.array_equal(np.array(ev.confusion), confusion_matrix(y_true, y_pred))
    p, r, f, s = precision_recall_fscore_support(y_true, y_pred, zero_division=0)
    assert [c["recall"] for c in ev.per_class] == pytest.approx(list(r))
    assert np.allclose(np.array(ev.confusion_normalized).sum(axis=1), 1.0)
    assert len(ev.misclassified) == int((y_pred != y_true).sum())
    confidences = [m["confidence"] for m in ev.misclassified]
    assert confidences == sorted(confidences, reverse=True)


def test_evaluate_run_reloads_the_best_checkpoint_and_matches_the_run(small_digits_dir, tiny_config, tmp_path):
    # fp32 throughout, so the reloaded checkpoint must score exactly what the run reported
    summary = start_run(tiny_config.replace(epochs=1, amp="off"), small_digits_dir, str(tmp_path))
    ev = evaluate_run(str(tmp_path), summary["run_id"])
    assert ev.split == "test" and ev.classes == tuple(str(i) for i in range(10))
    assert ev.metrics["accuracy"] == pytest.approx(summary["metrics"]["test_accuracy"], abs=1e-9)
    assert sum(map(sum, ev.confusion)) == RunStore(str(tmp_path)).get_run(summary["run_id"])["data"]["test"]
    assert "test_accuracy" in ev.baseline


def test_a_run_without_checkpoint_is_explained(tmp_path):
    store = RunStore(str(tmp_path))
    run_id = store.create_run({}, {})
    with pytest.raises(EvaluationError, match="no best checkpoint yet"):
        evaluate_run(str(tmp_path), run_id)


def test_summary_adds_top_k_calibration_intervals_and_error_analysis():
    from sklearn.metrics import top_k_accuracy_score

    rng = np.random.default_rng(1)
    n, c = 200, 6
    y_true = rng.integers(0, c, n)
    logits = rng.normal(size=(n, c))
    logits[np.arange(n), y_true] += 1.5
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    pred = Predictions(tuple("abcdef"), tuple(f"img{i}.png" for i in range(n)), y_true, probs)
    ev = summarize(pred)
    for k in (3, 5):
        assert ev.metrics[f"top{k}_accuracy"] == pytest.approx(top_k_accuracy_score(y_true, probs, k=k))
    # intervals bracket the point estimates
    for name in ("accuracy", "macro_f1", "log_loss"):
        lo, hi = ev.intervals[name]
        assert lo <= ev.metrics[name] <= hi and hi - lo < 0.3
    # ECE from the reliability bins: sum of |accuracy - confidence| weighted by bin share
    bins = [b for b in ev.calibration.bins if b["count"]]
    assert sum(b["count"] for b in bins) == n
    assert ev.metrics["ece"] == pytest.approx(sum(b["count"] / n * abs(b["accuracy"] - b["confidence"]) for b in bins))
    # the most confused pair is the largest off-diagonal cell; highest-loss images are sorted by loss
    cm = np.array(ev.confusion)
    off = cm - np.diag(np.diag(cm))
    assert ev.confused_pairs[0]["count"] == off.max()
    losses = [h["loss"] for h in ev.highest_loss]
    assert losses == sorted(losses, reverse=True)
    assert losses[0] == pytest.approx((-np.log(probs[np.arange(n), y_true])).max(), rel=1e-6)
    assert ev.n_images == n
