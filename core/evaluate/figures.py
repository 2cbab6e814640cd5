"""Plotly figures of evaluation results: the dashboard shows them, the HTML report inlines them.

Each function takes one of our result dataclasses and returns a `plotly.graph_objects.Figure`; nothing
here computes a metric. Plotly is imported when a figure is built, never at import time. User strings (class and
model names, a currency) go through `plot_text`: plotly draws a subset of HTML in every label, title and hover.
"""
from __future__ import annotations

import html
import math
from typing import Any, Sequence

_HEIGHT = 420
EXPORT_TEMPLATE = "plotly_white"  # a template plotly.js draws by itself (see `for_export`)
TITLE_TOP = 72  # px above the plot area: the title sits at its bottom, the hover toolbar at its top


def titled(text: str, **margin: int) -> dict[str, Any]:
    """Layout of a title left-aligned just above the plot area, and a top margin that keeps it clear of the
    toolbar plotly shows at the top right on hover (a title centred in the margin runs under it)."""
    return {"title": {"text": text, "x": 0, "xref": "paper", "xanchor": "left", "y": 1, "yref": "paper",
                      "yanchor": "bottom", "pad": {"b": 14}},
            "margin": {**margin, "t": max(margin.get("t", 0), TITLE_TOP)}}


def for_export(fig):
    """`fig` drawn with a plotly template of real colours, for HTML that plotly.js renders on its own.

    Importing Streamlit makes its own template the default (`pio.templates.default = "streamlit"`): its colours
    are placeholders (#000001, #000002, ...) that only the dashboard's frontend swaps for the theme's, so a
    figure exported from the dashboard's process would draw every bar and line nearly black."""
    fig.update_layout(template=EXPORT_TEMPLATE)
    return fig


def plot_text(value: Any) -> str:
    """`value` as literal text in a plotly label, title, legend or hover: plotly renders `<a href>`, `<b>`, `<br>`
    and `<span style>` in text (a class named `<a href="http://evil.example">x</a>` would be a link) and decodes
    `&lt;`, `&gt;` and `&amp;` back into the characters, so escaping those three shows the name as written."""
    return html.escape(str(value), quote=False)


def _go():
    import plotly.graph_objects as go  # lazy: plotly is a heavy import, paid only when a figure is drawn

    return go


def confusion_figure(evaluation, normalized: bool = True, selected: tuple[int, int] | None = None):
    """The confusion matrix (rows: true class, columns: predicted), coloured by share of the true class
    (or by count), each cell labelled with its count.

    Plotly reports no clicks on heatmap cells (plotly.js has no selection for heatmaps; Streamlit's
    `on_select` returns an empty selection for them), so the colours are a heatmap and each cell also
    carries a nearly transparent square marker on top: clicking a cell selects its marker, whose
    customdata is (true index, predicted index); `confusion_cell` reads it back. `selected` outlines a cell.
    """
    go = _go()
    classes = [plot_text(c) for c in evaluation.classes]
    n = len(classes)
    counts = [list(r) for r in evaluation.confusion]
    shares = [list(r) for r in evaluation.confusion_normalized]
    z = shares if normalized else counts
    top = max((v for row in z for v in row), default=0) or 1
    height = max(_HEIGHT, 30 * n + 150)
    margin = {"l": 70, "r": 20, "t": TITLE_TOP, "b": 60}
    cell_px = (height - margin["t"] - margin["b"]) / max(n, 1)
    cells = [(t, p) for t in range(n) for p in range(n)]
    fig = go.Figure(go.Heatmap(z=z, x=classes, y=classes, colorscale="Blues", zmin=0, zmax=1 if normalized else top,
                               showscale=False, hoverinfo="skip"))
    fig.add_trace(go.Scatter(
        x=[classes[p] for _, p in cells], y=[classes[t] for t, _ in cells], mode="markers+text",
        text=[str(counts[t][p]) for t, p in cells],
        textfont={"color": ["white" if z[t][p] > 0.55 * top else "#222" for t, p in cells]},
        marker={"symbol": "square", "size": max(8.0, 0.95 * cell_px), "color": "#000", "opacity": 0.02},
        selected={"marker": {"opacity": 0.25}}, unselected={"marker": {"opacity": 0.02}},
        customdata=[[t, p, counts[t][p], shares[t][p]] for t, p in cells], showlegend=False, name="",
        hovertemplate="true %{y}, predicted %{x}: %{customdata[2]} images (%{customdata[3]:.0%} of the true "
                      "class)<br>click to see them<extra></extra>"))
    if selected is not None and all(0 <= i < n for i in selected):
        t, p = selected
        fig.add_shape(type="rect", x0=p - 0.5, x1=p + 0.5, y0=t - 0.5, y1=t + 0.5,
                      line={"color": "#e15759", "width": 3})
    fig.update_layout(**titled("Confusion matrix (colour: share of the true class)" if normalized
                               else "Confusion matrix", **margin),
                      xaxis_title="predicted", yaxis_title="true", height=height,
                      hovermode="closest", clickmode="event+select", dragmode=False)
    fig.update_xaxes(type="category", categoryorder="array", categoryarray=classes, side="bottom", showgrid=False)
    fig.update_yaxes(type="category", categoryorder="array", categoryarray=classes, autorange="reversed",
                     showgrid=False)
    return fig


def confusion_cell(point: dict[str, Any]) -> tuple[int, int] | None:
    """(true index, predicted index) of a point a user selected in `confusion_figure`; None for any other point."""
    data = point.get("customdata") if isinstance(point, dict) else None
    if isinstance(data, (list, tuple)) and len(data) >= 2:
        try:
            return int(data[0]), int(data[1])
        except (TypeError, ValueError):
            return None
    return None


def reliability_figure(evaluation):
    """Reliability diagram: accuracy against confidence per bin, and the diagonal of perfect calibration."""
    go = _go()
    bins = [b for b in (evaluation.calibration.bins if evaluation.calibration else ()) if b["count"]]
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=[0, 1], y=[0, 1], mode="lines", name="perfect calibration",
                             line={"dash": "dash", "color": "grey"}))
    fig.add_trace(go.Bar(x=[(b["lower"] + b["upper"]) / 2 for b in bins], y=[b["accuracy"] for b in bins],
                         width=[b["upper"] - b["lower"] for b in bins], name="accuracy", opacity=0.7,
                         customdata=[[b["count"], b["confidence"]] for b in bins],
                         hovertemplate="accuracy %{y:.3f}<br>mean confidence %{customdata[1]:.3f}"
                                       "<br>%{customdata[0]} images<extra></extra>"))
    ece = evaluation.metrics.get("ece", float("nan"))
    fig.update_layout(**titled(f"Reliability diagram (ECE {ece:.3f})"), xaxis_title="confidence",
                      yaxis_title="accuracy", xaxis_range=[0, 1], yaxis_range=[0, 1], height=_HEIGHT)
    return fig


def per_class_figure(evaluation):
    go = _go()
    classes = [plot_text(row["class"]) for row in evaluation.per_class]
    fig = go.Figure([go.Bar(name=m, x=classes, y=[row[m] for row in evaluation.per_class])
                     for m in ("precision", "recall", "f1")])
    fig.update_layout(**titled("Per-class precision, recall and F1"), barmode="group", yaxis_range=[0, 1],
                      height=_HEIGHT)
    fig.update_xaxes(type="category")  # classes named 0-9 are names, not numbers on a scale
    return fig


def _error_bars(values: Sequence[float], intervals: Sequence[Any]) -> dict[str, Any]:
    plus = [max(0.0, iv[1] - v) if iv else 0.0 for v, iv in zip(values, intervals)]
    minus = [max(0.0, v - iv[0]) if iv else 0.0 for v, iv in zip(values, intervals)]
    return {"type": "data", "symmetric": False, "array": plus, "arrayminus": minus}


def models_figure(models: Sequence[Any]):
    """The fine-tuned model and its baselines: accuracy and macro-F1 with bootstrap 95% intervals."""
    go = _go()
    names = [plot_text(m.name) for m in models]
    fig = go.Figure()
    for metric in ("accuracy", "macro_f1"):
        values = [m.metrics.get(metric, float("nan")) for m in models]
        fig.add_trace(go.Bar(name=metric.replace("_", " "), x=names, y=values,
                             error_y=_error_bars(values, [m.intervals.get(metric) for m in models])))
    fig.update_layout(**titled("Fine-tuned model and baselines on the same test images (95% bootstrap intervals)"),
                      barmode="group", yaxis_range=[0, 1.05], height=_HEIGHT)
    fig.update_xaxes(type="category")
    return fig


def robustness_figure(robustness):
    """Accuracy per corruption against severity, with the clean accuracy as a line."""
    go = _go()
    fig = go.Figure()
    names = list(dict.fromkeys(s.corruption for s in robustness.scores))
    for name in names:
        rows = [s for s in robustness.scores if s.corruption == name]
        fig.add_trace(go.Scatter(x=[0] + [s.severity for s in rows],
                                 y=[robustness.clean_accuracy] + [s.accuracy for s in rows],
                                 mode="lines+markers", name=name.replace("_", " ")))
    fig.update_layout(**titled("Accuracy under corruption (severity 0: clean)"), xaxis_title="severity",
                      yaxis_title="accuracy", xaxis_dtick=1, yaxis_range=[0, 1.05], height=_HEIGHT)
    return fig


def costs_figure(costs: Sequence[Any], currency: str = ""):
    go = _go()
    values = [c.cost_per_month for c in costs]
    fig = go.Figure(go.Bar(x=[plot_text(c.model) for c in costs], y=values,
                           error_y=_error_bars(values, [c.cost_per_month_interval for c in costs])))
    unit = f" ({plot_text(currency)})" if currency else ""
    fig.update_layout(**titled(f"Cost of errors per month{unit}, 95% interval"),
                      yaxis_title="cost per month", height=_HEIGHT)
    fig.update_xaxes(type="category")
    return fig


def bakeoff_figure(result):
    """Validation accuracy against latency per image at batch 1; bubble area ~ parameters; recommended ringed."""
    go = _go()
    rows = list(result.candidates)
    largest = max((r.parameters for r in rows), default=1) or 1
    sizes = [12 + 48 * math.sqrt(r.parameters / largest) for r in rows]
    acc = [r.linear["accuracy"] for r in rows]
    fig = go.Figure(go.Scatter(
        x=[r.latency_ms_batch1 for r in rows], y=acc, mode="markers+text", text=[plot_text(r.name) for r in rows],
        textposition="top center", error_y=_error_bars(acc, [r.linear_intervals.get("accuracy") for r in rows]),
        marker={"size": sizes, "opacity": 0.6,
                "line": {"width": [4 if r.name == result.recommendation else 1 for r in rows], "color": "black"}},
        customdata=[[r.parameters / 1e6, r.latency_ms_batch, r.knn["accuracy"], r.peak_memory_mb] for r in rows],
        hovertemplate="%{text}<br>val accuracy %{y:.3f}<br>%{x:.1f} ms/image at batch 1, "
                      "%{customdata[1]:.1f} at batch " + str(result.latency_batch) +
                      "<br>%{customdata[0]:.1f} M parameters<br>k-NN accuracy %{customdata[2]:.3f}"
                      "<br>peak memory %{customdata[3]:.0f} MiB<extra></extra>"))
    fig.update_layout(**titled(f"Bake-off: validation accuracy (linear probe, 95% interval) vs latency; "
                               f"recommended: {plot_text(result.recommendation)}"),
                      xaxis_title=f"latency per image at batch 1, ms ({result.device}, {result.dtype})",
                      yaxis_title="validation accuracy", height=_HEIGHT)
    return fig
