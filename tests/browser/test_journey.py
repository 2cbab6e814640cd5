"""A newcomer's journey in a real browser, with their own zip (not the demo button): upload it, compare the
backbones on it, configure, train, reload the page in the middle of training and find the run again, build the
full report, and check that the figures the dashboard measured while it was open (bake-off latency, report
latency, test accuracy) agree with the CLI's on the same data and run.

The README's screenshots come from this walk: `UPDATE_DOC_SCREENSHOTS=1 python -m pytest tests/browser/test_journey.py`.
Shares the server fixture and helpers of test_browser.py (Debian chromium, a fresh workspace).
"""
from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
import zipfile

import pytest
from PIL import Image, ImageDraw
from playwright.sync_api import expect, sync_playwright
from test_browser import CHROMIUM, MINUTE, ROOT, go, open_browser, server, shot, step_of  # noqa: F401 (server: a fixture)

from core.evaluate.latency import CONTENDED_CORES

pytestmark = pytest.mark.skipif(not os.path.exists(CHROMIUM), reason=f"needs Debian's chromium at {CHROMIUM}")
SHAPES = ("circle", "square", "triangle")


def shapes_zip(path: str, per_class: int = 50, size: int = 64) -> str:
    """A user's own little dataset: thin outlined shapes of random size, place and colour on noisy backgrounds
    crossed by random strokes, so that neither the probe nor fine-tuning gets every image right."""
    import numpy as np

    rng = np.random.default_rng(7)
    with zipfile.ZipFile(path, "w") as zf:
        for label in SHAPES:
            for i in range(per_class):
                background = rng.integers(110, 255, size=3)
                pixels = np.clip(rng.normal(background, 30, (size, size, 3)), 0, 255).astype("uint8")
                image = Image.fromarray(pixels)
                draw = ImageDraw.Draw(image)
                for _ in range(3):  # clutter
                    points = [tuple(int(v) for v in rng.integers(0, size, size=2)) for _ in range(2)]
                    draw.line(points, fill=tuple(int(v) for v in rng.integers(40, 200, size=3)), width=1)
                r = int(rng.integers(5, 14))
                cx, cy = (int(v) for v in rng.integers(r + 2, size - r - 2, size=2))
                colour = tuple(int(v) for v in rng.integers(20, 140, size=3))
                box = (cx - r, cy - r, cx + r, cy + r)
                if label == "circle":
                    draw.ellipse(box, outline=colour, width=1)
                elif label == "square":
                    draw.rectangle(box, outline=colour, width=1)
                else:
                    draw.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], outline=colour, width=1)
                buf = io.BytesIO()
                image.save(buf, "PNG")
                zf.writestr(f"shapes/{label}/{label}_{i:02d}.png", buf.getvalue())
    return path


def ms_per_image(text: str) -> float:
    match = re.search(r"([\d.,]+) ms", text)
    assert match, text
    return float(match.group(1).replace(",", ""))


def test_a_newcomer_with_their_own_zip(server, tmp_path):
    archive = shapes_zip(str(tmp_path / "shapes.zip"))
    expect.set_options(timeout=MINUTE)
    with sync_playwright() as p:
        browser, page = open_browser(p)
        try:
            page.goto(server)
            expect(page.get_by_role("heading", name="Transfer Studio")).to_be_visible()
            shot(page, "start", doc=True)
            go(page, "Dataset", "2 ·")
            page.get_by_role("tab", name="Upload an archive").click()
            page.locator("[data-testid='stFileUploaderDropzoneInput']").first.set_input_files(archive)
            page.get_by_role("button", name="Ingest the archive").click()
            expect(page.get_by_text(re.compile(r"150 images, 3 classes"))).to_be_visible(timeout=2 * MINUTE)
            shot(page, "dataset", doc=True)
            page.get_by_text("Examples per class").scroll_into_view_if_needed()
            shot(page, "dataset-examples", doc=True)

            # the bake-off on the user's data, with the page open and polling
            go(page, "Models", "1 ·")
            page.get_by_role("button", name="Run the bake-off").click()
            recommended = page.get_by_text(re.compile(r"^Recommended: "))
            expect(recommended).to_be_visible(timeout=4 * MINUTE)
            said = page.get_by_test_id("stAlertContentSuccess").filter(has_text="Recommended").first.inner_text()
            said = said.replace("\u2060", "")  # the invisible joiners ui.md_escape puts before "." and ":"
            name = re.search(r"Recommended: (\S+?)\.", said).group(1)
            watched_ms = float(re.search(re.escape(name) + r" \(.*?([\d.]+) ms/image", said).group(1))
            size = re.search(r"at (\d+) px", page.get_by_text(re.compile(r"validation images at \d+ px")).first
                             .inner_text().replace("\u2060", ""))
            conditions = page.locator("p", has_text="Latency and memory:").last.inner_text().replace("\u2060", "")
            # the page's choices survive its polling: the result is for the candidates still picked
            expect(page.get_by_text("for an earlier choice")).to_have_count(0)
            expect(page.get_by_test_id("stMultiSelect").locator("[data-tag]")).to_have_count(3)
            shot(page, "models", doc=True)

            go(page, "Configure", "3 ·")
            page.get_by_text("64 px", exact=True).click()  # long enough to reload in the middle
            epochs = page.get_by_label("Epochs", exact=True)
            epochs.fill("10")
            epochs.press("Enter")
            expect(page.get_by_test_id("stMetric").filter(has_text="Whole run (≤ 10 epoch")).to_be_visible()
            shot(page, "configure", doc=True)
            page.get_by_text("Before you start").scroll_into_view_if_needed()
            shot(page, "configure-estimate", doc=True)

            go(page, "Train", "4 ·")
            page.get_by_role("button", name="Start training").click()
            expect(page.get_by_test_id("stMain").get_by_test_id("stProgress")).to_contain_text("step",
                                                                                               timeout=MINUTE)
            # a reload in the middle of training: the page finds the run and its dataset again
            page.reload()
            expect(page.get_by_role("heading", name=re.compile("^4 ·"))).to_be_visible()
            expect(page.get_by_text("No dataset yet")).to_have_count(0)
            expect(page.get_by_test_id("stSidebar")).to_contain_text("shapes")
            finished = page.get_by_role("heading", name=re.compile(r"completed|early stopped"))
            progress = page.get_by_test_id("stMain").get_by_test_id("stProgress")
            expect(progress.or_(finished).first).to_be_visible(timeout=MINUTE)
            shot(page, "train-live", doc=True)
            expect(finished).to_be_visible(timeout=6 * MINUTE)
            run_id = re.search(r"[?&]run=([\w-]+)", page.url).group(1)
            tile = page.get_by_test_id("stMetric").filter(has_text="test accuracy").first
            train_accuracy = tile.get_by_test_id("stMetricValue").inner_text()
            shot(page, "train-done", doc=True)

            # the report, built with the page open: its test accuracy is the Train page's, its latency the CLI's
            go(page, "Evaluate", "6 ·")
            tile = page.get_by_test_id("stMetric").filter(has_text="test accuracy").first
            expect(tile.get_by_test_id("stMetricValue")).to_have_text(train_accuracy)
            shot(page, "evaluate", doc=True)
            page.get_by_role("tab", name="Full report").click()
            page.get_by_role("button", name="Build the full report").click()
            expect(page.get_by_text("Deployment, measured on this machine")).to_be_visible(timeout=5 * MINUTE)
            report_ms = ms_per_image(page.get_by_test_id("stMetric").filter(has_text="latency per image")
                                     .get_by_test_id("stMetricValue").inner_text())
            report_conditions = page.locator("p", has_text="Latency and memory:").last.inner_text().replace("\u2060", "")
            page.get_by_text("Deployment, measured on this machine").scroll_into_view_if_needed()
            shot(page, "evaluate-report", doc=True)

            go(page, "Runs", "5 ·")
            expect(page.get_by_text(run_id).first).to_be_attached()
            shot(page, "runs", doc=True)
        except Exception:
            shot(page, "journey-failure")
            raise
        finally:
            browser.close()

    # the same bake-off from the command line, nothing watching: the figure the page showed must agree
    args = ["bakeoff", archive, "--models", "efficientnet_lite0,efficientnet_lite1,efficientnet_lite2",
            "--workspace", str(tmp_path / "cli")]
    if size:
        args += ["--image-size", size.group(1)]

    def cli_bakeoff() -> tuple[float, str]:
        out = subprocess.run([sys.executable, "-m", "core", *args], cwd=ROOT, capture_output=True, text=True,
                             timeout=600)
        assert out.returncode == 0, out.stderr[-2000:]
        cli = {c["name"]: c for c in json.loads(out.stdout.strip().splitlines()[-1])["candidates"]}
        return cli[name]["latency_ms_batch1"], cli[name].get("latency_conditions", "")
    agrees(watched_ms, conditions, f"bake-off, {name}", cli_bakeoff)

    # the same run's report from the command line: the same accuracy, and the latency within 30%
    def cli_report() -> tuple[float, str]:
        out = subprocess.run([sys.executable, "-m", "core", "evaluate", run_id, "--runs-dir",
                              os.path.join(server.workspace, "runs"), "--no-baselines", "--corruptions", "none",
                              "--no-report"], cwd=ROOT, capture_output=True, text=True, timeout=600)
        assert out.returncode == 0, out.stderr[-2000:]
        cli = json.loads(out.stdout.strip().splitlines()[-1])
        assert f"{cli['evaluation']['metrics']['accuracy']:.1%}" == train_accuracy
        latency = cli["deployment"]["latency"]
        return latency["latency_ms_batch1"], ("something competed" if (latency.get("others_cpu") or 0)
                                               >= CONTENDED_CORES else "quiet")
    agrees(report_ms, report_conditions, "report", cli_report)


def agrees(page_ms: float, conditions: str, what: str, measure, tries: int = 3) -> None:
    """A latency the page measured against the CLI's (`measure()` -> ms, conditions) on the same model: within 30%
    of one of up to `tries` CLI timings (a VM's timings at batch 1 vary between runs by up to 2x even when nothing
    else runs: 8.1 vs 16.0 ms seen in CI; a figure the page measured wrongly, as under Streamlit's default GC, was
    off by hundreds of times). Not compared when the page said that something competed while it timed, in
    which case it must call its figure pessimistic, nor against a CLI timing that was itself competed with."""
    if "something competed" in conditions:
        assert "pessimistic" in conditions, conditions
        return
    seen = []
    for _ in range(tries):
        cli_ms, cli_conditions = measure()
        seen.append((round(cli_ms, 2), cli_conditions))
        if "something competed" not in cli_conditions and 0.7 <= page_ms / cli_ms <= 1.3:
            return
    quiet = [ms for ms, c in seen if "something competed" not in c]
    assert not quiet, f"{what}: {page_ms} ms/image on the page ({conditions}), the CLI's: {seen}"
    print(f"{what}: every CLI timing was competed with ({seen}); not compared")
