"""How much slower training runs while a browser watches the Train page.

    python benchmarks/bench_watched.py              # the home page's demo run (64 px, 5 epochs on a CPU)
    python benchmarks/bench_watched.py --view home  # the browser shows the Start page meanwhile (or: none)

Starts `streamlit run app.py` on a fresh workspace, opens it in Debian's Chromium (Playwright), presses
"Train a demo model now" and keeps the Train page open until the run ends; then runs the same config
from Python with nothing watching. Reports each run's per-epoch training seconds (the trainer's own
`epoch_seconds`, which leave out setup and the baseline probe). Needs /usr/bin/chromium and playwright.
"""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from core.config import TrainConfig  # noqa: E402
from core.deploy.serving import free_port  # noqa: E402
from core.plan.suggest import quick_start  # noqa: E402
from core.runs.launch import start_run  # noqa: E402
from core.runs.store import RunStore  # noqa: E402
from core.runtime import default_device  # noqa: E402
from core.workspace import Workspace  # noqa: E402


def epoch_seconds(runs_dir: str, run_id: str) -> list[float]:
    return [e["epoch_seconds"] for e in RunStore(runs_dir).metrics(run_id, "epoch") if e["epoch"] >= 1]


def watched(folder: str, view: str = "train") -> tuple[str, list[float]]:
    from playwright.sync_api import expect, sync_playwright

    port = free_port()
    env = {**os.environ, "TRANSFER_STUDIO_WORKSPACE": os.path.join(folder, "workspace")}
    log = open(os.path.join(folder, "streamlit.log"), "w")
    proc = subprocess.Popen([sys.executable, "-m", "streamlit", "run", "app.py", "--server.port", str(port),
                             "--server.headless", "true", "--browser.gatherUsageStats", "false"],
                            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(200):
            try:
                with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as r:
                    if r.read() == b"ok":
                        break
            except OSError:
                time.sleep(0.3)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path="/usr/bin/chromium", headless=True,
                                        args=["--headless", "--no-sandbox", "--disable-gpu",
                                              "--disable-background-networking"])
            page = browser.new_page(viewport={"width": 1400, "height": 1300})
            page.goto(url)
            page.get_by_role("button", name="Train a demo model now").click(timeout=60_000)
            expect(page.get_by_role("heading", name="4 · Train")).to_be_visible(timeout=60_000)
            if view == "train":
                expect(page.get_by_text("The best epoch's model is saved")).to_be_visible(timeout=900_000)
            else:
                if view == "home":  # only the sidebar's 2-second jobs panel polls there
                    page.get_by_test_id("stSidebarNavLink").filter(has_text="Start").click()
                else:  # "none": nobody watches
                    page.close()
                store = RunStore(Workspace(env["TRANSFER_STUDIO_WORKSPACE"]).runs_dir)
                while not store.list_runs() or store.list_runs()[0]["status"] in ("queued", "running"):
                    time.sleep(1)
            browser.close()
    finally:
        proc.terminate()
        proc.wait(10)
        log.close()
    ws = Workspace(os.path.join(folder, "workspace"))
    run_id = RunStore(ws.runs_dir).list_runs()[0]["id"]
    return run_id, epoch_seconds(ws.runs_dir, run_id)


def main() -> int:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--view", choices=("train", "home", "none"), default="train",
                        help="what the browser shows while the run trains: the Train page (default), the Start page "
                             "(only the sidebar polls), or nothing (the tab is closed after the start)")
    args = parser.parse_args()
    folder = tempfile.mkdtemp(prefix="bench-watched-")
    run_id, seen = watched(folder, args.view)
    ws = Workspace(os.path.join(folder, "workspace"))
    config = TrainConfig.from_dict(RunStore(ws.runs_dir).get_run(run_id)["config"])
    summary = start_run(config, "demo", os.path.join(folder, "unwatched"), workspace_dir=ws.root)
    alone = epoch_seconds(os.path.join(folder, "unwatched"), summary["run_id"])
    result = {"view": args.view, "config": {k: v for k, v in quick_start(default_device(), demo=True).items()},
              "watched_epoch_seconds": [round(s, 2) for s in seen],
              "unwatched_epoch_seconds": [round(s, 2) for s in alone],
              "ratio_of_medians": round(statistics.median(seen) / statistics.median(alone), 2)}
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
