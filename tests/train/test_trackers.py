import glob
import os
import time

from core.runs.launch import start_run


def test_wandb_offline_and_tensorboard_listen_without_leaking_the_key(small_digits_dir, tiny_config, tmp_path,
                                                                      monkeypatch):
    secret = "sk-test-0123456789abcdef-not-a-real-key"
    monkeypatch.setenv("WANDB_API_KEY", secret)
    monkeypatch.setenv("WANDB_MODE", "offline")  # a key is configured, but this machine has no network
    monkeypatch.setenv("WANDB_SILENT", "true")
    config = tiny_config.replace(epochs=1, wandb=True, tensorboard=True)
    summary = start_run(config, small_digits_dir, str(tmp_path))
    run_dir = os.path.join(str(tmp_path), summary["run_id"])
    assert glob.glob(os.path.join(run_dir, "tensorboard", "events.out.tfevents.*"))
    assert glob.glob(os.path.join(run_dir, "wandb", "offline-run-*"))
    for path in glob.glob(os.path.join(str(tmp_path), "**", "*"), recursive=True):
        if os.path.isfile(path):
            with open(path, "rb") as f:
                assert secret.encode() not in f.read(), f"the API key leaked into {path}"


def test_an_unreachable_wandb_server_falls_back_to_offline_within_seconds(tmp_path, monkeypatch):
    from core.train.events import Finished, RunStarted
    from core.train.trackers import WandbTracker

    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")  # nothing listens on the discard port
    monkeypatch.setenv("WANDB_API_KEY", "0123456789abcdef0123456789abcdef01234567")
    monkeypatch.setenv("WANDB_MODE", "online")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb-home"))  # wandb's own files stay in the test's folder
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb-config"))
    monkeypatch.setenv("WANDB_CACHE_DIR", str(tmp_path / "wandb-cache"))
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("WANDB_INIT_TIMEOUT", raising=False)
    told = []
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    started = time.perf_counter()
    tracker = WandbTracker("test-project", str(run_dir), notify=told.append, init_timeout=2)
    tracker(RunStarted("run-1", {"lr": 0.1}, {"classes": ["a", "b"]}, "cpu", 1, 1, 1, 0))
    seconds = time.perf_counter() - started
    assert seconds < 20, f"the run's start waited {seconds:.1f} s for W&B"
    [message] = told
    assert "offline" in message and "wandb sync" in message and tracker.problem == message
    assert tracker.run is not None and tracker.run.settings.mode == "offline"
    tracker(Finished("run-1", "completed", {"metrics": {"val_accuracy": 1.0}}))
    assert glob.glob(os.path.join(str(run_dir), "wandb", "offline-run-*-offline"))
