import os
import csv
import json
from html.parser import HTMLParser

import numpy as np
import pytest

from core.config import AugmentSpec, TrainConfig
from core.evaluate.evaluation import evaluate_run
from core.cli.evaluate import main as evaluate_main
from core.evaluate.costs import CostModel
from core.evaluate.report import EvaluationOptions, build_report, progress_steps, with_costs
from core.evaluate.report_files import write_report
from core.files import jsonable
from core.runs.launch import run_inputs, start_run
from core.runs.store import RunStore


@pytest.fixture(scope="module")
def finished_run(small_digits_dir, tmp_path_factory):
    runs = str(tmp_path_factory.mktemp("runs"))
    config = TrainConfig(image_size=32, epochs=1, batch_size=32, augment=AugmentSpec(hflip=False),
                         early_stopping_patience=0)
    summary = start_run(config, small_digits_dir, runs)
    return runs, summary


def test_the_report_sets_the_model_beside_its_baselines_on_the_same_images(finished_run, small_digits_dir):
    runs, summary = finished_run
    run_id = summary["run_id"]
    costs = CostModel(monthly_volume=1000, error_cost=2.0)
    report = build_report(runs, run_id, EvaluationOptions(
        device="cpu", from_scratch=True, corruptions=("gaussian_noise", "jpeg"), severities=(1, 3), costs=costs,
        drift_data=small_digits_dir, latency_batch=8, latency_budget_s=0.2))
    assert [m.name for m in report.models] == ["fine-tuned", "majority class", "colour + HOG", "linear probe",
                                               "from scratch"]
    ft = report.models[0]
    # the same scores as evaluate_run (both fp32; the run's own figure is bf16 and may differ by an image or two)
    plain = evaluate_run(runs, run_id)
    assert ft.metrics == pytest.approx(plain.metrics) and report.evaluation.confusion == plain.confusion
    # the majority baseline scores the test share of the most frequent training class
    _, data = run_inputs(RunStore(runs), run_id)
    majority = int(np.argmax(np.bincount(data.train.labels, minlength=10)))
    share = np.mean(np.asarray(data.test.labels) == majority)
    assert report.models[1].metrics["accuracy"] == pytest.approx(share)
    # McNemar against the best baseline, and a verdict in words
    best = max(report.models[1:], key=lambda m: (m.metrics["accuracy"], m.metrics["macro_f1"]))
    assert report.comparison.model_b == best.name and 0 <= report.comparison.p_value <= 1
    assert isinstance(report.fine_tuning_helped, bool)
    assert ("did not" in report.verdict) == (not report.fine_tuning_helped)
    # robustness: two corruptions at two severities, clean accuracy as measured
    assert [(s.corruption, s.severity) for s in report.robustness.scores] == [
        ("gaussian_noise", 1), ("gaussian_noise", 3), ("jpeg", 1), ("jpeg", 3)]
    assert report.robustness.clean_accuracy == pytest.approx(ft.metrics["accuracy"])
    # drift on the training folder itself: every train/val image is left out, the test images remain
    assert report.drift.n_images == len(data.test) and report.drift.excluded_overlap == len(data.train) + len(data.val)
    assert report.drift.accuracy == pytest.approx(ft.metrics["accuracy"])
    # costs: error rate x volume x error cost, for every model
    assert len(report.costs) == 5
    assert report.costs[0].cost_per_month == pytest.approx((1 - ft.metrics["accuracy"]) * 1000 * 2.0)
    # other costs are priced from the predictions the report keeps, for every model, without running one again
    assert set(report.predictions) == {m.name for m in report.models}
    assert with_costs(with_costs(report, None), costs).costs == report.costs
    dearer = with_costs(report, CostModel(monthly_volume=3000, error_cost=2.0))
    assert [c.cost_per_month for c in dearer.costs] == pytest.approx([3 * c.cost_per_month for c in report.costs])
    assert dearer.options.costs.monthly_volume == 3000 and dearer.evaluation is report.evaluation
    d = report.deployment
    assert d.parameters > 3_000_000 and d.file_size_mb > 1 and d.latency.latency_ms_batch1 > 0
    json.dumps(jsonable(report.to_dict()))


class _Tables(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tables, self.current, self.cell, self.scripts = {}, None, None, []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "table" and attrs.get("id"):
            self.current = attrs["id"]
            self.tables[self.current] = []
        elif tag == "tr" and self.current:
            self.tables[self.current].append([])
        elif tag in ("td", "th") and self.current:
            self.cell = ""
        elif tag == "script":
            self.scripts.append(attrs)

    def handle_data(self, data):
        if self.cell is not None:
            self.cell += data

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self.current and self.cell is not None:
            self.tables[self.current][-1].append(self.cell.strip())
            self.cell = None
        elif tag == "table":
            self.current = None


def test_html_report_is_self_contained_and_holds_the_confusion_matrix(finished_run, tmp_path):
    runs, summary = finished_run
    options = EvaluationOptions(device="cpu", baselines=False, corruptions=("brightness",), latency=False)
    said = []
    report = build_report(runs, summary["run_id"], options, progress=said.append)
    assert len(said) == progress_steps(options), said
    report = write_report(with_costs(report, CostModel(monthly_volume=333, error_cost=1.5)), str(tmp_path))
    text = open(report.files["html"], encoding="utf-8").read()
    parser = _Tables()
    parser.feed(text)
    header, fine_tuned = parser.tables["costs"][:2]
    errors = fine_tuned[header.index("errors per month (expected)")]
    assert errors == f"{report.costs[0].errors_per_month:,.0f}" and errors.replace(",", "").isdigit(), "whole errors"
    rows = parser.tables["confusion-matrix"]
    assert rows[0][1:] == list(report.classes)
    assert [[int(v) for v in row[1:]] for row in rows[1:]] == [list(r) for r in report.evaluation.confusion]
    assert not any(s.get("src") for s in parser.scripts)  # plotly inlined: opens offline
    assert "Plotly.newPlot" in text and 'id="fig-confusion"' in text
    saved = json.load(open(report.files["json"]))
    assert saved["evaluation"]["confusion"] == [list(r) for r in report.evaluation.confusion]
    with open(report.files["csv"]) as f:
        rows = list(csv.DictReader(f))
    accuracy = next(r for r in rows if r["section"] == "metrics" and r["model"] == "fine-tuned"
                    and r["name"] == "accuracy")
    assert float(accuracy["value"]) == pytest.approx(report.evaluation.metrics["accuracy"])


def test_evaluate_cli_prints_json_last_and_refuses_bad_input(finished_run, tmp_path, capsys):
    runs, summary = finished_run
    run_id = summary["run_id"]
    code = evaluate_main([run_id, "--runs-dir", runs, "--no-baselines", "--corruptions", "none", "--no-latency",
                          "--device", "cpu", "--report-dir", str(tmp_path), "--volume", "500", "--fp-cost", "3"])
    assert code == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["run_id"] == run_id and out["evaluation"]["metrics"]["accuracy"] > 0.1
    assert out["robustness"] is None and out["costs"][0]["model"] == "fine-tuned"
    assert (tmp_path / "report.html").exists() and out["files"]["csv"].endswith("metrics.csv")
    # per-image predictions grow with the test set: in metrics.json, not on the printed line
    assert "y_pred" not in out["evaluation"] and out["evaluation"]["per_image"] == "in metrics.json"
    exported = json.loads((tmp_path / "metrics.json").read_text())
    assert len(exported["evaluation"]["y_pred"]) == out["evaluation"]["n_images"]
    assert evaluate_main(["no-such-run", "--runs-dir", runs]) == 2
    assert evaluate_main([run_id, "--runs-dir", runs, "--corruptions", "fog"]) == 2
    assert "fog" in capsys.readouterr().err
    assert evaluate_main([]) == 2


def test_a_failed_export_leaves_no_file_behind(finished_run, tmp_path, monkeypatch):
    import core.evaluate.report_files

    runs, summary = finished_run
    report = build_report(runs, summary["run_id"], EvaluationOptions(device="cpu", baselines=False, corruptions=(),
                                                                     latency=False))
    write_report(report, str(tmp_path / "old"))
    before = {p.name: p.read_bytes() for p in (tmp_path / "old").iterdir()}

    def broken(rows):
        raise OSError("disk full")
    monkeypatch.setattr(core.evaluate.report_files, "metric_rows", broken)
    with pytest.raises(OSError, match="disk full"):
        write_report(report, str(tmp_path / "new"))
    assert not (tmp_path / "new").exists()
    monkeypatch.setattr(core.evaluate.report_files, "_write_atomically", lambda path, text: (_ for _ in ()).throw(OSError("full")))
    with pytest.raises(OSError):
        write_report(report, str(tmp_path / "old"))
    assert {p.name: p.read_bytes() for p in (tmp_path / "old").iterdir()} == before, "the old report is intact"


@pytest.mark.parametrize("options, message", [
    (dict(split="training"), "split must be one of train, val, test"),
    (dict(corruptions=("fog",)), "unknown corruption.*fog.*gaussian_noise"),
    (dict(severities=(4,)), "severities must be among 1, 2, 3"),
    (dict(severities=()), "pick at least one severity"),
    (dict(latency_budget_s=0), "latency_budget_s must be above 0"),
])
def test_options_that_cannot_work_are_refused_before_anything_runs(options, message):
    with pytest.raises(ValueError, match=message):
        EvaluationOptions(**options)
    assert EvaluationOptions(corruptions=(), severities=()).severities == ()


def test_a_drift_folder_is_stored_under_its_parents_name_not_as_test(finished_run, small_digits_dir, tmp_path):
    from PIL import Image

    from core.runs.compare import dataset_names
    from core.evaluate.report import stored_name

    runs, summary = finished_run
    folder = tmp_path / "flowers" / "test"
    for label in ("0", "1", "2"):
        (folder / label).mkdir(parents=True)
        for name in sorted(os.listdir(os.path.join(small_digits_dir, label)))[-3:]:
            image = Image.open(os.path.join(small_digits_dir, label, name)).convert("RGB")
            image.putpixel((0, 0), (1, 2, 3))  # not a byte copy of a training image: none is left out
            image.save(folder / label / name)
    assert stored_name(str(folder)) == "flowers/test" and stored_name(str(tmp_path / "flowers")) == "flowers"
    assert stored_name("/somewhere/test.zip") == "test.zip", "an archive keeps its file name (and kind)"
    workspace = str(tmp_path / "ws")
    report = build_report(runs, summary["run_id"], EvaluationOptions(
        device="cpu", baselines=False, corruptions=(), latency=False, drift_data=str(folder),
        workspace_dir=workspace))
    assert report.drift.source == str(folder), "the report names the folder the user gave"
    assert report.drift.n_images == 9 and report.drift.excluded_overlap == 0
    assert list(dataset_names(workspace).values()) == ["flowers/test"]
