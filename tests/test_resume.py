"""A run killed with SIGKILL resumes from its last checkpoint and ends where an uninterrupted run ends."""
import json
import os
import signal
import subprocess
import sys
import time

import torch
from safetensors.torch import load_file

from core.store import RunStore

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SETTINGS = ["epochs=3", "image_size=32", "batch_size=16", "early_stopping_patience=0", "augment.hflip=false"]


def _cli(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "core", *args], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)


def _last_json(proc: subprocess.Popen) -> dict:
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out
    return json.loads(out.strip().splitlines()[-1])


def test_killed_run_resumes_and_matches_an_uninterrupted_one(small_digits_dir, tmp_path):
    straight = _last_json(_cli("train", small_digits_dir, "--runs-dir", str(tmp_path / "a"), "--set", *SETTINGS))
    for key in ("run_id", "status", "best_checkpoint", "metrics", "baseline"):
        assert key in straight
    for key in ("val_accuracy", "val_macro_f1", "test_accuracy", "test_macro_f1"):
        assert key in straight["metrics"]

    runs_b = str(tmp_path / "b")
    proc = _cli("train", small_digits_dir, "--runs-dir", runs_b, "--set", *SETTINGS)
    deadline = time.time() + 240
    store = None
    while time.time() < deadline:  # wait for the first epoch's checkpoint, then kill without warning
        if os.path.exists(os.path.join(runs_b, "runs.db")):
            store = store or RunStore(runs_b)
            runs = store.list_runs()
            if runs and len(store.metrics(runs[0]["id"], "epoch")) >= 2:  # epoch 0 and epoch 1
                break
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    run_id = store.list_runs()[0]["id"]
    assert store.get_run(run_id)["status"] == "running"  # it never got to say otherwise
    epochs_before = len(store.metrics(run_id, "epoch"))
    assert 2 <= epochs_before < 4, "the kill came too late to test a resume"

    resumed = _last_json(_cli("train", "--resume", run_id, "--runs-dir", runs_b))
    assert resumed["run_id"] == run_id and resumed["status"] == "completed" and resumed["epochs_run"] == 3
    assert [e["epoch"] for e in store.metrics(run_id, "epoch")] == [0, 1, 2, 3]
    steps = [m["step"] for m in store.metrics(run_id, "step")]
    assert steps == sorted(set(steps)), "steps after the checkpoint were logged twice"
    a, b = load_file(straight["best_checkpoint"]), load_file(resumed["best_checkpoint"])
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k].float(), b[k].float(), atol=1e-5), k
    assert resumed["metrics"]["val_accuracy"] == straight["metrics"]["val_accuracy"]
