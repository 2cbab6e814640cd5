"""The dashboard under Streamlit's AppTest: every page renders on an empty workspace and with a finished run,
and the main widgets drive core as they should (a demo button loads the demo, Start creates a run, ...)."""
from __future__ import annotations

import os
import shutil
import re
import time

import pytest
import torch
from safetensors.torch import save as save_bytes
from streamlit.testing.v1 import AppTest

from core.config import AugmentSpec, TrainConfig
from core.data.ingest import resolve_dataset
from core.runs.launch import start_run
from core.runs.store import RunStore
from core.workspace import ENV_VAR, Workspace
from pages import ui

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
APP = os.path.join(ROOT, "app.py")
TINY = TrainConfig(image_size=32, epochs=1, batch_size=32, augment=AugmentSpec(hflip=False),
                   early_stopping_patience=0)


def open_page(page: str | None = None, state: dict | None = None, timeout: float = 60) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=timeout)
    for key, value in (state or {}).items():
        at.session_state[key] = value
    at.run()
    if page:
        at.switch_page(page).run()
    return at


def assert_clean(at: AppTest) -> None:
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]


def shown(markdown: str) -> str:
    """What a reader sees of the user strings in `markdown`: ui.md_escape's backslashes and word joiners dropped
    (our own Markdown, `**` and all, stays)."""
    return re.sub(r"\\([!-/:-@\[-`{-~])", r"\1", str(markdown)).replace("\u2060", "")


def texts(at: AppTest) -> str:
    parts = [m.value for m in at.markdown] + [h.value for h in at.header] + [h.value for h in at.subheader]
    parts += [c.value for c in at.caption] + [i.value for i in at.info] + [s.value for s in at.success]
    return shown("\n".join(str(p) for p in parts))


def wait_until_finished(store: RunStore, run_id: str, timeout: float = 180) -> str:
    deadline = time.time() + timeout
    while time.time() < deadline:
        status = store.get_run(run_id)["status"]
        if status not in ("queued", "running"):
            return status
        time.sleep(0.2)
    raise AssertionError(f"run {run_id} did not finish in {timeout} s")


@pytest.fixture
def workspace(tmp_path, monkeypatch) -> Workspace:
    monkeypatch.setenv(ENV_VAR, str(tmp_path / "workspace"))
    return Workspace.from_env()


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, small_digits_dir):
    """A workspace holding the small digits dataset and one completed one-epoch run on it."""
    ws = Workspace(str(tmp_path_factory.mktemp("finished") / "workspace"))
    summary = start_run(TINY, small_digits_dir, runs_dir=ws.runs_dir, workspace_dir=ws.root)
    run = RunStore(ws.runs_dir).get_run(summary["run_id"])
    return ws, run


@pytest.fixture
def finished(finished_run, monkeypatch):
    ws, run = finished_run
    monkeypatch.setenv(ENV_VAR, ws.root)
    shutil.rmtree(os.path.join(ws.root, "users"), ignore_errors=True)  # each test starts as a newcomer
    return ws, run


@pytest.mark.parametrize("page", list(ui.PAGES))
def test_every_page_renders_on_an_empty_workspace(workspace, page):
    at = open_page(page)
    assert_clean(at)
    assert at.title, "every page has a title"
    # pages that end early (nothing to show yet) still get app.py's sidebar
    assert "**Device:**" in "\n".join(m.value for m in at.sidebar.markdown)


def sidebar_text(at: AppTest) -> str:
    # AppTest keeps the elements app.py itself writes (the sidebar) only on the default page
    return shown("\n".join(m.value for m in at.sidebar.markdown))


def test_the_sidebar_shows_the_device_dataset_and_model(finished):
    _, run = finished
    text = sidebar_text(open_page(state={ui.DATASET: run["dataset_id"], ui.MODEL: "efficientnet_lite0"}))
    assert "**Device:** CPU" in text or "**Device:** GPU" in text
    assert "**Dataset:** digits_small" in text and "**Model:** efficientnet_lite0" in text


def test_the_sidebar_lists_a_running_background_task(workspace):
    import threading

    release = threading.Event()
    tasks = ui.job_manager().tasks
    task_id = tasks.submit("bakeoff", "sidebar-test", "bake-off of 3 candidates on digits",
                           lambda progress: (progress("extracting features"), release.wait(30)))
    try:
        text = sidebar_text(open_page())
        assert "**Running:** bake-off of 3 candidates on digits" in text
    finally:
        release.set()
        tasks.wait(task_id, 30)
    assert "Running:" not in sidebar_text(open_page())


@pytest.mark.parametrize("page", list(ui.PAGES))
def test_every_page_renders_with_a_finished_run(finished, page):
    _, run = finished
    at = open_page(page, {ui.DATASET: run["dataset_id"], ui.RUN: run["id"]})
    assert_clean(at)
    if page == "pages/evaluate.py":
        assert at.get("plotly_chart"), "the confusion matrix"
        assert any("Misclassified" in h.value for h in at.subheader)
    if page == "pages/train.py":
        assert run["id"] in texts(at) and "completed" in texts(at)
        assert len(at.get("plotly_chart")) >= 2  # loss and accuracy curves of the finished run
    if page == "pages/runs.py":
        assert run["id"] in at.dataframe[0].value["run"].tolist()


def test_the_demo_button_loads_and_audits_the_demo_dataset(workspace):
    at = open_page("pages/dataset.py")
    next(b for b in at.button if b.label == "Load the demo dataset").click().run()
    assert_clean(at)
    assert at.session_state[ui.DATASET]
    assert "sklearn-digits" in texts(at) and "1,797 images, 10 classes" in texts(at)
    assert at.get("plotly_chart"), "the class-count chart"
    assert os.path.isdir(os.path.join(workspace.datasets_dir, at.session_state[ui.DATASET]))


def test_start_training_records_a_run_that_trains_to_the_end(workspace, small_digits_dir):
    dataset = resolve_dataset(small_digits_dir, workspace.root)
    at = open_page("pages/train.py", {ui.DATASET: dataset.dataset_id, ui.CONFIG: TINY.to_dict()})
    assert_clean(at)
    next(b for b in at.button if b.label == "Start training").click().run()
    assert_clean(at)
    store = RunStore(workspace.runs_dir)
    runs = store.list_runs()
    assert len(runs) == 1 and runs[0]["id"] == at.session_state[ui.RUN]
    assert runs[0]["config"]["image_size"] == 32 and runs[0]["dataset_id"] == dataset.dataset_id
    assert wait_until_finished(store, runs[0]["id"]) == "completed"
    at.run()
    assert_clean(at)
    assert "completed" in texts(at) and at.get("plotly_chart")


def test_a_second_session_sees_the_running_job_stops_it_and_the_runs_page_resumes_it(workspace, small_digits_dir):
    manager = ui._job_manager(workspace.root)  # the process-wide manager the pages use
    run_id = manager.start(TINY.replace(epochs=30), small_digits_dir)
    try:
        deadline = time.time() + 120
        while manager.snapshot(run_id).status != "running" and time.time() < deadline:
            time.sleep(0.1)
        at = open_page("pages/train.py")  # a fresh session (a reload, a second tab): no run id of its own
        assert_clean(at)
        assert at.session_state[ui.RUN] == run_id and run_id in texts(at)
        assert len(RunStore(workspace.runs_dir).list_runs()) == 1, "nothing started another run"
        assert run_id in sidebar_text(open_page()), "the sidebar shows the running job"
        next(b for b in at.button if b.label == "Stop").click().run()
        assert manager.wait(run_id, timeout=120).status == "stopped"

        at = open_page("pages/runs.py")
        assert_clean(at)
        assert at.dataframe[0].value.set_index("run").status[run_id] == "stopped"
        next(b for b in at.button if b.label.startswith("Resume")).click().run()
        assert manager.is_active(run_id) and at.session_state[ui.RUN] == run_id
    finally:
        manager.stop(run_id, timeout=120)
    assert len(RunStore(workspace.runs_dir).list_runs()) == 1, "a resume continues the same run"


def test_configure_validates_before_anything_uses_the_config(workspace):
    at = open_page("pages/configure.py")
    assert_clean(at)
    saved = at.session_state[ui.CONFIG]
    at.number_input(key="cfg.lr").set_value(0.0).run()
    assert any("lr must be between" in e.value for e in at.error)
    assert at.session_state[ui.CONFIG] == saved, "an invalid config is not stored"


def test_the_freeze_slider_freezes_layer_groups(workspace):
    at = open_page("pages/configure.py")
    at.slider(key="cfg.freeze_ratio").set_value(0.0).run()
    assert_clean(at)
    assert any(c.value.startswith("0 of ") for c in at.caption)
    assert at.session_state[ui.CONFIG]["freeze_ratio"] == 0.0
    at.slider(key="cfg.freeze_ratio").set_value(1.0).run()
    caption = next(c.value for c in at.caption if "layer groups frozen" in c.value)
    frozen, total = caption.split(" layer groups")[0].split(" of ")
    assert frozen == total


def test_configure_suggests_settings_from_the_data_and_estimates_the_run(finished):
    _, run = finished
    at = open_page("pages/configure.py", {ui.DATASET: run["dataset_id"]})
    assert_clean(at)
    config = at.session_state[ui.CONFIG]
    assert config["image_size"] == 64, "24 px images on a CPU: no upscaling to 224"
    assert any("Suggested for your data" in i.value for i in at.info)
    assert {m.label: m.value for m in at.metric}["Parameters"].endswith(" M")  # at once; the time in the background
    estimates = ui._job_manager(ui.workspace().root).estimates
    for task in estimates.active():
        estimates.wait(task.task_id, 120)
    at.run()  # what the page's fragment does when the timing ends
    assert {m.label: m.value for m in at.metric}["Per epoch"] not in ("—", "timing…")


def test_a_checkpoint_that_does_not_fit_is_refused_and_one_that_fits_is_used(workspace):
    import timm

    at = open_page("pages/models.py")
    assert_clean(at)
    at.file_uploader[0].upload("mine.safetensors", save_bytes({"conv.weight": torch.zeros(3, 3)}))
    at.run()
    next(b for b in at.button if b.label == "Check and use these weights").click().run()
    assert any("does not fit this architecture" in e.value for e in at.error)
    assert ui.CHECKPOINT not in at.session_state
    assert not os.listdir(workspace.checkpoints_dir), "a refused checkpoint is not kept"

    trunk = timm.create_model("tf_efficientnet_lite0", pretrained=False, num_classes=0)
    state = {k: v.contiguous() for k, v in trunk.state_dict().items()}
    at.file_uploader[0].set_value(("lite0.safetensors", save_bytes(state), "application/octet-stream")).run()
    next(b for b in at.button if b.label == "Check and use these weights").click().run()
    assert not at.error and any("fits efficientnet_lite0" in shown(s.value) for s in at.success)
    assert at.session_state[ui.CHECKPOINT]["model"] == "efficientnet_lite0"


def test_runs_page_overlays_and_compares_the_selected_runs(finished):
    _, run = finished
    at = open_page("pages/runs.py")
    assert_clean(at)
    assert at.multiselect[0].value == [run["id"]]
    assert len(at.get("plotly_chart")) == 2  # validation loss and accuracy overlays
    assert not any(b.label.startswith("Resume") for b in at.button), "a completed run is not resumable"


def test_a_server_path_outside_the_allowed_data_roots_is_refused(workspace, small_digits_dir, tmp_path, monkeypatch):
    from core.workspace import DATA_ROOTS_VAR

    monkeypatch.setenv(DATA_ROOTS_VAR, str(tmp_path / "allowed"))
    at = open_page("pages/dataset.py")
    field = next(t for t in at.text_input if t.label == "Path on the server")
    field.input(small_digits_dir).run()
    next(b for b in at.button if b.label == "Ingest from the server").click().run()
    assert any(DATA_ROOTS_VAR in shown(e.value) for e in at.error), [e.value for e in at.error]
    assert ui.DATASET not in at.session_state
    monkeypatch.delenv(DATA_ROOTS_VAR)
    at = open_page("pages/dataset.py")
    next(t for t in at.text_input if t.label == "Path on the server").input(small_digits_dir).run()
    next(b for b in at.button if b.label == "Ingest from the server").click().run()
    assert_clean(at)
    assert at.session_state[ui.DATASET]  # the same folder, allowed when no roots are set
