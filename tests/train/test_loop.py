import hashlib
import json
import math

import pytest
import torch

import core.train.loop
from core.runs.launch import load_data, start_run
from core.runs.store import RunStore
from core.train.failures import TrainingFailed
from core.train.loop import stage_frozen_counts


def test_short_run_beats_chance_clearly_and_records_the_baseline(digits_dir, tiny_config, tmp_path):
    config = tiny_config.replace(epochs=3, head_init="random")
    summary = start_run(config, digits_dir, str(tmp_path))
    assert summary["status"] == "completed"
    # 10 balanced classes: chance is 0.10
    assert summary["metrics"]["val_accuracy"] > 0.5
    assert summary["metrics"]["test_accuracy"] > 0.5
    assert summary["baseline"]["val_accuracy"] > 0.3  # the frozen linear probe is recorded too
    run = RunStore(str(tmp_path)).get_run(summary["run_id"])
    assert run["status"] == "completed" and run["best_checkpoint"] == summary["best_checkpoint"]
    epochs = RunStore(str(tmp_path)).metrics(summary["run_id"], "epoch")
    assert [e["epoch"] for e in epochs] == [0, 1, 2, 3]  # epoch 0: the probe-initialised starting point
    for key in ("train_loss", "train_accuracy", "val_loss", "val_accuracy", "val_macro_precision",
                "val_macro_recall", "val_macro_f1", "lr_head"):
        assert key in epochs[-1]
    assert epochs[-1]["lr_head"] < epochs[1]["lr_head"]  # the cosine schedule decayed
    meta = json.load(open(summary["best_checkpoint"].replace(".safetensors", ".json")))
    assert meta["classes"] == [str(i) for i in range(10)]
    assert meta["preprocess"]["input_size"] == 32 and meta["preprocess"]["mean"] == [0.5, 0.5, 0.5]


def _script_val_losses(monkeypatch, losses):
    """Make validation report the given losses, epoch by epoch: the control flow under test is the
    trainer's (early stopping, stage reverts), not how a real model's loss happens to move."""
    original = core.train.loop.Trainer._validate
    calls = iter(losses)

    def scripted(self):
        metrics = original(self)
        metrics["val_loss"] = next(calls, metrics["val_loss"])
        return metrics

    monkeypatch.setattr(core.train.loop.Trainer, "_validate", scripted)


def test_early_stopping_stops_when_validation_stops_improving(small_digits_dir, tiny_config, tmp_path,
                                                             monkeypatch):
    _script_val_losses(monkeypatch, [1.0, 0.95, 0.9, 0.93, 0.92, 0.8, 0.7])  # from epoch 0
    config = tiny_config.replace(epochs=8, early_stopping_patience=2, monitor="val_loss")
    summary = start_run(config, small_digits_dir, str(tmp_path))
    assert summary["status"] == "early_stopped"
    assert summary["epochs_run"] == 4 and summary["best_epoch"] == 2


def test_the_best_checkpoint_follows_the_monitored_metric_not_the_smoothed_loss(small_digits_dir, tiny_config,
                                                                                 tmp_path, monkeypatch):
    # label smoothing keeps a fine-tuned model's val loss above the probe's even when it classifies better:
    # epoch 0 (the probe) has the lowest loss, epochs 1-2 a better macro-F1; epoch 3 ties epoch 2's F1 at a
    # lower loss (a tie goes to the lower loss)
    scripted = iter([(0.30, 0.90), (0.40, 0.93), (0.38, 0.95), (0.35, 0.95)])
    original = core.train.loop.Trainer._validate

    def validate(self):
        metrics = original(self)
        loss, f1 = next(scripted, (metrics["val_loss"], metrics["val_macro_f1"]))
        return {**metrics, "val_loss": loss, "val_macro_f1": f1}

    monkeypatch.setattr(core.train.loop.Trainer, "_validate", validate)
    summary = start_run(tiny_config.replace(epochs=3), small_digits_dir, str(tmp_path))
    assert summary["best_epoch"] == 3
    monkeypatch.setattr(core.train.loop.Trainer, "_validate", validate)
    scripted = iter([(0.30, 0.90), (0.40, 0.93), (0.38, 0.95), (0.35, 0.95)])
    assert start_run(tiny_config.replace(epochs=3, monitor="val_loss"), small_digits_dir,
                     str(tmp_path))["best_epoch"] == 0


def test_monitor_scores_compare_the_metric_first_and_the_loss_on_ties():
    from core.train.scores import better, monitor_score

    a = monitor_score({"val_loss": 0.5, "val_accuracy": 0.9}, "val_accuracy")
    assert better(a, []) and not better(a, a)
    assert better(monitor_score({"val_loss": 0.9, "val_accuracy": 0.91}, "val_accuracy"), a)
    assert better(monitor_score({"val_loss": 0.4, "val_accuracy": 0.9}, "val_accuracy"), a)
    assert not better(monitor_score({"val_loss": 0.1, "val_accuracy": 0.89}, "val_accuracy"), a)
    assert better(monitor_score({"val_loss": 0.4}, "val_loss"), monitor_score({"val_loss": 0.5}, "val_loss"))


class _NaNAfter(torch.nn.Module):
    """Cross-entropy that turns NaN after `good` calls, as a diverging run would."""

    def __init__(self, good: int):
        super().__init__()
        self.calls, self.good = 0, good

    def forward(self, logits, target):
        self.calls += 1
        loss = torch.nn.functional.cross_entropy(logits, target)
        return loss * math.nan if self.calls > self.good else loss


def test_nan_loss_fails_clearly_and_keeps_the_best_checkpoint(small_digits_dir, tiny_config, tmp_path,
                                                             monkeypatch):
    data = load_data(small_digits_dir, tiny_config, str(tmp_path))
    steps_per_epoch = len(data.train) // tiny_config.batch_size
    monkeypatch.setattr(core.train.loop, "make_loss", lambda *a, **k: _NaNAfter(steps_per_epoch + 2))
    best_hash = {}
    original = core.train.loop.save_model

    def recording_save(model, path, meta):
        out = original(model, path, meta)
        best_hash[path] = hashlib.sha256(open(path, "rb").read()).hexdigest()
        return out

    monkeypatch.setattr(core.train.loop, "save_model", recording_save)
    with pytest.raises(TrainingFailed, match="loss became nan.*best checkpoint was kept"):
        start_run(tiny_config.replace(epochs=3), data, str(tmp_path))
    run = RunStore(str(tmp_path)).list_runs()[0]
    assert run["status"] == "failed" and "nan" in run["error"]
    best = next(p for p in best_hash if p.endswith("best.safetensors"))  # saved at epoch 0 (and 1, if better),
    # untouched by the failure in epoch 2
    assert hashlib.sha256(open(best, "rb").read()).hexdigest() == best_hash[best]


def test_stage_plan_unfreezes_equal_shares():
    assert stage_frozen_counts(12, 0) == [12]
    assert stage_frozen_counts(12, 3) == [12, 8, 4, 0]
    assert stage_frozen_counts(10, 3) == [10, 6, 2, 0]


def test_progressive_unfreezing_runs_stages_and_reverts_a_stage_that_hurts(small_digits_dir, tiny_config,
                                                                         tmp_path, monkeypatch):
    events = []
    config = tiny_config.replace(epochs=1, unfreeze_stages=3, stage_epochs=1, monitor="val_loss")
    # start 1.2, stage 0 ends at 1.0, stage 1 improves to 0.8, stage 2 gets worse (0.9): reverted, and
    # stage 3 never runs
    _script_val_losses(monkeypatch, [1.2, 1.0, 0.8, 0.9])
    summary = start_run(config, small_digits_dir, str(tmp_path), listeners=[events.append])
    stages = [(e.stage, e.frozen_groups, e.reverted) for e in events if type(e).__name__ == "StageChanged"]
    initial = next(e for e in events if type(e).__name__ == "RunStarted").frozen_groups
    counts = core.train.loop.stage_frozen_counts(initial, 3)
    assert stages == [(1, counts[1], False), (2, counts[2], False), (2, counts[1], True)]
    assert summary["status"] == "completed" and summary["epochs_run"] == 3 and summary["best_epoch"] == 2


def test_a_run_records_its_split_manifest_and_can_train_from_one(small_digits_dir, tiny_config, tmp_path):
    from core.data.splits import read_manifest

    first = start_run(tiny_config.replace(epochs=1), small_digits_dir, str(tmp_path))
    store = RunStore(str(tmp_path))
    run = store.get_run(first["run_id"])
    manifest_path = tmp_path / first["run_id"] / "manifest.json"
    manifest = read_manifest(str(manifest_path))
    assert run["dataset_id"] == manifest.dataset_id != ""
    assert run["data"]["train"] == len(manifest.rows_for("train"))
    # the same manifest file drives a second run: same dataset version, same split
    second = start_run(tiny_config.replace(epochs=1), str(manifest_path), str(tmp_path / "again"))
    again = RunStore(str(tmp_path / "again")).get_run(second["run_id"])
    assert again["dataset_id"] == manifest.dataset_id
    assert read_manifest(str(tmp_path / "again" / second["run_id"] / "manifest.json")).rows == manifest.rows
