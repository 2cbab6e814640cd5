"""core.model.checkpoint: damaged files are typed errors with the file's name; a full disk fails the run plainly."""
import json
import os
import subprocess
import sys

import pytest

import core.files
from core.model.checkpoint import CheckpointError, load_model, load_train_state
from core.runs.launch import start_run
from core.runs.store import RunStore
from core.train.failures import TrainingFailed

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def trained(small_digits_dir, tmp_path_factory):
    from core.config import AugmentSpec, TrainConfig

    runs = str(tmp_path_factory.mktemp("runs"))
    config = TrainConfig(image_size=32, epochs=1, batch_size=32, augment=AugmentSpec(hflip=False),
                         early_stopping_patience=0, group_by="names", crossval_folds=0)
    return runs, start_run(config, small_digits_dir, runs)


def test_a_truncated_checkpoint_is_a_clear_error_in_python_and_the_cli(trained, tmp_path):
    runs, summary = trained
    best = summary["best_checkpoint"]
    good = open(best, "rb").read()
    try:
        with open(best, "wb") as f:
            f.write(good[: len(good) // 3])
        with pytest.raises(CheckpointError, match="damaged or truncated"):
            load_model(best)
        out = subprocess.run([sys.executable, "-m", "core", "evaluate", summary["run_id"], "--runs-dir", runs,
                              "--no-baselines", "--corruptions", "none", "--no-latency", "--no-report"],
                             cwd=ROOT, capture_output=True, text=True, timeout=300)
        assert out.returncode == 2, out.stderr[-2000:]
        assert "Traceback" not in out.stderr and "damaged or truncated" in out.stderr
        assert json.loads(out.stdout.strip().splitlines()[-1])["status"] == "error"
    finally:
        with open(best, "wb") as f:
            f.write(good)
    state = os.path.join(os.path.dirname(best), "last_state.pt")
    broken = tmp_path / "last_state.pt"
    broken.write_bytes(open(state, "rb").read()[:1000])
    with pytest.raises(CheckpointError, match="cannot resume from it"):
        load_train_state(str(broken))


def test_a_full_disk_fails_the_run_with_where_and_how_much(small_digits_dir, tiny_config, tmp_path, monkeypatch):
    real = core.files.free_bytes  # the data is stored first; the disk "fills up" for checkpoints
    monkeypatch.setattr(core.files, "free_bytes", lambda folder: 1024 if "checkpoints" in folder else real(folder))
    with pytest.raises(TrainingFailed, match=r"disk full in .*checkpoints \(free 1\.0 KB, need .*\)"):
        start_run(tiny_config, small_digits_dir, str(tmp_path))
    (run,) = RunStore(str(tmp_path)).list_runs()
    assert run["status"] == "failed" and run["error"].startswith("disk full in")
    ckpt = os.path.join(str(tmp_path), run["id"], "checkpoints")
    assert not [n for n in os.listdir(ckpt) if n.startswith(".tmp-")] if os.path.isdir(ckpt) else True
