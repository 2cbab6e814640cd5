"""The Models page's bake-off under AppTest: it asks for a dataset when there is none, refuses fewer than two
candidates, runs in the background through the process-wide TaskManager (a second click starts nothing), shows
the chart, the table and the recommendation, and its buttons set the model to train."""
from __future__ import annotations

import pytest

from core.data.ingest import resolve_dataset
from pages import ui
from test_pages import assert_clean, open_page, shown, texts, workspace  # noqa: F401 (a fixture)

PAGE = "pages/models.py"
TWO = ["efficientnet_lite0", "efficientnet_lite1"]


def button(at, label: str):
    return next(b for b in at.button if shown(b.label) == label)  # labels hold model names, escaped


def bakeoff_table(at):
    return next(d.value for d in at.dataframe if "candidate" in d.value.columns)


def tasks(ws):
    return ui._job_manager(ws.root).tasks  # the process-wide manager the page uses


@pytest.fixture
def dataset_id(workspace, small_digits_dir):  # noqa: F811
    return resolve_dataset(small_digits_dir, workspace.root).dataset_id


def test_without_a_dataset_the_page_says_so_and_offers_the_demo(workspace):  # noqa: F811
    at = open_page(PAGE)
    assert_clean(at)
    assert any("No dataset loaded yet" in i.value and "step 2" in i.value for i in at.info)
    assert any(b.label == "Use the demo dataset" for b in at.button)
    assert not any(b.label == "Use this dataset" for b in at.button), "nothing stored yet"
    # the catalog's parameter counts say what they count (the bake-off's are the trunk's)
    assert "Parameters here are the published models', with ImageNet's 1000-class head" in texts(at)
    assert not any(b.label.startswith("Run the bake-off") for b in at.button)
    button(at, "Use the demo dataset").click().run()
    assert_clean(at)
    assert at.session_state[ui.DATASET] and any(b.label == "Run the bake-off" for b in at.button)


def test_without_a_dataset_a_stored_one_can_be_picked_here(workspace, dataset_id):  # noqa: F811
    at = open_page(PAGE)
    assert_clean(at)
    assert any("or on a dataset stored in this workspace" in i.value for i in at.info)
    (name,) = at.selectbox(key="models.stored_dataset").options
    assert name.startswith("digits_small"), "shown by its name, not its id"
    button(at, "Use this dataset").click().run()
    assert_clean(at)
    assert at.session_state[ui.DATASET] == dataset_id and any(b.label == "Run the bake-off" for b in at.button)


def test_fewer_than_two_candidates_get_a_clear_message_and_start_nothing(workspace, dataset_id):  # noqa: F811
    at = open_page(PAGE, {ui.DATASET: dataset_id, ui.CANDIDATES: ["efficientnet_lite0"]})
    assert_clean(at)
    assert any("Pick at least 2 candidates" in i.value for i in at.info)
    assert button(at, "Run the bake-off").disabled  # (AppTest, like a browser, cannot click it)
    at.run()
    assert tasks(workspace).latest("bakeoff") is None, "nothing started"


def test_the_random_weight_floor_is_added_unless_unticked(workspace, dataset_id):  # noqa: F811
    at = open_page(PAGE, {ui.DATASET: dataset_id, ui.CANDIDATES: TWO})
    assert "efficientnet_lite0:random" in texts(at)
    at.checkbox(key="models.bakeoff_floor").uncheck().run()
    assert_clean(at)
    assert "Compares **efficientnet_lite0**, **efficientnet_lite1**." in texts(at)
    at.multiselect(key="models.candidates").set_value(TWO + ["efficientnet_lite2", "resnet50.a1_in1k",
                                                             "torchvision/resnet18"]).run()
    at.checkbox(key="models.bakeoff_floor").check().run()
    assert any("at most 5 candidates" in i.value for i in at.info)
    assert button(at, "Run the bake-off").disabled


def test_a_bakeoff_runs_in_the_background_and_its_buttons_pick_the_model(workspace, dataset_id):  # noqa: F811
    at = open_page(PAGE, {ui.DATASET: dataset_id, ui.CANDIDATES: TWO})
    at.number_input(key="models.bakeoff_max_images").set_value(100)
    at.selectbox(key="models.bakeoff_size").set_value(32).run()
    button(at, "Run the bake-off").click().run()
    assert_clean(at)
    manager = tasks(workspace)
    first = manager.latest("bakeoff")
    assert first is not None and first.active and at.session_state["models.bakeoff_task"] == first.task_id
    assert any("Running: bake-off of 3 candidates on digits_small" in shown(i.value) for i in at.info)

    # a rerun or another tab finds the running task (no second click possible) and starts nothing new
    at.run()
    assert button(at, "Run the bake-off again").disabled
    other_tab = open_page(PAGE, {ui.DATASET: dataset_id, ui.CANDIDATES: TWO, "models.bakeoff.max_images": 100, "models.bakeoff.size": 32})
    assert_clean(other_tab)
    assert any("Running: bake-off" in shown(i.value) for i in other_tab.info)
    assert button(other_tab, "Run the bake-off again").disabled
    assert [s.task_id for s in manager.active()] == [first.task_id]

    done = manager.wait(first.task_id, timeout=120)
    assert done.status == "done", done.error
    at.run()
    assert_clean(at)
    assert manager.latest("bakeoff").task_id == first.task_id
    result = done.result
    assert {c.name for c in result.candidates} == {*TWO, "efficientnet_lite0:random"}
    assert result.n_train + result.n_val <= 100 and result.image_size == 32
    assert at.get("plotly_chart"), "the accuracy-vs-latency chart"
    table = bakeoff_table(at)
    assert table["candidate"].tolist() == [c.name for c in result.candidates]
    assert table["val_accuracy"].tolist() == [c.linear["accuracy"] for c in result.candidates]
    assert (table["params_m"] > 3).all() and (table["latency_ms_batch1"] > 0).all()
    assert any(shown(s.value).startswith(f"**Recommended: {result.recommendation}.**") for s in at.success)
    # beside the figures: where the latency was measured, and which parameter count is which
    shown_text = texts(at) + "\n".join(shown(w.value) for w in at.warning)
    assert "**Latency and memory:** measured in a clean child process, one model after another" in shown_text
    assert "efficientnet_lite0 3.4 M parameters in the trunk (4.7 M with ImageNet's 1000-class head)" in shown_text
    assert table["params_with_head_m"].tolist()[:1] and "M parameters in the trunk" in result.reason

    # random weights are a floor to compare with, never offered as the model to train
    assert result.recommendation in TWO
    assert at.selectbox(key="models.bakeoff_other").options == [n for n in TWO if n != result.recommendation]
    assert not any("random" in b.label for b in at.button)
    other = next(name for name in TWO if name != result.recommendation)
    button(at, f"Use {other} instead").click().run()
    assert_clean(at)
    assert at.session_state[ui.MODEL] == other
    assert any(f"**{other}** is now the model to train" in shown(s.value) for s in at.success)
    assert at.radio[0].value == other, "the Train-with choice follows"
    button(at, f"Use {result.recommendation} for training").click().run()
    assert at.session_state[ui.MODEL] == result.recommendation
    assert at.session_state[ui.CANDIDATES] == TWO

    # the result survives leaving the page and coming back
    at.switch_page("pages/dataset.py").run()
    at.switch_page(PAGE).run()
    assert_clean(at)
    assert at.get("plotly_chart") and bakeoff_table(at)["candidate"].tolist() == table["candidate"].tolist()


def test_a_failed_bakeoff_shows_its_error_and_the_page_keeps_working(workspace):  # noqa: F811
    at = open_page(PAGE, {ui.DATASET: "0123456789abcdef", ui.CANDIDATES: TWO})  # an id with no dataset behind it
    button(at, "Run the bake-off").click().run()
    done = tasks(workspace).wait(at.session_state["models.bakeoff_task"], timeout=60)
    assert done.status == "failed" and done.error
    at.run()
    assert not at.exception
    assert [shown(e.value) for e in at.error] == [f"**The bake-off failed.** {done.error}"]
    assert "Traceback" not in done.error and "unexpected error" not in done.error
    assert not button(at, "Run the bake-off again").disabled, "it can be tried again"
