"""A report on disk and as JSON: `write_report` exports report.html (self-contained, plotly inlined, so it
opens offline), metrics.json and metrics.csv, each written whole or not at all; `default_report_dir` says
where a run's report goes; `summary_dict` is the JSON the CLI prints.
"""
from __future__ import annotations

import csv
import dataclasses
import io
import json
import os
from typing import Any

from core.evaluate.report import EvaluationReport
from core.evaluate.report_html import render_html
from core.evaluate.tables import metric_rows
from core.files import jsonable, write_text

REPORT_FILES = {"html": "report.html", "json": "metrics.json", "csv": "metrics.csv"}


def write_report(report: EvaluationReport, folder: str) -> EvaluationReport:
    """report.html (self-contained), metrics.json and metrics.csv in `folder`; returns the report with `files`."""
    files = {kind: os.path.join(os.path.abspath(folder), name) for kind, name in REPORT_FILES.items()}
    report = dataclasses.replace(report, files=files)
    # everything rendered before anything is written; each file appears whole or not at all
    table = io.StringIO()
    writer = csv.DictWriter(table, fieldnames=["section", "model", "name", "value", "low", "high"])
    writer.writeheader()
    writer.writerows(metric_rows(report))
    contents = {"html": render_html(report), "json": json.dumps(jsonable(report.to_dict()), indent=1),
                "csv": table.getvalue()}
    os.makedirs(folder, exist_ok=True)
    for kind, text in contents.items():
        _write_atomically(files[kind], text)
    return report


def _write_atomically(path: str, text: str) -> None:
    """Write to a temporary file in the same folder, fsync it, then rename it over `path`."""
    write_text(path, text)


def default_report_dir(runs_dir: str, run_id: str, split: str = "test") -> str:
    """Where a run's report is written: RUNS_DIR/RUN_ID/evaluation (evaluation-val for the val split, ...)."""
    return os.path.join(runs_dir, run_id, "evaluation" if split == "test" else f"evaluation-{split}")


PER_IMAGE = ("paths", "y_true", "y_pred", "confidence")  # RunEvaluation's per-image fields


def summary_dict(report: EvaluationReport) -> dict[str, Any]:
    """The report as plain JSON without the per-image predictions (which grow with the test set): what the
    CLI prints. metrics.json keeps them."""
    out = jsonable(report.to_dict())
    for key in PER_IMAGE:
        out["evaluation"].pop(key, None)
    out["evaluation"]["per_image"] = "in metrics.json" if report.files else "not exported (--no-report)"
    return out
