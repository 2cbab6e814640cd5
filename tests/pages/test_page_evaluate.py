"""The Evaluate page under Streamlit's AppTest, on a workspace with three finished runs: two on the same split
(comparable image by image) and one on another split. The full report is built once, through the page's
button, in the background; the tests after it find it again as a user coming back to the page would."""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import re
from html.parser import HTMLParser

import numpy as np
import pytest

from core.evaluate.evaluation import evaluate_run
from core.runs.launch import start_run
from core.runs.store import RunStore
from core.workspace import ENV_VAR, Workspace
from pages import ui
from test_pages import TINY, assert_clean, open_page, shown, texts

PAGE = "pages/evaluate.py"
# the page's small report: one corruption at one severity, no training from scratch, a short latency budget
SMALL = {"baselines": True, "from_scratch": False, "corruptions": ["brightness"], "severities": [1],
         "latency": True, "latency_budget_s": 0.05, "drift_dataset": "", "drift_path": ""}
MODELS = ["fine-tuned", "majority class", "colour + HOG", "linear probe"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory, small_digits_dir):
    """Run a and b split the data alike (same seed); run c was split with another seed."""
    ws = Workspace(str(tmp_path_factory.mktemp("evaluate") / "workspace"))
    ids = {}
    for name, config in (("a", TINY), ("b", TINY.replace(lr=TINY.lr * 3)), ("c", TINY.replace(seed=1))):
        ids[name] = start_run(config, small_digits_dir, runs_dir=ws.runs_dir, workspace_dir=ws.root)["run_id"]
    return ws, ids


@pytest.fixture
def ws(runs, monkeypatch):
    workspace, ids = runs
    monkeypatch.setenv(ENV_VAR, workspace.root)
    shutil.rmtree(os.path.join(workspace.root, "users"), ignore_errors=True)  # each test a newcomer's saved state
    return workspace, ids


def frame_with(at, column: str):
    return next(d.value for d in at.dataframe if any(str(c).startswith(column) for c in d.value.columns))


def button(at, label: str):
    return next(b for b in at.button if b.label == label)


@pytest.fixture(scope="module")
def report_task(runs):
    """The small report of run a, built as a user builds it: options in the form, then the button."""
    workspace, ids = runs
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(ENV_VAR, workspace.root)
        at = open_page(PAGE, {ui.RUN: ids["a"]})
        at.multiselect(key="evaluate.opt.corruptions").set_value(["brightness"])
        at.multiselect(key="evaluate.opt.severities").set_value([])
        button(at, "Build the full report").click().run()
        assert any("pick at least one severity" in e.value for e in at.error), "bad options are refused"
        assert ui._job_manager(workspace.root).tasks.latest("report") is None, "and start nothing"

        at.multiselect(key="evaluate.opt.severities").set_value([1])
        at.number_input(key="evaluate.opt.latency_budget_s").set_value(0.05)
        button(at, "Build the full report").click().run()
        assert_clean(at)
        tasks = ui._job_manager(workspace.root).tasks
        snap = tasks.latest("report")
        assert snap is not None and snap.key.startswith('{"baselines": true')
        if snap.active:
            assert at.get("progress"), "progress while it runs"
        done = tasks.wait(snap.task_id, timeout=300)
        assert done.status == "done", done.error
        return done


def test_the_page_shows_a_runs_metrics_confusion_matrix_and_errors(ws):
    workspace, ids = ws
    at = open_page(PAGE, {ui.RUN: ids["a"]})
    assert_clean(at)
    ev = evaluate_run(workspace.runs_dir, ids["a"])
    metrics = {m.label: m.value for m in at.metric}
    kept_probe = RunStore(workspace.runs_dir).get_run(ids["a"])["summary"]["outcome"]["kept"] == "linear probe"
    label = "test accuracy" + (" (the probe)" if kept_probe else "")  # a run that kept its probe says so
    assert metrics[label] == f"{ev.metrics['accuracy']:.1%}"
    if kept_probe:
        assert next(m for m in at.metric if m.label == label).delta == "the linear probe itself"
    assert metrics["top-3 accuracy"] == f"{ev.metrics['top3_accuracy']:.1%}"
    assert metrics["calibration error (ECE)"] == f"{ev.metrics['ece']:.3f}"
    lo, hi = ev.intervals["accuracy"]
    assert f"accuracy {lo:.3f}–{hi:.3f}" in texts(at), "bootstrap interval of the accuracy"
    assert len(at.get("plotly_chart")) >= 3  # confusion matrix, per class, reliability
    headings = [h.value for h in at.subheader]
    assert f"Misclassified images ({len(ev.misclassified)})" in headings
    assert {"Most confused class pairs", "Highest-loss images"} <= set(headings)
    pairs = frame_with(at, "predicted")
    assert pairs.iloc[0]["count"] == ev.confused_pairs[0]["count"]
    # the cell list opens on the most frequent confusion
    top = ev.confused_pairs[0]
    assert at.selectbox(key="evaluate.cell").value == \
        f"{ev.classes.index(top['true'])},{ev.classes.index(top['predicted'])}"


def test_picking_a_confusion_cell_shows_the_images_behind_it(ws):
    workspace, ids = ws
    ev = evaluate_run(workspace.runs_dir, ids["a"])
    at = open_page(PAGE, {ui.RUN: ids["a"]})
    cm = np.array(ev.confusion)
    diagonal = int(np.argmax(np.diag(cm)))
    confused = np.unravel_index(np.argmax(cm - np.diag(np.diag(cm))), cm.shape)
    for t, p in ((diagonal, diagonal), tuple(int(i) for i in confused)):
        at.selectbox(key="evaluate.cell").set_value(f"{t},{p}").run()
        assert_clean(at)
        count = int(cm[t, p])
        what = "classified correctly" if t == p else f"predicted as {ev.classes[p]}"
        assert f"**{count} image{'' if count == 1 else 's'} of {ev.classes[t]} {what}**" in texts(at)
        grid = at.get("image")[0]  # the first image grid is the cell's
        expected = sorted((m for m in zip(ev.y_true, ev.y_pred, ev.confidence) if m[:2] == (t, p)),
                          key=lambda m: -m[2])
        assert len(grid.value) == min(count, 24)
        assert [shown(c) for c in grid.captions] == [f"{c:.0%}" for *_, c in expected][:24]


def test_the_full_report_runs_in_the_background_and_its_sections_show(ws, report_task):
    workspace, ids = ws
    # a fresh session with the same options (as after a reload) finds the report: nothing is built again
    at = open_page(PAGE, {ui.RUN: ids["a"], "evaluate.report.saved": SMALL})
    assert_clean(at)
    tasks = ui._job_manager(workspace.root).tasks
    assert tasks.latest("report").task_id == report_task.task_id
    report = report_task.result
    verdicts = [shown(m.value) for m in (*at.success, *at.warning)]
    assert report.verdict in verdicts
    assert ("did not" in report.verdict) == (not report.fine_tuning_helped)
    assert report.comparison.describe() in texts(at), "McNemar's test in words"
    assert frame_with(at, "accuracy 95%")["model"].tolist() == MODELS
    headings = [h.value for h in at.subheader]
    assert {"Fine-tuned model and baselines", "Deployment, measured on this machine",
            "Robustness to corruptions"} <= set(headings)
    assert f"{report.deployment.parameters / 1e6:.2f} M" in [m.value for m in at.metric]
    # the latency tile holds a short figure (it was cut off); the conditions are in its help and beside it
    latency = next(m for m in at.metric if m.label == "latency per image")
    assert re.fullmatch(r"[\d,]+(\.\d)? ms", latency.value) and "batch 1" in latency.proto.help
    conditions = report.deployment.latency.conditions()
    assert conditions.startswith("measured in a clean child process")
    assert f"**Latency and memory:** {conditions}." in texts(at)
    assert len(at.get("plotly_chart")) >= 5  # + models, robustness (and costs)
    # away to another page and back: the widgets were dropped, the report is still there
    at.switch_page("pages/runs.py").run()
    at.switch_page(PAGE).run()
    assert_clean(at)
    assert "Fine-tuned model and baselines" in [h.value for h in at.subheader]


def test_costs_are_priced_for_every_model_and_change_with_the_inputs(ws, report_task):
    workspace, ids = ws
    ev = evaluate_run(workspace.runs_dir, ids["a"])
    at = open_page(PAGE, {ui.RUN: ids["a"], "evaluate.report.saved": SMALL})
    at.number_input(key="evaluate.cost.volume").set_value(1000.0)
    at.number_input(key="evaluate.cost.error").set_value(2.0).run()
    assert_clean(at)
    costs = frame_with(at, "cost per month").set_index("model")
    assert costs.index.tolist() == MODELS
    errors = ev.n_images - int(np.trace(ev.confusion))
    assert costs.loc["fine-tuned", "cost per month"] == pytest.approx(1000 * 2.0 * errors / ev.n_images)
    assert costs.loc["fine-tuned", "errors per month"] == round(1000 * errors / ev.n_images), "whole errors"
    assert all(float(v).is_integer() for v in costs["errors per month"])
    majority = next(m for m in report_task.result.models if m.name == "majority class")
    assert costs.loc["majority class", "cost per month"] == pytest.approx(
        1000 * 2.0 * (1 - majority.metrics["accuracy"]))

    # missing the class the model misses most costs 100 more per miss
    cm = np.array(ev.confusion)
    missed = cm.sum(1) - np.diag(cm)
    k = int(np.argmax(missed))
    at.text_input(key="evaluate.cost.fn").set_value(f"{ev.classes[k]}=100").run()
    assert_clean(at)
    costs = frame_with(at, "cost per month").set_index("model")
    assert costs.loc["fine-tuned", "cost per month"] == pytest.approx(
        1000 * (2.0 * errors + 100 * missed[k]) / ev.n_images)
    assert ui._job_manager(workspace.root).tasks.latest("report").task_id == report_task.task_id, \
        "a change of costs starts no report"

    at.number_input(key="evaluate.cost.volume").set_value(333.0).run()  # 333 x an error rate: a fraction
    expected = frame_with(at, "cost per month").set_index("model").loc["fine-tuned", "errors per month"]
    assert expected == round(333 * errors / ev.n_images) and float(expected).is_integer()

    at.text_input(key="evaluate.cost.fp").set_value("lots").run()
    assert any("not a number" in shown(e.value) for e in at.error) and not at.exception
    at.text_input(key="evaluate.cost.fp").set_value("cow=3").run()
    assert any("unknown class(es) cow" in shown(e.value) for e in at.error) and not at.exception


def test_without_the_report_only_the_fine_tuned_model_is_priced(ws):
    workspace, ids = ws
    at = open_page(PAGE, {ui.RUN: ids["b"]})
    assert_clean(at)
    assert frame_with(at, "cost per month")["model"].tolist() == ["fine-tuned"]
    assert any("Only the fine-tuned model is priced" in c.value for c in at.caption)


def test_two_runs_are_compared_image_by_image_when_they_share_the_test_images(ws):
    workspace, ids = ws
    at = open_page(PAGE, {ui.RUN: ids["a"]})
    at.selectbox(key="evaluate.other").set_value(ids["b"]).run()
    assert_clean(at)
    a, b = (evaluate_run(workspace.runs_dir, ids[x]) for x in "ab")
    table = frame_with(at, "metric").set_index("metric")
    assert table.loc["accuracy", "a"] == pytest.approx(a.metrics["accuracy"])
    assert table.loc["accuracy", "b"] == pytest.approx(b.metrics["accuracy"])
    said = " ".join(shown(s.value) for s in (*at.success, *at.info))  # info when nothing tells them apart
    assert f"McNemar's test on the same {a.n_images} images" in said

    at.selectbox(key="evaluate.other").set_value(ids["c"]).run()
    assert_clean(at)
    assert any("were evaluated on different images" in shown(i.value) for i in at.info)


def test_the_export_writes_an_html_report_with_the_confusion_matrix(ws, report_task):
    workspace, ids = ws
    at = open_page(PAGE, {ui.RUN: ids["a"], "evaluate.report.saved": SMALL})
    button(at, "Write the report files").click().run()
    assert_clean(at)
    folder = os.path.join(workspace.runs_dir, ids["a"], "evaluation")
    assert sorted(os.listdir(folder)) == ["metrics.csv", "metrics.json", "report.html"], "and no temporary file"
    assert len(at.get("download_button")) == 3

    class Confusion(HTMLParser):
        rows, inside = [], False

        def handle_starttag(self, tag, attrs):
            if tag == "table":
                self.inside = dict(attrs).get("id") == "confusion-matrix"
            elif tag == "tr" and self.inside:
                self.rows.append([])

        def handle_data(self, data):
            if self.inside and self.rows and data.strip():
                self.rows[-1].append(data.strip())

        def handle_endtag(self, tag):
            if tag == "table":
                self.inside = False

    parser = Confusion()
    parser.feed(open(os.path.join(folder, "report.html"), encoding="utf-8").read())
    confusion = report_task.result.evaluation.confusion
    assert [[int(v) for v in row[1:]] for row in parser.rows[1:]] == [list(r) for r in confusion]
    assert "Cost of errors" in open(os.path.join(folder, "report.html"), encoding="utf-8").read()


def test_a_report_that_fails_says_why(ws):
    workspace, ids = ws
    at = open_page(PAGE, {ui.RUN: ids["c"]})
    at.checkbox(key="evaluate.opt.baselines").uncheck()
    at.checkbox(key="evaluate.opt.latency").uncheck()
    at.multiselect(key="evaluate.opt.corruptions").set_value([])
    at.text_input(key="evaluate.opt.drift_path").set_value(os.path.join(str(workspace.root), "no-such-folder"))
    button(at, "Build the full report").click().run()
    tasks = ui._job_manager(workspace.root).tasks
    snap = tasks.wait(tasks.latest("report").task_id, timeout=120)
    assert snap.status == "failed"
    at.run()
    assert not at.exception
    assert any("Building the report failed" in shown(e.value) and "no-such-folder" in shown(e.value) for e in at.error)


def test_a_drift_path_outside_the_allowed_data_roots_is_refused(ws, tmp_path, monkeypatch):
    from core.workspace import DATA_ROOTS_VAR

    workspace, ids = ws
    monkeypatch.setenv(DATA_ROOTS_VAR, str(tmp_path / "allowed"))
    tasks = ui._job_manager(workspace.root).tasks
    before = getattr(tasks.latest("report"), "task_id", None)
    at = open_page(PAGE, {ui.RUN: ids["c"]})
    at.text_input(key="evaluate.opt.drift_path").set_value(str(tmp_path / "elsewhere"))
    button(at, "Build the full report").click().run()
    assert any(DATA_ROOTS_VAR in shown(e.value) for e in at.error), [e.value for e in at.error]
    assert getattr(tasks.latest("report"), "task_id", None) == before, "no report was started"


def test_a_result_equal_to_the_probe_is_not_shown_as_a_gain(ws, monkeypatch):
    """A delta of +0.0% was green: no gain is neutral grey, and a missing baseline shows no delta at all."""
    import streamlit as st

    import core.evaluate.evaluation
    from core.runs.jobs import JobManager

    workspace, ids = ws
    listed = JobManager.visible_runs

    def fine_tuned(self, user):  # the run kept its fine-tuned model (the tiles then compare it with the probe)
        return [{**r, "summary": {**(r.get("summary") or {}), "outcome": {"kept": "fine-tuned"}}}
                for r in listed(self, user)]

    real = core.evaluate.evaluation.evaluate_run

    def level_with_the_probe(runs_dir, run_id, split="test", device="cpu"):
        ev = real(runs_dir, run_id, split, device)
        return dataclasses.replace(ev, baseline={"test_accuracy": ev.metrics["accuracy"] + 0.0001,
                                                 "test_macro_f1": ev.metrics["macro_f1"] - 0.05})
    monkeypatch.setattr(JobManager, "visible_runs", fine_tuned)
    monkeypatch.setattr(core.evaluate.evaluation, "evaluate_run", level_with_the_probe)
    st.cache_data.clear()
    try:
        at = open_page(PAGE, {ui.RUN: ids["a"]})
        assert_clean(at)
        tiles = {m.label: m for m in at.metric}
        same = tiles["test accuracy"]
        assert same.delta == "same as the linear probe" and same.proto.color == same.proto.GRAY
        gain = tiles["test macro f1"]
        assert gain.delta == "+5.0% vs. linear probe" and gain.proto.color == gain.proto.GREEN
        assert not tiles["test macro precision"].delta, "no recorded baseline: no delta"
    finally:
        st.cache_data.clear()  # later tests see the run's real evaluation


def test_the_per_class_table_has_room_for_every_column(ws):
    workspace, ids = ws
    at = open_page(PAGE, {ui.RUN: ids["a"]})
    table = next(d for d in at.dataframe if "support" in d.value.columns)
    config = json.loads(table.proto.columns)
    assert {"recall", "f1", "support"} <= set(config) and all("width" in config[c] for c in ("recall", "f1"))
    assert not any(column.dataframe for column in at.tabs[1].columns), "not squeezed into a column beside the chart"


def test_a_drift_folder_is_stored_only_when_asked_and_named_after_its_folder(ws, small_digits_dir, tmp_path):
    from PIL import Image

    from core.runs.compare import dataset_names

    workspace, ids = ws
    folder = tmp_path / "field-photos" / "test"
    for label in ("0", "1"):
        (folder / label).mkdir(parents=True)
        for name in sorted(os.listdir(os.path.join(small_digits_dir, label)))[-2:]:
            image = Image.open(os.path.join(small_digits_dir, label, name)).convert("RGB")
            image.putpixel((0, 0), (1, 2, 3))  # not a copy of a training image
            image.save(folder / label / name)
    before = dict(dataset_names(workspace.root))
    tasks = ui._job_manager(workspace.root).tasks
    started = getattr(tasks.latest("report"), "task_id", None)
    at = open_page(PAGE, {ui.RUN: ids["b"]})
    at.checkbox(key="evaluate.opt.baselines").uncheck()
    at.checkbox(key="evaluate.opt.latency").uncheck()
    at.multiselect(key="evaluate.opt.corruptions").set_value([])
    at.text_input(key="evaluate.opt.drift_path").set_value(str(folder))
    button(at, "Build the full report").click().run()
    asked = " ".join(shown(w.value) for w in at.warning)
    assert "will be stored in this workspace as the dataset **field-photos/test**" in asked, asked
    assert getattr(tasks.latest("report"), "task_id", None) == started, "nothing started before the user agrees"
    assert dataset_names(workspace.root) == before, "and nothing stored"

    at.checkbox(key="evaluate.opt.drift_store").check()
    button(at, "Build the full report").click().run()
    snap = tasks.wait(tasks.latest("report").task_id, timeout=300)
    assert snap.status == "done", snap.error
    added = {k: v for k, v in dataset_names(workspace.root).items() if k not in before}
    assert list(added.values()) == ["field-photos/test"]
