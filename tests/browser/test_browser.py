"""End to end in a real browser: `streamlit run app.py` on a free port with a fresh workspace, driven by
Playwright in headless Debian Chromium: load the demo data, keep the default model, train a short run at a
tiny image size, watch the live chart update and the run finish, open the confusion matrix and click a cell.

Screenshots of every page go to test-output/screenshots/. The README's (docs/screenshots/) come from the newcomer's
journey in test_journey.py: `UPDATE_DOC_SCREENSHOTS=1 python -m pytest tests/browser/test_journey.py` writes them,
palette-compressed.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
import time
import urllib.request

import pytest
from playwright.sync_api import TimeoutError as PlaywrightTimeout
from playwright.sync_api import expect, sync_playwright

from core.deploy.serving import free_port

CHROMIUM = "/usr/bin/chromium"
pytestmark = pytest.mark.skipif(not os.path.exists(CHROMIUM),
                                reason=f"needs Debian's chromium at {CHROMIUM} (apt-get install chromium)")

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SHOTS = os.path.join(ROOT, "test-output", "screenshots")
DOC_SHOTS = os.path.join(ROOT, "docs", "screenshots")
MINUTE = 60_000  # Playwright timeouts are in milliseconds
# A tiny run (E2E_SIZE, E2E_EPOCHS to change it).
SIZE, EPOCHS = int(os.environ.get("E2E_SIZE", "32")), int(os.environ.get("E2E_EPOCHS", "1"))


class Server(str):
    """The dashboard's address; `workspace`: the folder it keeps datasets and runs in."""
    workspace: str


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """The dashboard as a user starts it, on its own workspace; its log is printed if the test fails."""
    folder = tmp_path_factory.mktemp("e2e")
    port = free_port()
    log = open(folder / "streamlit.log", "w+")
    env = {**os.environ, "TRANSFER_STUDIO_WORKSPACE": str(folder / "workspace")}
    proc = subprocess.Popen([sys.executable, "-m", "streamlit", "run", "app.py", "--server.port", str(port),
                             "--server.headless", "true", "--browser.gatherUsageStats", "false"],
                            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = Server(f"http://127.0.0.1:{port}")
    url.workspace = str(folder / "workspace")
    deadline = time.time() + 60
    while True:
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as r:
                if r.read() == b"ok":
                    break
        except OSError:
            pass
        if proc.poll() is not None or time.time() > deadline:
            log.seek(0)
            pytest.fail(f"streamlit did not start:\n{log.read()}")
        time.sleep(0.3)
    yield url
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
    log.seek(0)
    print(log.read()[-5000:])
    log.close()


STARTED = time.time()


def shot(page, name: str, doc: bool = False) -> None:
    print(f"{time.time() - STARTED:6.1f} s  {name}")  # where the time goes, shown with -s or on failure
    try:  # widgets whose code is still loading show as grey skeletons: wait for them
        page.wait_for_function("() => !document.querySelector('[data-testid=\"stSkeleton\"]')", timeout=10_000)
    except PlaywrightTimeout:
        pass
    page.wait_for_timeout(500)
    os.makedirs(SHOTS, exist_ok=True)
    path = os.path.join(SHOTS, f"{name}.png")
    page.screenshot(path=path, full_page=True)
    if doc and os.environ.get("UPDATE_DOC_SCREENSHOTS"):
        from PIL import Image

        os.makedirs(DOC_SHOTS, exist_ok=True)
        image = Image.open(path).convert("RGB")
        image.quantize(colors=128, method=Image.Quantize.MEDIANCUT).save(os.path.join(DOC_SHOTS, f"{name}.png"),
                                                                         optimize=True)


def launch(p):
    """Debian's headless chromium, as the project runs it."""
    return p.chromium.launch(executable_path=CHROMIUM, headless=True,
                             args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"])


def open_browser(p):
    """The browser and one page of the size the screenshots are taken at."""
    browser = launch(p)
    page = browser.new_page(viewport={"width": 1400, "height": 1300})
    page.set_default_timeout(MINUTE)
    return browser, page


def go(page, title: str, heading: str) -> None:
    """Click a page in the sidebar and wait for its title."""
    page.get_by_test_id("stSidebarNavLink").filter(has_text=re.compile(rf"· {re.escape(title)}$|^{re.escape(title)}$")
                                                  ).click()  # "Monitor", not Train's icon "monitoring"
    expect(page.get_by_role("heading", name=re.compile("^" + re.escape(heading)))).to_be_visible(timeout=MINUTE)


def step_of(page) -> int:
    """The step the progress bar shows; past every step once the bar is gone (the run finished)."""
    try:
        text = page.get_by_test_id("stMain").get_by_test_id("stProgress").first.inner_text(timeout=2000)
    except PlaywrightTimeout:
        return 10**9
    match = re.search(r"step (\d+)/", text)
    return int(match.group(1)) if match else 0


def plotted_points(page) -> int:
    """Points drawn in the main area's first plotly chart (the loss curves), read from plotly's own data."""
    return page.evaluate("""() => {
        const plot = document.querySelector('[data-testid="stMain"] .js-plotly-plot');
        return plot && plot._fullData ? plot._fullData.reduce((n, trace) => n + (trace._length || 0), 0) : 0;
    }""")


def test_demo_data_to_a_trained_and_evaluated_model(server):
    expect.set_options(timeout=MINUTE)
    with sync_playwright() as p:
        browser, page = open_browser(p)
        try:
            page.goto(server)
            expect(page.get_by_role("heading", name="Transfer Studio")).to_be_visible()
            expect(page.get_by_test_id("stSidebar")).to_contain_text("Device:")
            shot(page, "demo-start")

            go(page, "Dataset", "2 ·")
            page.get_by_role("button", name="Load the demo dataset").click()
            expect(page.get_by_text("1,797 images, 10 classes")).to_be_visible(timeout=MINUTE)
            shot(page, "demo-dataset")
            page.get_by_text("Examples per class").scroll_into_view_if_needed()
            expect(page.get_by_text("Augmentation preview")).to_be_attached()
            shot(page, "demo-dataset-examples")

            go(page, "Models", "1 ·")  # keep the default model
            expect(page.get_by_text("efficientnet_lite0").first).to_be_visible()
            expect(page.get_by_text("Candidates to try")).to_be_visible()
            shot(page, "demo-models")

            go(page, "Configure", "3 ·")
            expect(page.get_by_text("Before you start")).to_be_visible()
            page.get_by_text(f"{SIZE} px", exact=True).click()  # the image-size buttons
            epochs = page.get_by_label("Epochs", exact=True)
            epochs.fill(str(EPOCHS))
            epochs.press("Enter")
            whole_run = page.get_by_test_id("stMetric").filter(has_text=f"Whole run (≤ {EPOCHS} epoch")
            expect(whole_run).to_be_visible()
            shot(page, "demo-configure")
            page.get_by_text("Before you start").scroll_into_view_if_needed()
            shot(page, "demo-configure-estimate")

            go(page, "Train", "4 ·")
            expect(page.get_by_text(f"image size {SIZE} · {EPOCHS} epoch")).to_be_visible()
            # the first page of a cold server can take minutes on two busy cores (a CI run once waited > 60 s here)
            page.get_by_role("button", name="Start training").click(timeout=3 * MINUTE)
            # live: while the job runs, the progress moves on and the loss chart gains points
            expect(page.get_by_test_id("stMain").get_by_test_id("stProgress")).to_contain_text("step", timeout=MINUTE)
            first_step, first_points = step_of(page), plotted_points(page)
            step, points, deadline = first_step, first_points, time.time() + 60
            while (step <= first_step or points <= first_points) and time.time() < deadline:
                page.wait_for_timeout(300)
                step, points = step_of(page), max(points, plotted_points(page))  # 0 while a chart redraws
            assert step > first_step, "the progress bar did not move"
            assert points > first_points, "the live chart did not update"
            shot(page, "demo-train-live")
            finished = page.get_by_role("heading", name=re.compile(r"completed"))
            expect(finished).to_be_visible(timeout=EPOCHS * 2 * MINUTE)
            expect(page.get_by_text("test accuracy").first).to_be_visible()
            shot(page, "demo-train-done")

            go(page, "Evaluate", "6 ·")
            expect(page.locator(".js-plotly-plot").first).to_be_visible(timeout=MINUTE)
            expect(page.get_by_text("Confusion matrix").first).to_be_attached()
            expect(page.get_by_text("Misclassified images")).to_be_visible()
            shot(page, "demo-evaluate")
            # a click on a cell of the matrix (true 0, predicted 0: top left) shows the images behind it
            shown = page.get_by_text(re.compile(r"^(\d+ images? of 0|No image of 0) classified correctly")).first
            for attempt in range(3):  # a click while the page is still rerunning can be lost: click again
                cells = page.locator(".js-plotly-plot").first.locator(".nsewdrag").first.bounding_box()
                page.mouse.click(cells["x"] + cells["width"] / 20, cells["y"] + cells["height"] / 20)
                try:
                    expect(shown).to_be_visible(timeout=15_000)
                    break
                except AssertionError:
                    if attempt == 2:
                        raise
            shot(page, "evaluate-cell")

            go(page, "Runs", "5 ·")
            expect(page.get_by_text("Compare").first).to_be_visible()
            shot(page, "demo-runs")
        except Exception:
            shot(page, "failure")
            raise
        finally:
            browser.close()


def test_a_link_straight_to_a_page_opens_it_inside_the_app(server):
    """A bookmark of /evaluate: Streamlit runs pages/evaluate.py on its own at first (an old-style page of the
    pages/ folder); the page hands over to app.py, so it gets the app's navigation and sidebar."""
    with sync_playwright() as p:
        browser = launch(p)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        try:
            page.goto(f"{server}/evaluate")
            expect(page.get_by_role("heading", name="6 · Evaluate")).to_be_visible(timeout=MINUTE)
            sidebar = page.get_by_test_id("stSidebar")
            expect(sidebar).to_contain_text("Device:", timeout=MINUTE)
            expect(sidebar.get_by_test_id("stSidebarNavLink").filter(has_text="6 · Evaluate")).to_be_visible()
            links = sidebar.get_by_test_id("stSidebarNavLink").all_inner_texts()
            assert not {"ui", "charts", "app"} & {t.strip() for t in links}, links
        except Exception:
            shot(page, "deep-link-failure")
            raise
        finally:
            browser.close()
