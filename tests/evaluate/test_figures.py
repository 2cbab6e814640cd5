"""The evaluation figures: what they draw is what the results hold, and a click on the confusion matrix can be
read back as the cell that was clicked."""
import numpy as np
import pytest

from core.evaluate import figures
from core.evaluate.evaluation import Predictions, summarize


@pytest.fixture(scope="module")
def evaluation():
    rng = np.random.default_rng(0)
    y_true = rng.integers(0, 3, 90)
    logits = rng.normal(size=(90, 3))
    logits[np.arange(90), y_true] += 1.2
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    return summarize(Predictions(("cat", "dog", "cow"), tuple(f"{i}.png" for i in range(90)), y_true, probs))


def test_the_confusion_matrix_draws_each_cell_with_its_count_and_a_clickable_marker(evaluation):
    fig = figures.confusion_figure(evaluation)
    heatmap, cells = fig.data
    assert heatmap.type == "heatmap" and heatmap.hoverinfo == "skip"
    assert np.allclose(np.array(heatmap.z), np.array(evaluation.confusion_normalized))
    assert len(cells.x) == 9
    for x, y, text, data in zip(cells.x, cells.y, cells.text, cells.customdata):
        t, p = data[0], data[1]
        # the marker sits on its cell (row = true class, column = predicted) and says the cell's count
        assert (y, x) == (evaluation.classes[t], evaluation.classes[p])
        assert text == str(evaluation.confusion[t][p]) and data[2] == evaluation.confusion[t][p]
    counts = figures.confusion_figure(evaluation, normalized=False).data[0]
    assert np.array_equal(np.array(counts.z), np.array(evaluation.confusion))
    assert not fig.layout.shapes
    (outline,) = figures.confusion_figure(evaluation, selected=(2, 0)).layout.shapes
    assert (outline.x0, outline.x1, outline.y0, outline.y1) == (-0.5, 0.5, 1.5, 2.5)


def test_a_selected_point_reads_back_as_its_cell(evaluation):
    fig = figures.confusion_figure(evaluation)
    # what st.plotly_chart(on_select=...) returned in Chromium for a click on the cell (true dog, predicted cow)
    i = next(k for k, d in enumerate(fig.data[1].customdata) if tuple(d[:2]) == (1, 2))
    point = {"curve_number": 1, "point_number": i, "point_index": i, "x": "cow", "y": "dog",
             "customdata": list(fig.data[1].customdata[i]), "text": fig.data[1].text[i]}
    assert figures.confusion_cell(point) == (1, 2)
    assert figures.confusion_cell({"x": "cow", "y": "dog"}) is None  # a point of another chart
    assert figures.confusion_cell({"customdata": ["a", "b"]}) is None


def test_reliability_and_per_class_figures_hold_the_evaluation(evaluation):
    bins = [b for b in evaluation.calibration.bins if b["count"]]
    bars = figures.reliability_figure(evaluation).data[1]
    assert list(bars.y) == pytest.approx([b["accuracy"] for b in bins])
    per_class = figures.per_class_figure(evaluation)
    assert [t.name for t in per_class.data] == ["precision", "recall", "f1"]
    assert list(per_class.data[1].y) == pytest.approx([r["recall"] for r in evaluation.per_class])


def test_costs_figure_shows_each_models_cost_with_its_interval():
    from core.evaluate.costs import CostModel, error_costs

    y = np.array([0, 0, 1, 1, 1, 0, 1, 0])
    costs = error_costs(y, {"a": y, "b": 1 - y}, ("ok", "defect"), CostModel(monthly_volume=100, error_cost=3))
    bar = figures.costs_figure(costs, "EUR").data[0]
    assert list(bar.x) == ["a", "b"] and list(bar.y) == pytest.approx([0.0, 300.0])
    assert "EUR" in figures.costs_figure(costs, "EUR").layout.title.text


def test_an_exported_figure_carries_real_colours_even_where_streamlit_set_its_template(evaluation, monkeypatch):
    import plotly.io as pio
    import streamlit  # noqa: F401  (registers its template, as in the dashboard's process)

    monkeypatch.setattr(pio.templates, "default", "streamlit")
    placeholders = figures.per_class_figure(evaluation).layout.template.layout.colorway
    assert placeholders[0] == "#000001", "the cause: Streamlit's colours are placeholders for its frontend"
    exported = figures.for_export(figures.per_class_figure(evaluation))
    colorway = exported.layout.template.layout.colorway
    assert len(set(colorway[:3])) == 3 and not any(c.startswith("#0000") for c in colorway)
    assert exported.layout.xaxis.type == "category", "classes named 0-9 are not a numeric axis"


def test_titles_sit_above_the_plot_clear_of_the_hover_toolbar(evaluation):
    import pandas as pd

    from core.evaluate.costs import CostModel, error_costs
    from pages import charts

    y = np.array([0, 1, 1, 0])
    costs = error_costs(y, {"a": y}, ("ok", "defect"), CostModel(monthly_volume=100, error_cost=3))
    curves = pd.DataFrame({"x": [0, 1], "value": [0.5, 0.6], "series": ["val accuracy"] * 2})
    for fig in (figures.confusion_figure(evaluation), figures.reliability_figure(evaluation),
                figures.per_class_figure(evaluation), figures.costs_figure(costs),
                charts.curves_figure(curves, "Accuracy and F1", "score"),
                charts.class_counts_figure({"train": {"a": 3, "b": 4}})):
        title = fig.layout.title
        assert (title.yref, title.y, title.yanchor, title.xanchor) == ("paper", 1, "bottom", "left"), title.text
        assert fig.layout.margin.t >= figures.TITLE_TOP, title.text


def test_one_epoch_is_drawn_on_whole_epochs_not_around_zero():
    import pandas as pd

    from pages import charts

    one = charts.curves_figure(pd.DataFrame({"x": [0], "value": [0.8], "series": ["val accuracy"]}), "Accuracy", "")
    lo, hi = one.layout.xaxis.range
    assert -0.1 < lo <= 0 and 1 <= hi < 1.1 and one.layout.xaxis.dtick == 1
    assert "markers" in one.data[0].mode, "a single point shows as a marker"
    batches = pd.DataFrame({"x": [0.1, 0.5, 0.9], "value": [2.0, 1.5, 1.2], "series": ["train loss (batch)"] * 3})
    assert charts.curves_figure(batches, "Loss", "loss").layout.xaxis.range is None, "fractions: plotly's own ticks"
    overlay = charts.overlay_figure(pd.DataFrame({"run": ["r1"], "epoch": [1], "metric": ["val_loss"],
                                                  "value": [0.3]}), "val_loss", "Validation loss")
    assert overlay.layout.xaxis.range[0] <= 1 <= overlay.layout.xaxis.range[1] and overlay.layout.xaxis.dtick == 1


def test_log_axes_are_labelled_once_per_power_of_ten_when_they_span_several():
    import pandas as pd

    from pages import charts

    groups = [{"group": i, "modules": f"m{i}", "params": p, "frozen": i < 2} for i, p in enumerate((800, 6e4, 2e6))]
    fig = charts.groups_figure(groups + [{"group": 3, "modules": "adapter + head", "params": 1290, "frozen": False}])
    assert fig.layout.yaxis.type == "log" and fig.layout.yaxis.dtick == 1
    lrs = pd.DataFrame({"x": [0.5, 1.0], "value": [1e-3, 4e-4], "series": ["head"] * 2})
    narrow = charts.curves_figure(lrs, "Learning rate", "lr", log_y=True)
    assert narrow.layout.yaxis.type == "log"
    # every label whole: "5e-4" and "2e-3", never a bare "2" beside "1e-3"; the values inside the labelled span
    shown = dict(zip(narrow.layout.yaxis.tickvals, narrow.layout.yaxis.ticktext))
    assert shown[1e-3] == "1e-3" and shown[5e-4] == "5e-4" and shown[2e-4] == "2e-4"
    assert all("e" in t or float(t) >= 0.01 for t in shown.values())
    assert min(shown) <= 4e-4 and max(shown) >= 1e-3
