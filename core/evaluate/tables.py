"""The report's numbers as table rows, shared by the HTML report, the CSV export and the Evaluate page:
the side-by-side models, the deployment figures, and every figure as flat (section, model, name, value,
low, high) rows.
"""
from __future__ import annotations

from typing import Any

from core.evaluate.latency import DeploymentProfile
from core.evaluate.report import FINE_TUNED, EvaluationReport


def metric_rows(report: EvaluationReport) -> list[dict[str, Any]]:
    """The report's numbers as flat rows: section, model, name, value, low, high (the CSV export)."""
    rows: list[dict[str, Any]] = []
    for m in report.models:
        for name, value in m.metrics.items():
            low, high = m.intervals.get(name, ("", ""))
            rows.append({"section": "metrics", "model": m.name, "name": name, "value": value, "low": low,
                         "high": high})
    for row in report.evaluation.per_class:
        for name in ("precision", "recall", "f1", "support"):
            rows.append({"section": "per_class", "model": FINE_TUNED, "name": f"{row['class']}/{name}",
                         "value": row[name], "low": "", "high": ""})
    if report.comparison:
        rows.append({"section": "mcnemar", "model": report.comparison.model_b, "name": "p_value",
                     "value": report.comparison.p_value, "low": "", "high": ""})
    if report.deployment:
        d = report.deployment
        for name, value in (("parameters", d.parameters), ("file_size_mb", d.file_size_mb),
                            *((k, v) for k, v in d.latency.to_dict().items() if isinstance(v, (int, float)))):
            rows.append({"section": "deployment", "model": FINE_TUNED, "name": name, "value": value, "low": "",
                         "high": ""})
    if report.robustness:
        rows.append({"section": "robustness", "model": FINE_TUNED, "name": "clean/accuracy",
                     "value": report.robustness.clean_accuracy, "low": "", "high": ""})
        for s in report.robustness.scores:
            rows.append({"section": "robustness", "model": FINE_TUNED, "name": f"{s.corruption}/{s.severity}",
                         "value": s.accuracy, "low": "", "high": ""})
    if report.drift:
        rows.append({"section": "drift", "model": FINE_TUNED, "name": "accuracy", "value": report.drift.accuracy,
                     "low": "", "high": ""})
    for c in report.costs:
        rows.append({"section": "costs", "model": c.model, "name": "cost_per_month", "value": c.cost_per_month,
                     "low": c.cost_per_month_interval[0], "high": c.cost_per_month_interval[1]})
    return rows


def model_rows(report: EvaluationReport) -> list[dict[str, Any]]:
    """The side-by-side table: one row per model (fine-tuned first), with the 95% intervals."""
    return [{"model": m.name, "accuracy": m.metrics.get("accuracy"),
             "accuracy 95%": format_interval(m.intervals.get("accuracy")), "macro F1": m.metrics.get("macro_f1"),
             "macro F1 95%": format_interval(m.intervals.get("macro_f1")), "log loss": m.metrics.get("log_loss"),
             "seconds": m.seconds, "what it is": m.description} for m in report.models]


def deployment_rows(deployment: DeploymentProfile) -> list[tuple[str, Any]]:
    """(figure, value) pairs of a deployment profile, in words, for a table."""
    d, lat = deployment, deployment.latency
    return [("parameters", f"{d.parameters:,}"), ("weights file, MiB", d.file_size_mb if d.file_size_mb else "-"),
            ("device", lat.device), ("precision", lat.dtype), ("input", f"{lat.image_size} px"),
            ("latency per image, batch 1, ms", lat.latency_ms_batch1),
            (f"latency per image, batch {lat.batch_size}, ms", lat.latency_ms_batch),
            (f"throughput at batch {lat.batch_size}, images/s", lat.throughput_per_s),
            (f"peak memory at batch {lat.batch_size}, MiB", lat.peak_memory_mb),
            ("memory measured as", lat.memory_method), *lat.condition_rows()]


def format_interval(iv: Any, digits: int = 4) -> str:
    """An interval as "[low, high]" at `digits` decimals; "-" when there is none."""
    return f"[{iv[0]:.{digits}f}, {iv[1]:.{digits}f}]" if iv else "-"
