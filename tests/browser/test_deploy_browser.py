"""The model leaves the studio, in a real browser: a run trained in the dashboard's workspace is exported on the
Deploy page (the parity verdict shown), registered as "digits" with the alias champion, tried on the Predict page
with a new image (a digit drawn here, in no dataset), flagged as wrong with another label, and the feedback is
in the workspace's prediction log; the Deploy page then lists that prediction with its feedback. On the Monitor
page the flagged prediction waits in the feedback queue; a retrain registers a challenger, the comparison gives
its verdict, and the challenger is promoted.

Shares the server fixture and helpers of test_browser.py (Debian chromium, a fresh workspace). Screenshots:
test-output/screenshots/deploy*.png and predict.png (docs/screenshots/ with UPDATE_DOC_SCREENSHOTS=1).
"""
from __future__ import annotations

import io
import os
import re

import pytest
from PIL import Image, ImageDraw
from playwright.sync_api import expect, sync_playwright
from test_browser import CHROMIUM, MINUTE, go, open_browser, server, shot  # noqa: F401 (server: a fixture)

from core.config import AugmentSpec, TrainConfig
from core.deploy.predlog import PredictionLog
from core.runs import FINISHED
from core.runs.launch import start_run
from core.runs.store import RunStore
from core.workspace import Workspace

pytestmark = pytest.mark.skipif(not os.path.exists(CHROMIUM), reason=f"needs Debian's chromium at {CHROMIUM}")
TINY = TrainConfig(image_size=32, epochs=1, batch_size=32, augment=AugmentSpec(hflip=False),
                   early_stopping_patience=0, group_by="names", crossval_folds=0)


def finished_run(workspace: str, digits_dir: str) -> str:
    """A finished run of the dashboard's workspace: one already there, else a tiny one trained now (~15 s)."""
    ws = Workspace(workspace)
    done = [r for r in RunStore(ws.runs_dir).list_runs() if r["status"] in FINISHED and r["best_checkpoint"]]
    if done:
        return done[0]["id"]
    return start_run(TINY, digits_dir, runs_dir=ws.runs_dir, workspace_dir=ws.root)["run_id"]


def drawn_seven(size: int = 24) -> bytes:
    """A 7 as scikit-learn's digits look (white strokes on black, 24 px), drawn by hand: in no dataset."""
    image = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(image)
    draw.line([(5, 5), (19, 5), (11, 20)], fill=255, width=3)
    draw.line([(8, 12), (17, 12)], fill=190, width=2)
    buf = io.BytesIO()
    image.convert("RGB").save(buf, "PNG")
    return buf.getvalue()


def choose(page, label: str, option: str) -> None:
    """Pick `option` in the selectbox labelled `label`."""
    page.get_by_role("combobox", name=label, exact=True).click()
    page.get_by_role("option", name=option, exact=True).click()


def test_export_register_predict_and_flag_a_prediction_wrong(server, small_digits_dir):  # noqa: F811
    run_id = finished_run(server.workspace, small_digits_dir)
    expect.set_options(timeout=MINUTE)
    with sync_playwright() as p:
        browser, page = open_browser(p)
        try:
            page.goto(server)
            expect(page.get_by_role("heading", name="Transfer Studio")).to_be_visible()
            go(page, "Deploy", "8 ·")
            expect(page.get_by_role("combobox", name="Run")).to_have_value(re.compile(re.escape(run_id)))
            page.get_by_role("button", name="Export", exact=True).click()
            main = page.get_by_test_id("stMainBlockContainer")  # the sidebar lists running tasks too
            expect(main.get_by_text(re.compile(r"^Running: export of run"))).to_be_visible()
            verdict = page.get_by_test_id("stAlertContentSuccess").filter(has_text="Parity passed")
            expect(verdict).to_be_visible(timeout=4 * MINUTE)
            assert re.search(r"max \|logit difference\| \d\.\d\de-\d\d", verdict.inner_text().replace("\u2060", ""))
            shot(page, "deploy-export")

            page.get_by_role("textbox", name="Model name").fill("digits")
            choose(page, "Alias", "champion")
            page.get_by_role("button", name="Register", exact=True).click()
            said = page.get_by_test_id("stAlertContentSuccess").filter(has_text="Registered")
            expect(said).to_contain_text("Registered digits version 1, now champion.")
            expect(page.get_by_text("Aliases: champion → version 1")).to_be_visible()
            shot(page, "deploy", doc=True)

            go(page, "Predict", "7 ·")
            expect(page.get_by_role("combobox", name="Model")).to_have_value(re.compile("^digits@champion"))
            page.locator("[data-testid='stFileUploaderDropzoneInput']").set_input_files(
                files=[{"name": "my-seven.png", "mimeType": "image/png", "buffer": drawn_seven()}])
            caption = page.get_by_text(re.compile(r"confident · digits version 1"))
            expect(caption).to_be_visible(timeout=2 * MINUTE)
            expect(page.get_by_text(re.compile(r"^Where the model looked for .*Grad-CAM"))).to_be_visible()
            predicted = page.get_by_test_id("stMain").locator("h4").first.inner_text().strip()
            right = "7" if predicted != "7" else "1"
            page.get_by_text("This is wrong — the right label is …").click()
            choose(page, "The right label", right)
            page.get_by_role("textbox", name="Comment (optional)").fill("a seven drawn by hand")
            page.get_by_role("button", name="Record the right label").click()
            expect(page.get_by_text(f"Feedback recorded: the right label is {right}.")).to_be_visible()
            shot(page, "predict", doc=True)

            log = PredictionLog.for_workspace(server.workspace)
            (row,) = log.recent(10)
            assert (row["model"], row["version"], row["predicted"]) == ("digits", 1, predicted)
            assert row["feedback"]["label"] == right and row["feedback"]["comment"] == "a seven drawn by hand"

            go(page, "Deploy", "8 ·")
            expect(page.get_by_text("The latest 1 of 1 predictions; 1 of them with feedback.")).to_be_visible()
            page.get_by_role("heading", name="Latest predictions").scroll_into_view_if_needed()
            shot(page, "deploy-predictions", doc=True)

            # the loop closes: the flagged prediction waits in the Monitor page's queue; a retrain (forced: one
            # label and no alert do not trigger one) registers a challenger, compared and then promoted
            go(page, "Monitor", "9 ·")
            main = page.get_by_test_id("stMainBlockContainer")
            expect(main.get_by_text(re.compile(rf"flagged as {right} · “a seven drawn by hand”"))).to_be_visible()
            shot(page, "monitor", doc=True)
            needed = page.get_by_role("spinbutton", name="New labelled images needed")
            needed.fill("1")
            needed.press("Enter")
            expect(main.get_by_text(re.compile("^No retrain\u2060?\\.$"))).to_be_visible()  # md_escape's joiner
            page.get_by_text("Retrain even though the trigger says no").click()
            page.get_by_role("button", name="Retrain now").click()
            done = page.get_by_test_id("stAlertContentSuccess").filter(has_text="Retrained")
            expect(done).to_contain_text("registered as digits version 2, now challenger", timeout=5 * MINUTE)
            page.get_by_role("button", name="Compare on the held-out images").click()
            verdict = main.get_by_text(re.compile(r"^(Promote|Keep the champion)\.$"))
            expect(verdict).to_be_visible(timeout=2 * MINUTE)
            margin = page.get_by_role("spinbutton", name=re.compile("^Promote when the challenger"))
            margin.fill("50")
            margin.press("Enter")
            expect(main.get_by_text(re.compile(r"^Promote\.$"))).to_be_visible()
            shot(page, "monitor-compare", doc=True)
            page.get_by_role("button", name="Promote the challenger").click()
            expect(main.get_by_text(re.compile(r"^Promoted: digits@champion names version 2"))).to_be_visible()
            from core.deploy.registry import Registry

            assert Registry(os.path.join(server.workspace, "registry")).alias_version("digits", "champion") == 2
        except Exception:
            shot(page, "deploy-failure")
            raise
        finally:
            browser.close()
