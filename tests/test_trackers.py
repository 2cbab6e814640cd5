import glob
import os

from core.runs import start_run


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
