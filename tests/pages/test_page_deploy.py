"""The Deploy page under AppTest: on an empty workspace it says what to do and creates nothing; an export runs in the
background and one that fails its parity check is shown red and not offered for registration; the exported
bundle registers as version 1 with an alias, promote and rollback move the alias and the history shows every
move; an invalid model name is refused and registers nothing; the server starts and stops from the page; the
latest predictions are listed with their feedback.

The tiny run and its ONNX export are the session's (tests/conftest.py: deploy_run, onnx_export); each test gets a
workspace of its own whose runs/ is that run store (a link), so registries and logs never leak between tests."""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import threading

import pytest
from test_pages import assert_clean, open_page, shown, texts, workspace  # noqa: F401 (a fixture)

from core.deploy.export import ExportResult
from core.deploy.predictor import Predictor
from core.deploy.registry import Registry
from core.deploy.serving import server_status, stop_server
from core.workspace import ENV_VAR, Workspace
from pages import ui

PAGE = "pages/deploy.py"


@pytest.fixture
def deployed(tmp_path, monkeypatch, deploy_run, onnx_export) -> tuple[Workspace, str, ExportResult]:
    """A fresh workspace whose runs are the session's run store (its run exported once to ONNX)."""
    runs_dir, run_id = deploy_run
    root = tmp_path / "workspace"
    root.mkdir()
    os.symlink(runs_dir, root / "runs")
    monkeypatch.setenv(ENV_VAR, str(root))
    assert onnx_export.passed, onnx_export.parity
    return Workspace.from_env(), run_id, onnx_export


def registry_of(ws: Workspace) -> Registry:
    return Registry(os.path.join(ws.root, "registry"))


def button(at, label: str):
    return next(b for b in at.button if shown(b.label) == label)


TABLES = {"deploy.exports": "export", "deploy.versions": "architecture", "deploy.history": "kind",
          "deploy.predictions": "predicted"}  # each table by a column only it has (AppTest keeps no dataframe keys)


def table(at, key: str):
    return next((d.value for d in at.dataframe if TABLES[key] in d.value.columns), None)


def register(at, bundle_dir: str, name: str, alias: str = ""):
    at.selectbox(key="deploy.bundle").set_value(bundle_dir)
    at.text_input(key="deploy.name").input(name)
    at.selectbox(key="deploy.alias").set_value(alias)
    button(at, "Register").click()
    return at.run()


def test_on_an_empty_workspace_the_page_says_what_to_do_and_creates_nothing(workspace):  # noqa: F811
    at = open_page(PAGE)
    assert_clean(at)
    info = "\n".join(shown(i.value) for i in at.info)
    assert "No finished run yet: train one first" in info
    assert "No model registered yet" in info and "No predictions yet" in info
    assert "It serves a registered model: register an export above first" in info
    assert not any(b.label == "Export" for b in at.button)
    assert not os.path.exists(os.path.join(workspace.root, "registry"))
    assert not os.path.exists(os.path.join(workspace.root, "serving"))


def test_an_export_runs_in_the_background_and_one_that_fails_parity_is_not_offered(deployed, monkeypatch):
    _, run_id, good = deployed
    release = threading.Event()
    failed_dir = os.path.join(os.path.dirname(good.bundle_dir), "onnx-29991231-000000")
    parity = {**good.parity, "passed": False, "top1_identical": False, "top1_disagreements": 3}

    def failing_export(runs_dir, run, fmt="onnx", progress=lambda m: None, **_):
        """Stands in for core.deploy.export.export_run: a bundle whose parity check failed."""
        progress("parity check on 40 test images")
        release.wait(30)
        shutil.copytree(good.bundle_dir, failed_dir)
        with open(os.path.join(failed_dir, "bundle.json")) as f:
            info = json.load(f)
        info.update(status="failed", parity=parity, exported_at="2999-12-31T00:00:00+00:00")
        with open(os.path.join(failed_dir, "bundle.json"), "w") as f:
            json.dump(info, f)
        return dataclasses.replace(good, bundle_dir=failed_dir, passed=False, parity=parity)

    monkeypatch.setattr("core.deploy.export.export_run", failing_export)
    try:
        at = open_page(PAGE)
        assert_clean(at)
        assert at.selectbox(key="deploy.run").value == run_id
        assert table(at, "deploy.exports")["parity"].tolist() == ["passed"]
        button(at, "Export").click().run()
        assert_clean(at)
        assert any(f"Running: export of run {run_id} to onnx" in shown(i.value) and "Parity check on 40" in
                   shown(i.value) for i in at.info)
        assert button(at, "Export").disabled, "a second click starts nothing"
        release.set()
        task = ui.job_manager().tasks.latest("export")
        assert ui.job_manager().tasks.wait(task.task_id, 30).status == "done"
        at.run()
        assert not at.exception
        (error,) = [shown(e.value) for e in at.error]
        assert error.startswith("**The export failed its parity check**, so it cannot be registered")
        assert "Parity FAILED" in error and "top-1 different on 3" in error
        exports = table(at, "deploy.exports")
        assert exports["export"].tolist() == ["onnx-29991231-000000", os.path.basename(good.bundle_dir)]
        assert exports["parity"].tolist() == ["FAILED", "passed"]
        assert at.selectbox(key="deploy.bundle").options == [os.path.basename(good.bundle_dir)]
    finally:
        release.set()
        shutil.rmtree(failed_dir, ignore_errors=True)


def test_register_then_promote_and_roll_back_move_the_alias_with_its_history(deployed):
    ws, run_id, export = deployed
    at = open_page(PAGE)
    register(at, export.bundle_dir, "digits", "champion")
    assert_clean(at)
    assert any("Registered **digits** version 1, now champion." in shown(s.value) for s in at.success)
    assert registry_of(ws).resolve("digits@champion").version == 1
    assert "**Aliases:** **champion** → version 1" in texts(at)
    with open(os.path.join(export.bundle_dir, "card.md")) as f:
        assert f.read().strip() in [c.value.strip() for c in at.code], "the model card, as text"

    register(at, export.bundle_dir, "digits")  # the same bundle again: version 2, no alias
    assert_clean(at)
    versions = table(at, "deploy.versions")
    assert versions["version"].tolist() == [2, 1] and versions["aliases"].tolist() == ["", "champion"]
    assert versions["test_accuracy"].tolist() == [export_metric(export, "test_accuracy")] * 2
    assert versions["run"].tolist() == [run_id, run_id]

    at.selectbox(key="deploy.promote_alias").set_value("champion")
    at.selectbox(key="deploy.promote_version").set_value(2)
    at.text_input(key="deploy.promote_reason").input("better on the line camera")
    button(at, "Promote").click().run()
    assert_clean(at)
    assert "digits@champion now names version 2." in "\n".join(shown(s.value) for s in at.success)
    assert registry_of(ws).alias_version("digits", "champion") == 2
    history = table(at, "deploy.history")
    assert history[["alias", "from", "to", "kind", "reason"]].values.tolist()[0] == [
        "champion", 1, 2, "move", "better on the line camera"]

    rollback = button(at, "Roll back champion")
    assert not rollback.disabled
    rollback.click().run()
    assert_clean(at)
    assert registry_of(ws).alias_version("digits", "champion") == 1
    assert "Rolled back: digits@champion names version 1 again (it named 2)." in \
        "\n".join(shown(s.value) for s in at.success)
    history = table(at, "deploy.history")
    moves = history[["from", "to", "kind"]].astype(object)
    assert moves.where(moves.notna(), None).values.tolist() == [[2, 1, "rollback"], [1, 2, "move"],
                                                                [None, 1, "move"]]
    assert [h["kind"] for h in registry_of(ws).history("digits")] == ["rollback", "move", "move"]


def export_metric(export: ExportResult, name: str) -> float:
    with open(os.path.join(export.bundle_dir, "bundle.json")) as f:
        return json.load(f)["metrics"][name]


@pytest.mark.parametrize("name", ["bad name/x", "", "digits@champion"])
def test_an_invalid_model_name_is_refused_and_registers_nothing(deployed, name):
    ws, _, export = deployed
    at = open_page(PAGE)
    register(at, export.bundle_dir, name, "champion")
    assert not at.exception
    (error,) = [shown(e.value) for e in at.error]
    assert error.startswith("**Registering the export failed.** model name") and "is not allowed" in error
    assert not at.success
    assert not os.path.exists(os.path.join(ws.root, "registry")), "nothing registered, not even an empty registry"
    assert "No model registered yet" in texts(at)


def test_the_server_starts_and_stops_from_the_page_and_predictions_are_listed(deployed):
    ws, _, export = deployed
    registry = registry_of(ws)
    registry.register(export.bundle_dir, "digits")
    registry.register(export.bundle_dir, "digits")
    registry.set_alias("digits", "champion", 1)
    registry.set_alias("digits", "challenger", 2)
    model = Predictor(ws, "digits@champion")
    with open(first_test_image(ws), "rb") as f:
        data = f.read()
    made = model.predict([("a.png", data), ("b.png", data)])
    model.feedback(made[0].id, "3" if made[0].predicted != "3" else "4", "a 3 with a gap")
    try:
        at = open_page(PAGE)
        assert_clean(at)
        predictions = table(at, "deploy.predictions")
        assert set(predictions["id"]) == {p.id for p in made}
        flagged = predictions.set_index("id").loc[made[0].id]
        assert flagged["right label"] in ("3", "4") and flagged["comment"] == "a 3 with a gap"
        assert "The latest 2 of 2 predictions; 1 of them with feedback." in texts(at)

        at.number_input(key="deploy.serve_port").set_value(0)
        at.selectbox(key="deploy.serve_ref").set_value("digits@champion").run()
        assert at.radio(key="deploy.serve_mode").disabled  # no challenger chosen yet
        at.selectbox(key="deploy.serve_challenger").set_value("digits@challenger").run()
        assert not at.radio(key="deploy.serve_mode").disabled and at.slider(key="deploy.serve_share").disabled
        button(at, "Start the server").click().run()
        assert not at.exception
        task = ui.job_manager().tasks.latest("server")
        done = ui.job_manager().tasks.wait(task.task_id, 120)
        assert done.status == "done", done.error
        at.run()
        assert_clean(at)
        status = server_status(ws.root)
        assert status["running"] and status["healthy"]
        said = "\n".join(shown(s.value) for s in at.success)
        assert f"**Running** at {status['url']}, serving **digits** version 1" in said
        beside = "\n".join(shown(i.value) for i in at.info)
        assert "Beside it: **digits@challenger** (version 2) in the shadow: it predicts every request" in beside
        assert f"curl -F file=@image.jpg {status['url']}/predict" in [c.value for c in at.code]
        assert f"[{status['url']}/docs]({status['url']}/docs)" in texts(at)
        assert "Refreshed every 5 s while the server runs." in texts(at)

        button(at, "Stop the server").click().run()
        assert_clean(at)
        assert not server_status(ws.root)["running"]
        assert any(b.label == "Start the server" for b in at.button)
    finally:
        stop_server(ws.root)


def first_test_image(ws: Workspace) -> str:
    from core.runs.launch import run_inputs
    from core.runs.store import RunStore

    store = RunStore(ws.runs_dir)
    _, data = run_inputs(store, store.list_runs()[0]["id"])
    return data.test.paths[0]
