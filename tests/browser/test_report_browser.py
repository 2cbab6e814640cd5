"""The exported HTML report as a reader sees it: opened from disk in headless Debian Chromium, every figure
screenshotted and its pixels inspected. Written from the same process as the dashboard, where importing
Streamlit makes its own plotly template the default: that template's colours are placeholders only the
dashboard's frontend replaces (#000001, #000002, ...), so a report that inherits it draws every bar black."""
from __future__ import annotations

import colorsys
import io
import os
from collections import Counter

import pytest
from PIL import Image

from core.config import AugmentSpec, TrainConfig
from core.evaluate.costs import CostModel
from core.evaluate.report import EvaluationOptions, build_report
from core.evaluate.report_files import write_report
from core.runs.launch import start_run
from test_browser import CHROMIUM, launch
pytestmark = pytest.mark.skipif(not os.path.exists(CHROMIUM),
                                reason=f"needs Debian's chromium at {CHROMIUM} (apt-get install chromium)")
FIGURES = ("models", "confusion", "per-class", "reliability", "robustness", "costs")


@pytest.fixture(scope="module")
def report_file(small_digits_dir, tmp_path_factory):
    """A report of a one-epoch run at 32 px: baselines, two corruptions at one severity, costs; no timing."""
    import plotly.io as pio
    import streamlit  # noqa: F401  (registers the "streamlit" plotly template, as the dashboard process has it)

    runs = str(tmp_path_factory.mktemp("runs"))
    config = TrainConfig(image_size=32, epochs=1, batch_size=32, augment=AugmentSpec(hflip=False),
                         early_stopping_patience=0, group_by="names", crossval_folds=0)
    run_id = start_run(config, small_digits_dir, runs)["run_id"]
    report = build_report(runs, run_id, EvaluationOptions(
        device="cpu", corruptions=("brightness", "jpeg"), severities=(1,), latency=False, n_boot=100,
        costs=CostModel(monthly_volume=10_000, error_cost=1.5)))
    before = pio.templates.default
    pio.templates.default = "streamlit"
    try:
        report = write_report(report, str(tmp_path_factory.mktemp("report")))
    finally:
        pio.templates.default = before
    return report.files["html"]


def hues(image: Image.Image, least: int = 300) -> set[int]:
    """The 30-degree hue bins that colour at least `least` pixels of the image (greys, white and black left out):
    a bar covers thousands, a 2 px line across the plot a thousand or two, anti-aliased text a few."""
    counts: dict[int, int] = {}
    for (r, g, b), n in Counter(image.convert("RGB").getdata()).items():
        h, s, v = colorsys.rgb_to_hsv(r / 255, g / 255, b / 255)
        if s > 0.35 and v > 0.35:
            counts[int(h * 12) % 12] = counts.get(int(h * 12) % 12, 0) + n
    return {h for h, n in counts.items() if n >= least}


def dark_share(image: Image.Image) -> float:
    pixels = list(image.convert("RGB").getdata())
    return sum(1 for p in pixels if max(p) < 40) / len(pixels)


def overlap(a: dict, b: dict) -> bool:
    return not (a["x"] + a["width"] <= b["x"] or b["x"] + b["width"] <= a["x"]
                or a["y"] + a["height"] <= b["y"] or b["y"] + b["height"] <= a["y"])


def test_every_figure_of_the_report_is_drawn_in_colour_with_its_title_clear(report_file, tmp_path):
    from playwright.sync_api import sync_playwright

    shots = {}
    with sync_playwright() as p:
        browser = launch(p)
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 900})
            page.goto(f"file://{report_file}")
            page.wait_for_function(f"() => document.querySelectorAll('.js-plotly-plot .main-svg').length >= "
                                   f"{len(FIGURES)}", timeout=60_000)
            for name in FIGURES:
                figure = page.locator(f"#fig-{name}")
                figure.scroll_into_view_if_needed()
                shots[name] = Image.open(io.BytesIO(figure.screenshot()))
                shots[name].save(tmp_path / f"{name}.png")  # kept by pytest's tmp_path for a look on failure
                # the toolbar shows on hover, at the top right: it must not sit on the title
                box = figure.bounding_box()
                page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
                modebar = figure.locator(".modebar").first
                modebar.wait_for(state="visible", timeout=5_000)
                title = figure.locator(".gtitle").first
                assert not overlap(modebar.bounding_box(), title.bounding_box()), f"{name}: the toolbar covers the title"
                page.mouse.move(0, 0)
        finally:
            browser.close()
    for name, image in shots.items():
        assert dark_share(image) < 0.05, f"{name} is mostly black ({dark_share(image):.0%} of its pixels)"
    assert len(hues(shots["per-class"])) >= 3, "precision, recall and F1 in three colours"
    assert len(hues(shots["models"])) >= 2, "accuracy and macro F1 in two colours"
    assert len(hues(shots["robustness"])) >= 2, "one colour per corruption"
    assert len(hues(shots["costs"])) >= 1 and len(hues(shots["reliability"])) >= 1
    assert hues(shots["confusion"]), "the confusion matrix is shaded in colour"
