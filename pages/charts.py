"""Plotly figures for the pages, built from the tidy tables core returns (no Streamlit here). Figures of an
evaluation (confusion matrix, reliability, baselines, robustness, costs) are core.evaluate.figures: the HTML report
draws them too. User strings (class names, run names) go through core.evaluate.figures.plot_text, as there."""
from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence

import pandas as pd
import plotly.graph_objects as go

from core.evaluate import plot_text, titled

FROZEN, TRAINABLE, HEAD = "#9aa5b1", "#2f7ed8", "#f28e2b"
PALETTE = ("#2f7ed8", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#edc948", "#b07aa1", "#ff9da7", "#9c755f",
           "#bab0ac")
_MARGIN = dict(l=10, r=10, b=10)
# the legend below the x-axis title, not over it
_LAYOUT = dict(legend=dict(orientation="h", y=-0.3, yanchor="top"), height=340, template="plotly_white")


def _integer_x(fig: go.Figure, xs: Iterable[float]) -> None:
    """Whole-number x values (epochs, steps) get whole-number ticks, and one value alone a range that starts at
    it: plotly would centre a single point on -1..1, or tick an epoch axis at 0.5."""
    xs = sorted({float(x) for x in xs if x is not None and math.isfinite(float(x))})
    if not xs or not all(x.is_integer() for x in xs):
        return
    lo, hi = xs[0], max(xs[-1], xs[0] + 1)
    fig.update_xaxes(range=[lo - 0.05 * (hi - lo), hi + 0.05 * (hi - lo)], tick0=0,
                     dtick=max(1, math.ceil((hi - lo) / 8)), tickformat="d")


def _log_y(fig: go.Figure, values: Iterable[float]) -> None:
    """A log y axis labelled once per power of ten when the values span two or more (plotly's default labels
    the 2s and 5s between as well, which crowd a small chart), and at 1, 2 and 5 when they span less, each
    label whole ("2e-3", not plotly's bare "2" beside "1e-3")."""
    positive = [float(v) for v in values if v is not None and math.isfinite(float(v)) and v > 0]
    decades = math.log10(max(positive) / min(positive)) if positive else 0.0
    if decades >= 2 or not positive:
        fig.update_yaxes(type="log", dtick=1, exponentformat="power")
        return
    lo, hi = min(positive), max(positive)
    ticks = [m * 10.0 ** k for k in range(math.floor(math.log10(lo)) - 1, math.ceil(math.log10(hi)) + 1)
             for m in (1, 2, 5) if lo / 2.5 <= m * 10.0 ** k <= hi * 2.5]
    fig.update_yaxes(type="log", tickvals=ticks, ticktext=[_tick(v) for v in ticks])


def _tick(value: float) -> str:
    """2e-3, 5e-4, 0.5, 20: short and whole."""
    if 0.01 <= value < 10_000:
        return f"{value:g}"
    mantissa, exponent = f"{value:.0e}".split("e")
    return f"{mantissa}e{int(exponent)}"


def curves_figure(frame: pd.DataFrame, title: str, y_title: str, x_title: str = "epoch", log_y: bool = False,
                  baseline: Mapping[str, float] | None = None, y_range: tuple[float, float] | None = None
                  ) -> go.Figure:
    """One line per series of a (x, value, series) table; per-batch series drawn thin and faint."""
    fig = go.Figure()
    for i, (series, part) in enumerate(frame.groupby("series", sort=False)):
        faint = "batch" in series
        fig.add_trace(go.Scatter(
            x=part["x"], y=part["value"], name=series, mode="lines" if faint or len(part) > 40 else "lines+markers",
            line=dict(width=1 if faint else 2.5, color=PALETTE[i % len(PALETTE)]), opacity=0.45 if faint else 1))
    for name, value in (baseline or {}).items():
        fig.add_hline(y=value, line_dash="dash", line_color="#555", annotation_text=name,
                      annotation_position="bottom right")
    fig.update_layout(**titled(title, **_MARGIN), xaxis_title=x_title, yaxis_title=y_title, **_LAYOUT)
    _integer_x(fig, frame["x"])
    if log_y:
        _log_y(fig, frame["value"])
    if y_range:
        fig.update_yaxes(range=list(y_range))
    return fig


def gradient_figure(frame: pd.DataFrame, x_title: str = "epoch") -> go.Figure:
    """Layer groups (input side at the bottom, the head on top) x time, coloured by the update-to-weight
    ratio per step on a log scale; frozen groups (ratio 0) stay blank."""
    import numpy as np

    wide = frame.pivot_table(index="group", columns="x", values="update_ratio", sort=False)
    z = np.log10(wide.where(wide > 0).to_numpy(dtype=float))
    fig = go.Figure(go.Heatmap(
        z=z, x=[f"{x:.2f}" for x in wide.columns], y=list(wide.index), colorscale="Viridis", zmin=-7, zmax=-1,
        colorbar=dict(title="log10 update / weight", len=0.9),
        hovertemplate="%{y} at %{x}: 10^%{z:.1f} of its weights per step<extra></extra>"))
    fig.update_layout(**titled("Where the network adapts: update / weight ratio per layer group", **_MARGIN),
                      xaxis_title=x_title, yaxis_title="layer group (input at the bottom)",
                      **{**_LAYOUT, "height": 360})
    fig.update_xaxes(type="category", nticks=12)
    return fig


def groups_figure(groups: Sequence[Mapping]) -> go.Figure:
    """The network's layer groups, input side left: frozen grey, trainable blue, the new head orange."""
    labels = [f"{g['group']}" if g["modules"] != "adapter + head" else "head" for g in groups]
    colors = [HEAD if g["modules"] == "adapter + head" else FROZEN if g["frozen"] else TRAINABLE for g in groups]
    state = ["new head (trainable)" if g["modules"] == "adapter + head" else "frozen" if g["frozen"] else "trainable"
             for g in groups]
    fig = go.Figure(go.Bar(
        x=labels, y=[g["params"] for g in groups], marker_color=colors,
        customdata=[[g["modules"], s] for g, s in zip(groups, state)],
        hovertemplate="group %{x}: %{customdata[0]}<br>%{y:,} parameters, %{customdata[1]}<extra></extra>"))
    frozen = sum(g["params"] for g in groups if g["frozen"])
    total = sum(g["params"] for g in groups) or 1
    fig.update_layout(**titled(f"Layer groups, input → output: {frozen / total:.0%} of the parameters frozen (grey)",
                               **_MARGIN),
                      xaxis_title="layer group", yaxis_title="parameters", **{**_LAYOUT, "height": 300})
    _log_y(fig, [g["params"] for g in groups])
    return fig


def class_counts_figure(split_counts: Mapping[str, Mapping[str, int]]) -> go.Figure:
    """Images per class, stacked by split."""
    fig = go.Figure()
    colors = {"train": "#2f7ed8", "val": "#f28e2b", "test": "#59a14f", "unsplit": "#9aa5b1"}
    for split, per_class in split_counts.items():
        fig.add_trace(go.Bar(x=[plot_text(c) for c in per_class], y=list(per_class.values()), name=split,
                             marker_color=colors.get(split)))
    fig.update_layout(**titled("Images per class", **_MARGIN), barmode="stack", xaxis_title="class",
                      yaxis_title="images", **_LAYOUT)
    fig.update_xaxes(type="category")
    return fig


def overlay_figure(frame: pd.DataFrame, metric: str, title: str) -> go.Figure:
    """One line per run of a (run, epoch, metric, value) table, for one metric."""
    fig = go.Figure()
    part = frame[frame["metric"] == metric]
    for i, (run, rows) in enumerate(part.groupby("run", sort=False)):
        fig.add_trace(go.Scatter(x=rows["epoch"], y=rows["value"], name=plot_text(run), mode="lines+markers",
                                 line=dict(color=PALETTE[i % len(PALETTE)])))
    fig.update_layout(**titled(title, **_MARGIN), xaxis_title="epoch", yaxis_title=metric, **_LAYOUT)
    _integer_x(fig, part["epoch"])
    return fig


def top_k_figure(top_k: Sequence[tuple[str, float]]) -> go.Figure:
    """A prediction's top classes as horizontal bars, the most likely on top."""
    names = [plot_text(c) for c, _ in top_k][::-1]
    probs = [float(p) for _, p in top_k][::-1]
    fig = go.Figure(go.Bar(x=probs, y=names, orientation="h", marker_color=[PALETTE[0]] * (len(probs) - 1) + [HEAD],
                           text=[f"{p:.1%}" for p in probs], textposition="outside", cliponaxis=False,
                           hovertemplate="%{y}: %{x:.2%}<extra></extra>"))
    fig.update_layout(template="plotly_white", height=40 + 30 * len(probs), margin=dict(l=10, r=40, t=10, b=10),
                      xaxis=dict(range=[0, 1.1], tickformat=".0%", showgrid=False, visible=False), showlegend=False)
    fig.update_yaxes(type="category")
    return fig


def window_figure(frame: pd.DataFrame, title: str, y_title: str, series: Mapping[str, str],
                  band: tuple[str, str] | None = None, reference: Mapping[str, float] | None = None,
                  percent: bool = False, x_range: tuple | None = None) -> go.Figure:
    """Monitoring figures over time windows: one line per `series` (label -> column of `frame`, x = "start"), a
    shaded interval between the `band` columns, and the validation figures as dashed lines (label -> value);
    `x_range`: the period checked (else one busy window alone gets an axis of milliseconds)."""
    fig = go.Figure()
    if band is not None and frame[band[0]].notna().any():
        fig.add_trace(go.Scatter(x=list(frame["start"]) + list(frame["start"])[::-1],
                                 y=list(frame[band[1]]) + list(frame[band[0]])[::-1], fill="toself",
                                 fillcolor="rgba(47,126,216,0.15)", line=dict(width=0), name="95% interval",
                                 hoverinfo="skip"))
    for i, (label, column) in enumerate(series.items()):
        fig.add_trace(go.Scatter(x=frame["start"], y=frame[column], name=label, mode="lines+markers",
                                 line=dict(width=2.5, color=PALETTE[i % len(PALETTE)]), connectgaps=False))
    for name, value in (reference or {}).items():
        if value is not None:
            fig.add_hline(y=value, line_dash="dash", line_color="#555", annotation_text=name,
                          annotation_position="bottom right")
    fig.update_layout(**titled(title, **_MARGIN), xaxis_title="window start (UTC)", yaxis_title=y_title, **_LAYOUT)
    if percent:
        fig.update_yaxes(tickformat=".0%")
    if x_range is not None:
        fig.update_xaxes(range=list(x_range))
    return fig
