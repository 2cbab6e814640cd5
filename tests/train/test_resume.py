"""A run killed with SIGKILL, at any point of any epoch, resumes to bit-identical weights; one trainer per run."""
import json
import os
import signal
import subprocess
import sys
import textwrap

import pytest
import torch
from safetensors.torch import load_file

from core.runs.store import RunStore

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SETTINGS = ["epochs=3", "image_size=32", "batch_size=16", "early_stopping_patience=0", "augment.hflip=false",
            "crossval_folds=0", 'group_by="names"']

# Trains like `python -m core train`, and kills itself with SIGKILL (no clean-up of any kind) from inside the
# trainer's own thread at an exact point: the given batch of the given fine-tuning epoch (1 = the first).
KILLER = textwrap.dedent("""
    import os, signal, sys
    from core.config import TrainConfig
    from core.train.events import BatchEnd
    from core.runs.launch import start_run
    data, runs_dir, epoch, batch, *settings = sys.argv[1:]
    def kill(event):
        if isinstance(event, BatchEnd) and event.epoch == int(epoch) - 1 and event.batch == int(batch):
            os.kill(os.getpid(), signal.SIGKILL)
    start_run(TrainConfig().with_overrides(settings).validate(), data, runs_dir, [kill])
""")


def _cli(*args: str) -> dict:
    out = subprocess.run([sys.executable, "-m", "core", *args], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def straight(small_digits_dir, tmp_path_factory):
    """The same run, uninterrupted."""
    runs = str(tmp_path_factory.mktemp("straight"))
    return _cli("train", small_digits_dir, "--runs-dir", runs, "--set", *SETTINGS)


@pytest.mark.parametrize("epoch,batch", [(1, 4), (3, 2)], ids=["in-the-first-fine-tuning-epoch", "in-a-later-epoch"])
def test_a_run_killed_anywhere_resumes_to_the_same_weights(straight, small_digits_dir, tmp_path, epoch, batch):
    runs = str(tmp_path / "runs")
    killed = subprocess.run([sys.executable, "-c", KILLER, small_digits_dir, runs, str(epoch), str(batch), *SETTINGS],
                            cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    store = RunStore(runs)
    (run,) = store.list_runs()
    assert run["status"] == "running"  # it never got to say otherwise
    assert [e["epoch"] for e in store.metrics(run["id"], "epoch")] == list(range(epoch))  # killed mid-epoch
    listed = subprocess.run([sys.executable, "-m", "core", "runs", "--runs-dir", runs], cwd=ROOT, capture_output=True,
                            text=True, timeout=60)
    assert "interrupted" in listed.stdout and "running" not in listed.stdout  # its trainer is gone

    resumed = _cli("train", "--resume", run["id"], "--runs-dir", runs)
    assert resumed["run_id"] == run["id"] and resumed["status"] == "completed" and resumed["epochs_run"] == 3
    assert [e["epoch"] for e in store.metrics(run["id"], "epoch")] == [0, 1, 2, 3]
    steps = [m["step"] for m in store.metrics(run["id"], "step")]
    assert steps == sorted(set(steps)), "steps after the checkpoint were logged twice"
    for name in ("last_state.pt", "best.safetensors", "best_tuned.safetensors"):
        a_path = os.path.join(os.path.dirname(straight["best_checkpoint"]), name)
        b_path = os.path.join(os.path.dirname(resumed["best_checkpoint"]), name)
        if name.endswith(".pt"):
            a, b = (torch.load(p, weights_only=True)["model"] for p in (a_path, b_path))
        else:
            a, b = load_file(a_path), load_file(b_path)
        assert a.keys() == b.keys()
        for k in a:
            assert torch.equal(a[k], b[k]), f"{name}: {k} differs from the uninterrupted run"
    assert resumed["metrics"] == straight["metrics"]
