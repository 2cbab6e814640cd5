"""User strings reach the browser as text, never as Markdown or HTML: class names (CSV labels), file names, the
dataset's name, skip reasons quoting a file and typed model names, on every page that shows them, in the plotly
figures and in the HTML report. A class named `[click](http://evil.example)` must not become a link, nor
`![img](http://evil.example/x.png)` an image the browser fetches from another host."""
from __future__ import annotations

import ast
import csv
import json
import os
import re
import shutil
from html.parser import HTMLParser
from types import SimpleNamespace

import numpy as np
import pytest

from conftest import ROOT, export_digits
from core.evaluate import figures
from core.evaluate.evaluation import Predictions, summarize
from core.runs.launch import start_run
from core.runs.store import RunStore
from core.workspace import ENV_VAR, Workspace
from pages import charts, ui
from test_pages import TINY, open_page, shown

# --- hostile names: what a file system allows in file names (no "/"), anything in CSV labels
CLASSES = ("[click](http://evil.example)", "![img](http://evil.example/x.png)", "<img src=x onerror=alert(1)>",
           "**bold** :red[x] :material/home: www.evil.example", '<a href="http://evil.example">a</a> $x$')
CSV_NAME = "<img src=y onerror=alert(2)> [data](http:evil.example).csv"  # the dataset's name
FILE_NAME = "[f](http:evil.example) <img src=z> **f**.png"  # a copy of an image, listed again under a 2nd class
MISSING = "![gone](http://evil.example/gone.png)"  # a CSV row naming no file: its skip reason quotes it
MODEL = "torchvision/[m](http://evil.example)"  # any torchvision/<name> is accepted as typed
# what none of them may become: a link, an image, a tag, bold, a directive, an icon
SYNTAX = ("](", "<img", "<a ", "**bold**", "**f**", ":red[", ":material/", "$x$")
_ESCAPED = re.compile(r"\\[!-/:-@\[-`{-~]")  # a backslash-escaped character is text


# --- what Streamlit renders as Markdown, element by element
MARKDOWN_BODIES = {"title", "header", "subheader", "caption", "markdown", "error", "warning", "info", "success",
                   "toast"}


def _fields(proto) -> set[str]:
    return set(proto.DESCRIPTOR.fields_by_name) if hasattr(proto, "DESCRIPTOR") else set()


def markdown_strings(node) -> list[str]:
    """Every string of the element tree that Streamlit renders as Markdown: bodies, labels (widgets, metrics,
    expanders, tabs, page links, buttons), tooltips, metric values, radio and button-group options, image captions
    and progress texts. Not st.text / st.code / dataframes / selectbox and multiselect options: drawn as text."""
    out: list[str] = []
    proto, kind = getattr(node, "proto", None), getattr(node, "type", None)
    names = _fields(proto)
    if kind in MARKDOWN_BODIES:
        out.append(proto.body)
    for name in ("label", "help", "text") if kind not in MARKDOWN_BODIES else ():
        if name in names and isinstance(getattr(proto, name), str):
            out.append(getattr(proto, name))
    if kind == "metric":
        out.append(proto.body)
    if kind == "radio":
        out += list(proto.options)
    if kind == "button_group":
        out += [o.content for o in proto.options]
    if kind == "image":
        out += [img.caption for img in proto.imgs]
    if kind in ("expander", "tab"):
        out.append(node.label)
    for child in getattr(node, "children", {}).values():
        out += markdown_strings(child)
    return out


def strings_in(value) -> list[str]:
    """Every string of a decoded JSON value (a plotly figure's data and layout)."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        value = list(value.values())
    return [s for v in value for s in strings_in(v)] if isinstance(value, (list, tuple)) else []


def plotly_strings(at) -> list[str]:
    return [s for chart in at.get("plotly_chart") for s in strings_in(json.loads(chart.proto.spec))]


def markup_in(markdown: str) -> list[str]:
    """The hostile fragments Markdown would still parse in `markdown` (escaped characters are text)."""
    syntax = _ESCAPED.sub("", markdown)
    return [s for s in SYNTAX if s in syntax]


def assert_shown_as_text(at, names) -> None:
    """Every Markdown string on the page is free of hostile syntax, and each of `names` is shown (as text)."""
    assert not at.exception, [e.value for e in at.exception]
    strings = markdown_strings(at._tree)
    unsafe = [(s, markup_in(s)) for s in strings if markup_in(s)]
    assert not unsafe, unsafe
    for name in names:
        assert any(name in shown(s) for s in strings), f"{name!r} is not on the page"


def assert_plotly_text(at, names) -> None:
    strings = plotly_strings(at)
    assert strings, "a chart"
    assert not [s for s in strings if "<img" in s or "<a " in s], "plotly would draw these tags"
    for name in names:
        assert any(figures.plot_text(name) in s for s in strings), f"{name!r} is not in a chart"


# --- a tiny dataset (a CSV of digits images) whose names are all hostile, and one tiny run on it
@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    folder = tmp_path_factory.mktemp("hostile")
    digits = export_digits(str(folder / "digits"), per_class=24)
    rows = []
    for label, digit in zip(CLASSES, range(len(CLASSES))):
        src = os.path.join(digits, str(digit))
        rows += [(os.path.relpath(os.path.join(src, f), folder), label) for f in sorted(os.listdir(src))]
    shutil.copy(os.path.join(folder, rows[0][0]), folder / FILE_NAME)
    rows += [(FILE_NAME, CLASSES[0]), (FILE_NAME, CLASSES[1]), (MISSING, CLASSES[2])]
    with open(folder / CSV_NAME, "w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows([("path", "label"), *rows])
    ws = Workspace(str(folder / "workspace"))
    run_id = start_run(TINY, str(folder / CSV_NAME), runs_dir=ws.runs_dir, workspace_dir=ws.root)["run_id"]
    return ws, RunStore(ws.runs_dir).get_run(run_id)


@pytest.fixture
def state(hostile, monkeypatch):
    ws, run = hostile
    monkeypatch.setenv(ENV_VAR, ws.root)
    return {ui.DATASET: run["dataset_id"], ui.RUN: run["id"]}


def test_the_dataset_page_shows_class_file_and_dataset_names_as_text(state):
    at = open_page("pages/dataset.py", state)
    # the header, the audit's findings (the missing file, the row listing the copy again under another class, the
    # duplicates), the examples per class, the duplicate pair's captions
    assert_shown_as_text(at, [*CLASSES, CSV_NAME, FILE_NAME, MISSING])
    assert_plotly_text(at, CLASSES)  # images per class


def test_the_start_page_and_the_sidebar_show_the_dataset_name_as_text(state):
    at = open_page(None, state)
    assert_shown_as_text(at, [CSV_NAME])
    assert any(CSV_NAME in shown(m.value) for m in at.sidebar.markdown)


def test_the_train_page_shows_the_dataset_name_as_text(state):
    assert_shown_as_text(open_page("pages/train.py", state), [CSV_NAME])


def test_the_evaluate_page_shows_class_names_as_text(state):
    at = open_page("pages/evaluate.py", state)
    assert_shown_as_text(at, [])
    # the cell's "images of <class>" line and the image captions ("<true> → <predicted>")
    strings = [shown(s) for s in markdown_strings(at._tree)]
    assert {c for c in CLASSES if any(c in s for s in strings)} == set(CLASSES)
    assert_plotly_text(at, CLASSES)  # confusion matrix, per-class scores


def test_the_models_page_shows_a_typed_model_name_as_text(state):
    at = open_page("pages/models.py", {**state, ui.EXTRA_MODELS: [MODEL], ui.CANDIDATES: [MODEL]})
    # its license warning, the floor's checkbox label, the "Train with" radio option
    assert_shown_as_text(at, [MODEL])
    assert any(MODEL in shown(o) for o in at.radio[0].proto.options)
    at.text_input(key="models.extra_name").input("[click](http://evil.example)").run()
    next(b for b in at.button if b.label == "Add it").click().run()
    assert at.error, "an unknown name is refused"
    assert_shown_as_text(at, ["[click](http://evil.example)"])  # the error quoting it


# --- the helpers themselves
@pytest.mark.parametrize("name", [*CLASSES, CSV_NAME, FILE_NAME, MISSING, ":smile: a@evil.example", "x\n# y",
                                  "&lt;b&gt; \\[x] ~~s~~ `c` | t |", "digits_small"])
def test_md_escape_leaves_no_markdown_and_reads_as_the_name(name):
    escaped = ui.md_escape(name)
    assert not re.search(r"[!-/:-@\[-`{-~]", _ESCAPED.sub("", escaped)), "every punctuation character escaped"
    assert shown(escaped) == " ".join(name.splitlines()), "a reader sees the name (a line break as a space)"
    # after the escapes are resolved, nothing Streamlit or GFM looks for in the text: :icon: and :emoji:
    # shortcodes, www. and e-mail autolinks
    text = re.sub(r"\\(.)", r"\1", escaped)
    assert not re.search(r":[\w+-]+:|www\.|\w@\w|https?:", text)


@pytest.fixture(scope="module")
def evaluation():
    rng = np.random.default_rng(0)
    y_true = rng.integers(0, len(CLASSES), 60)
    logits = rng.normal(size=(60, len(CLASSES)))
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    return summarize(Predictions(CLASSES, tuple(f"{i}.png" for i in range(60)), y_true, probs))


def test_plotly_figures_draw_user_strings_as_text(evaluation):
    from core.evaluate.costs import CostModel, error_costs

    y = np.array([0, 1, 1, 0])
    costs = error_costs(y, {"a": y}, ("ok", "defect"), CostModel(monthly_volume=10, error_cost=1))
    candidate = SimpleNamespace(name=MODEL, parameters=1e6, linear={"accuracy": 0.5}, linear_intervals={},
                                latency_ms_batch1=1.0, latency_ms_batch=0.5, knn={"accuracy": 0.4}, peak_memory_mb=10)
    bakeoff = SimpleNamespace(candidates=[candidate], recommendation=MODEL, latency_batch=8, device="cpu",
                              dtype="float32")
    figs = {"confusion": figures.confusion_figure(evaluation), "per class": figures.per_class_figure(evaluation),
            "class counts": charts.class_counts_figure({"train": {c: 3 for c in CLASSES}}),
            "costs": figures.costs_figure(costs, "<a href='http://evil.example'>EUR</a>"),
            "bake-off": figures.bakeoff_figure(bakeoff)}
    for what, fig in figs.items():
        strings = strings_in(json.loads(fig.to_json()))
        assert not [s for s in strings if "<img" in s or "<a " in s], what
    assert figures.plot_text(CLASSES[2]) == "&lt;img src=x onerror=alert(1)&gt;"  # plotly shows it as written
    confusion = figs["confusion"]
    assert list(confusion.layout.xaxis.categoryarray) == [figures.plot_text(c) for c in CLASSES]
    assert "&lt;a href='http://evil.example'&gt;EUR&lt;/a&gt;" in figs["costs"].layout.title.text
    # a click on a cell still reads back as the cell
    assert figures.confusion_cell({"customdata": list(confusion.data[1].customdata[7])}) == (1, 2)


class _Markup(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags, self.scripts, self._script = [], [], None

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        if tag == "script":
            self._script = []

    def handle_data(self, data):
        if self._script is not None:
            self._script.append(data)

    def handle_endtag(self, tag):
        if tag == "script" and self._script is not None:
            self.scripts.append("".join(self._script))
            self._script = None


def test_the_html_report_shows_class_and_file_names_as_text(hostile):
    from core.evaluate.report import EvaluationOptions, build_report
    from core.evaluate.report_html import render_html

    ws, run = hostile
    report = build_report(ws.runs_dir, run["id"], EvaluationOptions(device="cpu", baselines=False, corruptions=(),
                                                                    latency=False, n_boot=50))
    page = _Markup()
    page.feed(render_html(report))
    # the only images are the thumbnails the report inlines, and there is no link at all
    assert all(a.get("src", "").startswith("data:image/png;base64,") for t, a in page.tags if t == "img")
    assert not [a for t, a in page.tags if t == "a"]
    # the figures: Plotly.newPlot("fig-...", data, layout, config) calls, their JSON arguments decoded
    strings, decoder = [], json.JSONDecoder()
    for script in page.scripts:
        for call in re.finditer(r'Plotly\.newPlot\(\s*"[^"]*",\s*', script):
            at = call.end()
            for _ in range(2):  # data, layout
                value, at = decoder.raw_decode(script, at)
                strings += strings_in(value)
                at = re.compile(r"\s*,\s*").match(script, at).end()
    assert strings and not [s for s in strings if "<img" in s or "<a " in s]
    assert any(figures.plot_text(CLASSES[2]) in s for s in strings)


def test_the_app_loads_nothing_from_the_internet(monkeypatch):
    import streamlit as st

    seen = {}
    real = st.set_page_config
    monkeypatch.setattr(st, "set_page_config", lambda **kw: (seen.update(kw), real(**kw))[1])
    open_page()
    icon = seen["page_icon"]
    assert os.path.isfile(icon) and os.path.dirname(icon) == os.path.join(ROOT, "assets"), icon
    # and no string the dashboard's code uses (docstrings aside) names an address on the internet
    sources = [os.path.join(ROOT, "app.py")] + [os.path.join(ROOT, "pages", f) for f in os.listdir(
        os.path.join(ROOT, "pages")) if f.endswith(".py")]
    for path in sources:
        with open(path, encoding="utf-8") as f:
            tree = ast.parse(f.read())
        docstrings = {id(n.body[0].value) for n in ast.walk(tree) if isinstance(n, (
            ast.Module, ast.FunctionDef, ast.ClassDef)) and n.body and isinstance(n.body[0], ast.Expr)}
        urls = [n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)
                and id(n) not in docstrings and re.search(r"https?://|//[\w-]+\.[\w.-]+/", n.value)]
        assert not urls, (path, urls)
