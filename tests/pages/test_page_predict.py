"""The Predict page under AppTest: with no model it says how to get one; an uploaded image (a new one, drawn here)
gets its class, top-5 bars and saliency overlay, is predicted and logged once however often the page reruns, and
the "this is wrong" control records the right label in the prediction log; a corrupt file shows an error and
logs nothing, beside a good image that still gets its prediction; a run can be tried before it is exported."""
from __future__ import annotations

import io

import pytest
from PIL import Image, ImageDraw
from test_page_deploy import deployed  # noqa: F401 (a fixture)
from test_pages import assert_clean, open_page, shown, texts, workspace  # noqa: F401 (a fixture)

from core.deploy.predlog import PredictionLog
from core.deploy.registry import Registry

PAGE = "pages/predict.py"
RESULTS = "predict.results"


def drawn_digit(text: str = "7", size: int = 40) -> bytes:
    """A digit no dataset holds: drawn with PIL's default font, white on black like scikit-learn's digits."""
    image = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(image)
    draw.text((size // 3, size // 4), text, fill=255, font_size=size // 2)
    buf = io.BytesIO()
    image.convert("RGB").save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture
def registered(deployed):  # noqa: F811
    ws, run_id, export = deployed
    registry = Registry(f"{ws.root}/registry")
    registry.register(export.bundle_dir, "digits")
    registry.set_alias("digits", "champion", 1)
    return ws, run_id


def log_of(ws) -> PredictionLog:
    return PredictionLog.for_workspace(ws.root)


def results(at) -> list[dict]:
    return list(at.session_state[RESULTS].values()) if RESULTS in at.session_state else []


def test_with_no_model_the_page_says_how_to_get_one(workspace):  # noqa: F811
    at = open_page(PAGE)
    assert_clean(at)
    assert any("No model yet" in i.value and "Deploy page" in i.value for i in at.info)
    assert not at.file_uploader


def test_an_uploaded_image_is_predicted_once_and_feedback_reaches_the_log(registered):
    ws, _ = registered
    at = open_page(PAGE)
    assert_clean(at)
    assert at.selectbox(key="predict.model").options[:2] == ["digits@champion (now version 1)", "digits:1"]
    assert at.selectbox(key="predict.model").value == "digits@champion"
    assert "Predicting with digits version 1 (ONNX bundle): 10 classes" in texts(at)

    at.file_uploader(key="predict.files").set_value([("new-seven.png", drawn_digit("7"), "image/png")])
    at.run()
    assert_clean(at)
    (p,) = results(at)
    assert p["model"] == "digits" and p["version"] == 1 and len(p["top_k"]) == 5
    assert f"#### {p['predicted']}" in [m.value for m in at.markdown]
    assert f"{p['confidence']:.1%} confident · digits version 1" in texts(at)
    assert at.get("plotly_chart"), "the top-5 bars"
    captions = [shown(c) for image in at.get("image") for c in image.captions]
    assert "new-seven.png (40×40 px)" in captions
    assert any(c.startswith(f"Where the model looked for {p['predicted']}: Grad-CAM (layer ") for c in captions)
    log = log_of(ws)
    assert log.count() == 1 and log.get(p["id"])["predicted"] == p["predicted"]

    at.run()  # a rerun (any widget) shows the kept prediction: nothing is predicted or logged again
    assert_clean(at)
    assert [r["id"] for r in results(at)] == [p["id"]] and log.count() == 1

    label = at.selectbox(key=f"predict.label.{p['id']}")
    assert p["predicted"] not in label.options and len(label.options) == 9
    right = "1" if p["predicted"] != "1" else "7"
    label.set_value(right)
    at.text_input(key=f"predict.comment.{p['id']}").input("a seven with a bar")
    next(b for b in at.button if b.label == "Record the right label").click().run()
    assert_clean(at)
    assert f"Feedback recorded: the right label is **{right}**." in [shown(s.value) for s in at.success]
    (feedback,) = log.get(p["id"])["feedback"]
    assert feedback["label"] == right and feedback["comment"] == "a seven with a bar"
    assert log.recent(5)[0]["feedback"]["label"] == right
    assert log.count() == 1


def test_a_corrupt_image_shows_an_error_and_logs_nothing_beside_a_good_one(registered):
    ws, _ = registered
    at = open_page(PAGE)
    at.file_uploader(key="predict.files").set_value([("broken.png", b"\x89PNG\r\n\x1a\nnot really", "image/png"),
                                                     ("new-four.png", drawn_digit("4"), "image/png")])
    at.run()
    assert not at.exception
    (error,) = [shown(e.value) for e in at.error]
    assert error.startswith("**Predicting broken.png failed.**") and "corrupt" in error
    assert "Traceback" not in error and "unexpectedly" not in error
    (p,) = results(at)
    assert p["name"] == "new-four.png" and log_of(ws).count() == 1


def test_a_run_can_be_tried_before_it_is_exported(registered):
    ws, run_id = registered
    at = open_page(PAGE)
    at.selectbox(key="predict.model").set_value(f"run:{run_id}").run()
    assert_clean(at)
    assert f"Predicting with run {run_id} (PyTorch checkpoint)" in texts(at)
    at.file_uploader(key="predict.files").set_value([("new-two.png", drawn_digit("2"), "image/png")])
    at.run()
    assert_clean(at)
    (p,) = results(at)
    assert p["model"] == f"run:{run_id}" and p["version"] == 0
    assert log_of(ws).get(p["id"])["model"] == f"run:{run_id}"
