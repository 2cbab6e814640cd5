"""The Monitor page under AppTest: with no model it says how to get one and creates nothing; with a served model
whose flagged predictions fall far below its validation accuracy it shows the accuracy alert with its reason, the
figures per window, and the feedback queue (confirm and relabel take a prediction off it); the retrain trigger says
how many labels it has of how many it needs, and "Retrain now" registers a challenger in the background; the
comparison gives a decision with its evidence, promote moves the champion and rollback moves it back."""
from __future__ import annotations

import io
import os

import pytest
from PIL import Image, ImageOps
from test_page_deploy import deployed  # noqa: F401 (a fixture)
from test_pages import assert_clean, open_page, shown, texts, workspace  # noqa: F401 (a fixture)

from core.deploy.predictor import Predictor
from core.deploy.registry import Registry
from core.runs.launch import run_inputs
from core.runs.store import RunStore
from pages import ui

PAGE = "pages/monitor.py"


def test_with_no_model_the_page_says_how_to_get_one(workspace):  # noqa: F811
    at = open_page(PAGE)
    assert_clean(at)
    assert any("No model is registered yet" in i.value for i in at.info)
    assert not os.path.exists(os.path.join(workspace.root, "registry"))
    assert not os.path.exists(os.path.join(workspace.root, "monitor"))


@pytest.fixture
def flagged(deployed):  # noqa: F811
    """digits v1 as champion; 40 of its predictions on new images (inverted digits: a drift) logged with the
    images, 28 of them flagged with another label: labelled accuracy 30%, far below validation."""
    ws, run_id, export = deployed
    registry = Registry(os.path.join(ws.root, "registry"))
    registry.register(export.bundle_dir, "digits")
    registry.set_alias("digits", "champion", 1)
    _, data = run_inputs(RunStore(ws.runs_dir), run_id)
    model = Predictor(ws, "digits@champion")
    files = []
    for path in data.train.paths[:40]:  # new images (inverted, so not already in the dataset)
        buf = io.BytesIO()
        ImageOps.invert(Image.open(path).convert("RGB")).save(buf, "PNG")
        files.append((os.path.basename(path), buf.getvalue()))
    made = model.predict(files)
    for i, p in enumerate(made):
        label = p.predicted if i % 10 < 3 else str((int(p.predicted) + 1) % 10)
        model.feedback(p.id, label, "flagged in a test" if label != p.predicted else "")
    return ws, made


def alerts(at) -> list[str]:
    return [shown(e.value) for e in at.error]


def test_an_accuracy_alert_the_figures_and_the_feedback_queue(flagged):
    ws, made = flagged
    at = open_page(PAGE)
    assert not at.exception, [e.value for e in at.exception]
    said = alerts(at)
    assert len(said) == 2 and said[0].startswith("**Accuracy** · accuracy on 40 labelled predictions is 30%"), said
    assert "below 90% of the validation figure" in said[0]
    assert said[1].startswith("**Drift** · ") and "MMD" in said[1]  # inverted digits: far from the training data
    assert len(at.get("plotly_chart")) == 7
    assert "12 of 40 predictions" not in texts(at) and "40 of 40 predictions have feedback" in texts(at)
    queue = [b for b in at.button if b.key and b.key.startswith("monitor.confirm.")]
    assert len(queue) == 12  # the 28 flagged, the newest 12 shown
    first = queue[0].key.removeprefix("monitor.confirm.")
    at.button(key=f"monitor.confirm.{first}").click().run()
    assert f"monitor.confirm.{first}" not in [b.key for b in at.button]
    second = next(b.key for b in at.button if b.key and b.key.startswith("monitor.relabel.")).split(".")[-1]
    assert at.button(key=f"monitor.relabel.{second}").disabled  # the label shown is the one given
    predicted = next(p.predicted for p in made if p.id == second)
    at.selectbox(key=f"monitor.label.{second}").set_value(predicted).run()
    at.button(key=f"monitor.relabel.{second}").click().run()  # the model was right after all: off the queue
    assert f"monitor.relabel.{second}" not in [b.key for b in at.button]
    assert "Nothing to review" not in texts(at)


def test_retrain_then_compare_then_promote_and_roll_back(flagged):
    ws, _ = flagged
    at = open_page(PAGE)
    (bar,) = at.get("progress")
    assert bar.proto.text == "40 of 500 new labelled images collected" and bar.proto.value == 8  # percent
    assert "No retrain." in texts(at) and at.button(key="monitor.retrain").disabled
    at.number_input(key="monitor.min_labels").set_value(20).run()
    assert "Retrain." in texts(at) and not at.button(key="monitor.retrain").disabled
    at.button(key="monitor.retrain").click().run()
    tasks = ui.job_manager().tasks
    done = tasks.wait(tasks.latest("retrain", "digits").task_id, 300)
    assert done.status == "done", done.error
    registry = Registry(os.path.join(ws.root, "registry"))
    assert registry.aliases("digits") == {"champion": 1, "challenger": 2}
    at.run()
    assert any("now **challenger**" in shown(s.value) for s in at.success)

    at.button(key="monitor.compare").click().run()
    done = tasks.wait(tasks.latest("compare").task_id, 120)
    assert done.status == "done", done.error
    at.run()
    verdict = keep_or_promote(at)
    assert verdict.startswith("**Keep the champion.**"), verdict  # as good, not shown better: a 1-point margin
    assert "shared images" in verdict and "McNemar" in verdict and at.button(key="monitor.promote").disabled
    at.button(key="monitor.keep").click().run()
    assert any("Kept version 1 as champion" in shown(s.value) for s in at.success)
    assert registry.alias_version("digits", "champion") == 1

    at.number_input(key="monitor.margin").set_value(30.0).run()  # accept one up to 30 points worse
    verdict = keep_or_promote(at)
    assert verdict.startswith("**Promote.**") and "not worse" in verdict, verdict
    at.button(key="monitor.promote").click().run()
    assert registry.alias_version("digits", "champion") == 2
    assert any("Promoted: digits@champion names version 2" in shown(s.value) for s in at.success)
    assert registry.history("digits", "champion")[0]["reason"].startswith("challenger ")  # the evidence, recorded

    at.button(key="monitor.rollback").click().run()
    assert registry.alias_version("digits", "champion") == 1
    assert any("Rolled back: digits@champion names version 1 again" in shown(s.value) for s in at.success)


def keep_or_promote(at) -> str:
    said = [shown(s.value) for s in at.success] + [shown(w.value) for w in at.warning]
    return next(v for v in said if v.startswith(("**Promote.**", "**Keep the champion.**")))
