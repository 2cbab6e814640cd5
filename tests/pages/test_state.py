"""The user's place, kept (AppTest): a reload or a second tab is a fresh session of the same user, and lands where
the user was; the address names the dataset and run; a second run at once is a deliberate choice; the Configure
page's estimate never blocks its controls; runs are named, tagged and deleted by their owner."""
from __future__ import annotations

import os
import threading
import time

import pytest
from streamlit.testing.v1 import AppTest

import core.plan.estimate as estimate
from core import sessions
from core.access import PASSWORD_VAR, DatasetOwners
from core.data.ingest import resolve_dataset
from core.runs.runlock import RunLock
from core.runs.store import RunStore
from pages import ui
from test_pages import APP, TINY, assert_clean, open_page, texts, workspace  # noqa: F401 (a fixture)


@pytest.fixture(autouse=True)
def quick_timing(monkeypatch):
    """The estimate's timing of a training step, instant (the tests that need it slow make it slow)."""
    monkeypatch.setattr(estimate, "_measure", lambda *key: (0.01, 0.003, 1000))
    estimate.forget_timings()
    yield
    estimate.forget_timings()


def open_with(page: str | None = None, state: dict | None = None, params: dict | None = None) -> AppTest:
    """A fresh session (a reload, a new tab, a shared link): its own session state, the address's parameters."""
    at = AppTest.from_file(APP, default_timeout=60)
    for key, value in (params or {}).items():
        at.query_params[key] = value
    for key, value in (state or {}).items():
        at.session_state[key] = value
    at.run()
    if page:
        at.switch_page(page).run()
    return at


def fake_run(store: RunStore, owner: str = "", status: str = "completed", dataset_id: str = "") -> str:
    run_id = store.create_run(TINY.to_dict(), {"dataset_id": dataset_id, "source": "digits"}, owner=owner)
    store.update_run(run_id, status=status)
    time.sleep(0.01)  # distinct creation times: newest first is well defined
    return run_id


def test_a_reload_keeps_the_dataset_model_and_every_setting(workspace, small_digits_dir):
    dataset = resolve_dataset(small_digits_dir, workspace.root)
    at = open_page("pages/configure.py", {ui.DATASET: dataset.dataset_id, ui.MODEL: "efficientnet_lite0"})
    at.slider(key="cfg.freeze_ratio").set_value(0.3).run()
    at.number_input(key="cfg.epochs").set_value(7).run()
    assert_clean(at)
    assert at.query_params.get("dataset") == dataset.dataset_id, "the address names the dataset shown"
    assert os.listdir(os.path.join(workspace.root, sessions.USERS_DIR)) == [
        os.path.basename(sessions.state_path(workspace.root, "local"))]

    again = open_page("pages/configure.py")  # a reload: a new session of the same (local) user
    assert_clean(again)
    assert again.session_state[ui.DATASET] == dataset.dataset_id
    assert again.session_state[ui.MODEL] == "efficientnet_lite0"
    assert again.slider(key="cfg.freeze_ratio").value == 0.3 and again.number_input(key="cfg.epochs").value == 7
    assert again.session_state[ui.CONFIG]["freeze_ratio"] == 0.3, "not overwritten by the data's suggestions"


def test_the_address_wins_when_it_names_what_the_user_may_see(workspace, small_digits_dir, monkeypatch):
    monkeypatch.setenv(PASSWORD_VAR, "s3cret")
    dataset = resolve_dataset(small_digits_dir, workspace.root)
    DatasetOwners(workspace.datasets_dir).record(dataset.dataset_id, "ann")
    store = RunStore(workspace.runs_dir)
    old, new = fake_run(store, "ann", dataset_id=dataset.dataset_id), fake_run(store, "ann")
    bobs = fake_run(store, "bob")
    sessions.save_state(workspace.root, "ann", {ui.RUN: old, ui.DATASET: dataset.dataset_id})

    assert open_with(state={ui.USER: "ann"}).session_state[ui.RUN] == old, "the saved place"
    linked = open_with("pages/train.py", {ui.USER: "ann"}, {"run": new})
    assert_clean(linked)
    assert linked.session_state[ui.RUN] == new and new in texts(linked), "a link shows what it names"
    assert linked.query_params.get("run") == new and linked.query_params.get("dataset") == dataset.dataset_id
    # someone else's run, a dataset that is not there: the address is ignored, the saved place (the link's) stays
    other = open_with(state={ui.USER: "ann"}, params={"run": bobs, "dataset": "no-such-dataset"})
    assert other.session_state[ui.RUN] == new and other.session_state[ui.DATASET] == dataset.dataset_id
    bob = open_with("pages/train.py", {ui.USER: "bob"}, {"run": new, "dataset": dataset.dataset_id})
    assert_clean(bob)
    assert bob.session_state[ui.RUN] == bobs and ui.DATASET not in bob.session_state, "ann's link: nothing of hers"
    assert new not in texts(bob)


def test_signing_in_as_someone_else_in_the_same_tab_keeps_nothing_of_the_last_user(
        workspace, small_digits_dir, monkeypatch):
    monkeypatch.setenv(PASSWORD_VAR, "s3cret")
    dataset = resolve_dataset(small_digits_dir, workspace.root)
    DatasetOwners(workspace.datasets_dir).record(dataset.dataset_id, "ann")
    at = open_with(state={ui.USER: "ann", ui.DATASET: dataset.dataset_id, "cfg.epochs": 9})
    at.session_state[ui.USER] = "bob"  # ann signed out, bob signed in (AppTest keeps a USER it was given)
    at.run()
    assert_clean(at)
    assert at.session_state[ui.USER] == "bob"
    assert ui.DATASET not in at.session_state and "cfg.epochs" not in at.session_state
    assert open_with(state={ui.USER: "ann"}).session_state[ui.DATASET] == dataset.dataset_id, "ann's is kept"


def test_a_reload_during_training_shows_the_run_and_its_dataset_and_a_second_run_is_a_choice(
        workspace, small_digits_dir):
    manager = ui._job_manager(workspace.root)  # the process-wide manager the pages use
    run_id = manager.start(TINY.replace(epochs=30), small_digits_dir)
    try:
        deadline = time.time() + 120
        while manager.snapshot(run_id).status != "running" and time.time() < deadline:
            time.sleep(0.1)
        at = open_page("pages/train.py")  # a reload in a tab that never chose the dataset (it started elsewhere)
        assert_clean(at)
        assert not any("No dataset yet" in w.value for w in at.warning)
        assert at.session_state[ui.DATASET] == manager.store.get_run(run_id)["dataset_id"]
        assert run_id in texts(at) and "digits_small" in texts(at)
        assert at.query_params.get("run") == run_id

        start = next(b for b in at.button if b.label == "Start training")
        alongside = next(c for c in at.checkbox if c.label == "Train another run at the same time")
        assert start.disabled and not alongside.value, "a second run takes a deliberate choice"
        assert "about half of the" in texts(at) and "2 times as long" in texts(at), "its cost, stated"
        alongside.check().run()
        assert not next(b for b in at.button if b.label == "Start training").disabled
        assert len(manager.store.list_runs()) == 1

        earlier = fake_run(manager.store)
        linked = open_with("pages/train.py", params={"run": earlier})  # a link to another run: it stays on that one
        assert linked.session_state[ui.RUN] == earlier and f"Run {earlier}" in texts(linked)
    finally:
        manager.stop(run_id, timeout=120)


def test_configure_shows_the_estimate_at_once_and_the_time_when_the_background_timing_ends(
        workspace, small_digits_dir, monkeypatch):
    release = threading.Event()

    def slow_measure(*key):  # the real one takes 20-30 s on a CPU at the model's own size
        release.wait(60)
        return 0.01, 0.003, 1000

    monkeypatch.setattr(estimate, "_measure", slow_measure)
    dataset = resolve_dataset(small_digits_dir, workspace.root)
    estimates = ui._job_manager(workspace.root).estimates
    try:
        at = open_page("pages/configure.py", {ui.DATASET: dataset.dataset_id}, timeout=30)  # not waiting for it
        assert_clean(at)
        metrics = {m.label: m.value for m in at.metric}
        assert metrics["Parameters"].endswith(" M") and metrics["Per epoch"] == "timing…"
        assert "Timing a training step on this machine" in texts(at)
        at.slider(key="cfg.freeze_ratio").set_value(0.0).run()  # the controls answer meanwhile
        assert any(c.value.startswith("0 of ") for c in at.caption)
    finally:
        release.set()
    for task in estimates.active():
        estimates.wait(task.task_id, 30)
    at.run()  # what the fragment's last poll does when the timing ends
    assert_clean(at)
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Per epoch"] not in ("timing…", "—") and "Timing a training step" not in texts(at)


def test_runs_are_named_tagged_and_deleted_by_their_owner_and_never_while_training(workspace, monkeypatch):
    monkeypatch.setenv(PASSWORD_VAR, "s3cret")
    store = RunStore(workspace.runs_dir)
    theirs, mine = fake_run(store, "bob"), fake_run(store, "ann")
    busy = fake_run(store, "ann", status="running")
    at = open_page("pages/runs.py", {ui.USER: "ann"})
    assert_clean(at)
    assert set(at.dataframe[0].value.run) == {mine, busy}, "bob's run is not listed"

    next(s for s in at.selectbox if s.label == "Run").set_value(mine).run()
    at.text_input(key=f"runs.name.{mine}").input("first try").run()
    at.text_input(key=f"runs.tags.{mine}").input("baseline, 64px").run()
    next(b for b in at.button if b.label == "Save the name and tags").click().run()
    assert_clean(at)
    assert store.get_run(mine)["name"] == "first try" and store.get_run(mine)["tags"] == ["baseline", "64px"]
    assert any("first try" in o for o in next(s for s in at.selectbox if s.label == "Run").options)
    tag_filter = next(m for m in at.multiselect if m.label == "Show the runs tagged")
    tag_filter.set_value(["64px"]).run()
    assert list(at.dataframe[0].value.run) == [mine]
    next(m for m in at.multiselect if m.label == "Show the runs tagged").set_value([]).run()

    with RunLock(store.run_dir(busy)):  # a trainer holds it
        next(s for s in at.selectbox if s.label == "Run").set_value(busy).run()
        assert "cannot be deleted" in texts(at) and not any(b.label == "Delete the run" for b in at.button)

    next(s for s in at.selectbox if s.label == "Run").set_value(mine).run()
    assert next(b for b in at.button if b.label == "Delete the run").disabled, "only once confirmed"
    next(c for c in at.checkbox if c.label.startswith(f"Yes, delete run {mine} ")).check().run()
    next(b for b in at.button if b.label == "Delete the run").click().run()
    assert_clean(at)
    assert {r["id"] for r in store.list_runs()} == {theirs, busy} and not os.path.exists(store.run_dir(mine))
    assert f"Run {mine} is deleted" in texts(at)
