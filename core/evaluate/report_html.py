"""The report as one self-contained HTML page: its sections, tables, figures (plotly.js inlined once) and
thumbnails of the misclassified images.
"""
from __future__ import annotations

import base64
import html
import io
import json
from typing import Any, Sequence

import numpy as np

from core.data.images import load_rgb
from core.evaluate import figures
from core.evaluate.report import EvaluationReport
from core.evaluate.tables import deployment_rows, format_interval, model_rows

N_THUMBNAILS = 24  # misclassified images shown as pictures in the HTML report


def _fmt(value: Any, digits: int = 4) -> str:
    if isinstance(value, float):
        return "-" if not np.isfinite(value) else f"{value:.{digits}f}"
    return html.escape(str(value))


def _table(headers: Sequence[str], rows: Sequence[Sequence[Any]], table_id: str = "") -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{_fmt(v)}</td>" for v in row) + "</tr>" for row in rows)
    ident = f' id="{table_id}"' if table_id else ""
    return f"<table{ident}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _thumbnail(path: str, side: int = 96) -> str:
    """A data: URI of a small PNG of the image, or "" if it cannot be read."""
    try:
        img = load_rgb(path)
        img.thumbnail((side, side))
        buffer = io.BytesIO()
        img.save(buffer, format="PNG")
        return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")
    except Exception:  # a moved or unreadable file: the row still lists it
        return ""


def render_html(report: EvaluationReport) -> str:
    """The whole report as one HTML document; plotly.js is inlined once, so it needs no network."""
    ev = report.evaluation
    figs: list[tuple[str, Any]] = [("models", figures.models_figure(report.models)),
                                   ("confusion", figures.confusion_figure(ev)),
                                   ("per-class", figures.per_class_figure(ev)),
                                   ("reliability", figures.reliability_figure(ev))]
    if report.robustness:
        figs.append(("robustness", figures.robustness_figure(report.robustness)))
    if report.costs:
        figs.append(("costs", figures.costs_figure(report.costs, report.options.costs.currency
                                                   if report.options.costs else "")))
    rendered = {name: figures.for_export(fig).to_html(full_html=False, include_plotlyjs=(i == 0),
                                                      div_id=f"fig-{name}")
                for i, (name, fig) in enumerate(figs)}

    parts = [f"<h1>Evaluation of run {html.escape(report.run_id)}</h1>",
             f"<p>{html.escape(report.model)} on the {html.escape(report.split)} split: {ev.n_images} images, "
             f"{len(report.classes)} classes; {html.escape(report.device)}; built in {report.seconds:.1f} s.</p>",
             f'<p class="verdict"><strong>{html.escape(report.verdict)}</strong></p>']
    if report.notes:
        parts.append("<ul>" + "".join(f"<li>{html.escape(n)}</li>" for n in report.notes) + "</ul>")
    if report.advice or report.adaptation:
        parts.append("<h2>What the training curves say</h2><ul>" + "".join(
            f"<li><strong>{html.escape(a['code'].replace('_', ' '))}</strong>: {html.escape(a['message'])}. "
            f"{html.escape(a['action'])}</li>" for a in report.advice)
            + (f"<li>{html.escape(report.adaptation)}</li>" if report.adaptation else "") + "</ul>")
    parts.append("<h2>Fine-tuned model and baselines</h2>")
    rows = model_rows(report)
    parts.append(_table(list(rows[0]), [list(r.values()) for r in rows], "models"))
    if report.comparison:
        parts.append(f"<p>{html.escape(report.comparison.describe())}</p>")
    parts.append(rendered["models"])
    parts.append("<h2>Metrics of the fine-tuned model</h2>")
    parts.append(_table(["metric", "value", "95% interval"],
                        [[k, v, format_interval(ev.intervals.get(k))] for k, v in ev.metrics.items()], "metrics"))
    parts.append("<h2>Confusion matrix</h2><p>Rows: true class; columns: predicted class.</p>")
    parts.append(_table(["true \\ predicted", *report.classes],
                        [[c, *row] for c, row in zip(report.classes, ev.confusion)], "confusion-matrix"))
    parts.append(rendered["confusion"])
    parts.append("<h2>Per class</h2>")
    parts.append(_table(["class", "precision", "recall", "F1", "support"],
                        [[r["class"], r["precision"], r["recall"], r["f1"], r["support"]] for r in ev.per_class],
                        "per-class"))
    parts.append(rendered["per-class"])
    parts.append("<h2>Calibration</h2>")
    parts.append(rendered["reliability"])
    parts.append("<h2>Error analysis</h2><h3>Most confused class pairs</h3>")
    parts.append(_table(["true", "predicted as", "images", "share of the true class"],
                        [[p["true"], p["predicted"], p["count"], p["share"]] for p in ev.confused_pairs],
                        "confused-pairs"))
    parts.append(f"<h3>Misclassified images ({len(ev.misclassified)}), most confident first</h3>")
    rows = []
    for i, m in enumerate(ev.misclassified):
        thumb = _thumbnail(m["path"]) if i < N_THUMBNAILS else ""
        img = f'<img src="{thumb}" alt="" width="64">' if thumb else ""
        rows.append(f"<tr><td>{img}</td><td>{html.escape(m['path'])}</td><td>{html.escape(m['true'])}</td>"
                    f"<td>{html.escape(m['predicted'])}</td><td>{m['confidence']:.3f}</td></tr>")
    parts.append('<table id="misclassified"><thead><tr><th></th><th>path</th><th>true</th><th>predicted</th>'
                 f"<th>confidence</th></tr></thead><tbody>{''.join(rows)}</tbody></table>")
    parts.append("<h3>Highest-loss images</h3>")
    parts.append(_table(["path", "true", "predicted", "p(true)", "loss"],
                        [[h["path"], h["true"], h["predicted"], h["p_true"], h["loss"]] for h in ev.highest_loss],
                        "highest-loss"))
    if report.deployment:
        parts.append("<h2>Deployment, measured on this device</h2>")
        parts.append(_table(["figure", "value"], deployment_rows(report.deployment), "deployment"))
    if report.robustness:
        r = report.robustness
        parts.append("<h2>Robustness to corruptions</h2>")
        parts.append(f"<p>Clean accuracy {r.clean_accuracy:.4f}; mean under corruption "
                     f"{r.mean_corrupted_accuracy:.4f}; largest drop: {html.escape(r.worst)}.</p>")
        parts.append(_table(["corruption", "severity", "parameter", "accuracy", "drop"],
                            [[s.corruption, s.severity, s.parameter, s.accuracy, s.drop] for s in r.scores],
                            "robustness"))
        parts.append(rendered["robustness"])
    if report.drift:
        d = report.drift
        parts.append("<h2>Second data source (drift)</h2>")
        parts.append(_table(["source", "images", "left out (seen in training)", "accuracy", "macro F1",
                             "test-split accuracy"],
                            [[d.source, d.n_images, d.excluded_overlap, d.accuracy, d.macro_f1,
                              d.reference_accuracy]], "drift"))
    if report.costs:
        cm = report.options.costs
        parts.append("<h2>Cost of errors</h2>")
        parts.append(f"<p>{cm.monthly_volume:,.0f} images per month; {html.escape(json.dumps(cm.to_dict()))}</p>")
        parts.append(_table(["model", "error rate", "errors per month (expected)", "cost per image",
                             "cost per month", "95% interval"],
                            [[c.model, c.error_rate, f"{c.errors_per_month:,.0f}", c.cost_per_image,
                              f"{c.cost_per_month:,.2f}", format_interval(c.cost_per_month_interval, 2)]
                             for c in report.costs], "costs"))
        parts.append(rendered["costs"])
    style = ("body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}"
             "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:3px 8px;"
             "text-align:right}th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}"
             ".verdict{font-size:1.15em}")
    return ("<!DOCTYPE html><html><head><meta charset=\"utf-8\">"
            f"<title>Evaluation of run {html.escape(report.run_id)}</title><style>{style}</style></head>"
            f"<body>{''.join(parts)}</body></html>")
