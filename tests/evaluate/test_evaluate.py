import os

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, log_loss, precision_recall_fscore_support

from core.model.checkpoint import load_model
from core.evaluate.evaluation import EvaluationError, Predictions, evaluate_run, predict, summarize
from core.runs.launch import run_inputs, start_run
from core.runs.store import RunStore


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
    # trained under bf16 autocast, but a run reports fp32 figures: the reloaded checkpoint (fp32, as exported)
    # must score exactly what the run said, in its metrics, its outcome sentence and its probe baseline
    summary = start_run(tiny_config.replace(epochs=1, amp="bf16"), small_digits_dir, str(tmp_path))
    ev = evaluate_run(str(tmp_path), summary["run_id"])
    assert ev.split == "test" and ev.classes == tuple(str(i) for i in range(10))
    assert ev.metrics["accuracy"] == pytest.approx(summary["metrics"]["test_accuracy"], abs=1e-9)
    assert ev.metrics["accuracy"] == pytest.approx(summary["outcome"]["comparisons"]["test"]["model"], abs=1e-9)
    probe, pre, meta = load_model(os.path.join(str(tmp_path), summary["run_id"], "checkpoints", "probe.safetensors"))
    _, data = run_inputs(RunStore(str(tmp_path)), summary["run_id"])
    pred = predict(probe, pre, data.test, tuple(meta["classes"]))
    assert float((pred.probs.argmax(1) == pred.y_true).mean()) == pytest.approx(ev.baseline["test_accuracy"], abs=1e-9)
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


def _fixed_predictions(n: int = 120, c: int = 4, seed: int = 2, paths: tuple[str, ...] | None = None) -> Predictions:
    rng = np.random.default_rng(seed)
    y_true = rng.integers(0, c, n)
    logits = rng.normal(size=(n, c))
    logits[np.arange(n), y_true] += 1.0
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    return Predictions(tuple("wxyz"[:c]), paths or tuple(f"img{i}.png" for i in range(n)), y_true, probs)


def test_the_images_behind_each_confusion_cell_add_up_to_its_count():
    from core.evaluate.evaluation import cell_images

    pred = _fixed_predictions()
    ev = summarize(pred)
    for t in range(4):
        for p in range(4):
            images = cell_images(ev, t, p)
            assert len(images) == ev.confusion[t][p], (t, p)
            index = {path: i for i, path in enumerate(pred.paths)}
            for m in images:
                i = index[m["path"]]
                assert pred.y_true[i] == t and pred.probs[i].argmax() == p
                assert m["confidence"] == pytest.approx(pred.probs[i].max())
            confidences = [m["confidence"] for m in images]
            assert confidences == sorted(confidences, reverse=True)
    # by name as well as by index; the off-diagonal cells together are the misclassified images
    assert cell_images(ev, "x", "y") == cell_images(ev, 1, 2)
    wrong = {m["path"] for t in range(4) for p in range(4) if t != p for m in cell_images(ev, t, p)}
    assert wrong == {m["path"] for m in ev.misclassified}
    with pytest.raises(EvaluationError, match="unknown class 'cow'.*w, x, y, z"):
        cell_images(ev, "cow", 0)
    with pytest.raises(EvaluationError, match="unknown class 4"):
        cell_images(ev, 0, 4)


def test_two_runs_on_the_same_images_get_a_paired_test_whatever_their_order():
    from core.evaluate.evaluation import compare_evaluations
    from core.stats import mcnemar

    a_pred = _fixed_predictions(seed=3)
    b_pred = _fixed_predictions(seed=4)
    b_pred = Predictions(b_pred.classes, a_pred.paths, a_pred.y_true, b_pred.probs)  # same images and labels
    a = summarize(a_pred, "run-a")
    order = np.random.default_rng(0).permutation(len(a_pred.paths))  # run b predicted them in another order
    b = summarize(Predictions(b_pred.classes, tuple(np.asarray(b_pred.paths)[order]), b_pred.y_true[order],
                              b_pred.probs[order]), "run-b")
    comparison = compare_evaluations(a, b)
    expected = mcnemar(a_pred.y_true, a_pred.y_pred, b_pred.y_pred, "run-a", "run-b")
    assert comparison.paired == expected and comparison.n_common == len(order)
    assert f"p = {expected.p_value:.3g}" in comparison.reason
    rows = {r["metric"]: r for r in comparison.rows}
    assert rows["accuracy"]["a"] == a.metrics["accuracy"] and rows["accuracy"]["b"] == b.metrics["accuracy"]
    assert rows["log_loss"]["difference"] == pytest.approx(b.metrics["log_loss"] - a.metrics["log_loss"])


def test_runs_on_different_images_or_classes_are_compared_without_a_paired_test():
    from core.evaluate.evaluation import compare_evaluations

    a = summarize(_fixed_predictions(seed=5), "run-a")
    other_images = _fixed_predictions(seed=6, paths=tuple(f"other{i}.png" for i in range(100)) +
                                      tuple(f"img{i}.png" for i in range(20)))
    comparison = compare_evaluations(a, summarize(other_images, "run-b"))
    assert comparison.paired is None and comparison.n_common == 20
    assert "different images (120 and 120, 20 in common)" in comparison.reason
    assert len(comparison.rows) >= 4, "the metrics are still shown side by side"
    three = _fixed_predictions(seed=5, c=3)
    comparison = compare_evaluations(a, summarize(three, "run-c"))
    assert comparison.paired is None and "different classes" in comparison.reason


def test_two_runs_that_both_kept_the_same_probe_are_said_to_be_the_same_model():
    import dataclasses

    from core.evaluate.evaluation import compare_evaluations

    pred = _fixed_predictions(seed=7)
    a, b = (dataclasses.replace(summarize(pred, run), kept="linear probe") for run in ("run-a", "run-b"))
    comparison = compare_evaluations(a, b)
    assert comparison.paired.p_value == 1
    assert comparison.reason.startswith("Both runs' saved models are the same linear probe"), comparison.reason
    assert "identical predictions and confidences on all 120 images" in comparison.reason
    # the same weights without a record of what was kept: still said, not only "p = 1"
    plain = compare_evaluations(summarize(pred, "run-a"), summarize(pred, "run-b"))
    assert "identical predictions and confidences" in plain.reason and "same weights" in plain.reason
    # two probes that differ are compared, and the reader is told these are probes
    other = Predictions(pred.classes, pred.paths, pred.y_true, _fixed_predictions(seed=8).probs)
    c = dataclasses.replace(summarize(other, "run-c"), kept="linear probe")
    assert "this compares the two probes, not fine-tuning" in compare_evaluations(a, c).reason
    d = dataclasses.replace(summarize(other, "run-d"), kept="fine-tuned")
    assert compare_evaluations(a, d).reason.startswith("Run run-a kept its linear probe")


def test_evaluate_run_records_what_the_run_kept(small_digits_dir, tiny_config, tmp_path):
    summary = start_run(tiny_config.replace(epochs=1), small_digits_dir, str(tmp_path))
    ev = evaluate_run(str(tmp_path), summary["run_id"])
    assert ev.kept == summary["outcome"]["kept"] and ev.kept in ("fine-tuned", "linear probe")
