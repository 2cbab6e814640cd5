import hashlib
import json
import math

import pytest
import torch

import core.train
from core.runs import load_data, start_run
from core.store import RunStore
from core.train import TrainingFailed, stage_frozen_counts


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
    assert [e["epoch"] for e in epochs] == [1, 2, 3]
    for key in ("train_loss", "train_accuracy", "val_loss", "val_accuracy", "val_macro_precision",
                "val_macro_recall", "val_macro_f1", "lr_head"):
        assert key in epochs[-1]
    assert epochs[-1]["lr_head"] < epochs[0]["lr_head"]  # the cosine schedule decayed
    meta = json.load(open(summary["best_checkpoint"].replace(".safetensors", ".json")))
    assert meta["classes"] == [str(i) for i in range(10)]
    assert meta["preprocess"]["input_size"] == 32 and meta["preprocess"]["mean"] == [0.5, 0.5, 0.5]


def test_early_stopping_stops_when_validation_stops_improving(small_digits_dir, tiny_config, tmp_path):
    # lr=0 leaves the head where the probe put it: validation never improves after the first epoch
    config = tiny_config.replace(epochs=8, lr=1e-8, early_stopping_patience=2)
    summary = start_run(config, small_digits_dir, str(tmp_path))
    assert summary["status"] == "early_stopped"
    assert summary["epochs_run"] == 3 and summary["best_epoch"] == 1


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
    data = load_data(small_digits_dir, tiny_config)
    steps_per_epoch = len(data.train) // tiny_config.batch_size
    monkeypatch.setattr(core.train, "make_loss", lambda *a, **k: _NaNAfter(steps_per_epoch + 2))
    best_hash = {}
    original = core.train.save_model

    def recording_save(model, path, meta):
        out = original(model, path, meta)
        best_hash[path] = hashlib.sha256(open(path, "rb").read()).hexdigest()
        return out

    monkeypatch.setattr(core.train, "save_model", recording_save)
    with pytest.raises(TrainingFailed, match="loss became nan.*best checkpoint was kept"):
        start_run(tiny_config.replace(epochs=3), data, str(tmp_path))
    run = RunStore(str(tmp_path)).list_runs()[0]
    assert run["status"] == "failed" and "nan" in run["error"]
    (path, digest), = best_hash.items()  # saved once, after epoch 1, and never overwritten
    assert hashlib.sha256(open(path, "rb").read()).hexdigest() == digest


def test_stage_plan_unfreezes_equal_shares():
    assert stage_frozen_counts(12, 0) == [12]
    assert stage_frozen_counts(12, 3) == [12, 8, 4, 0]
    assert stage_frozen_counts(10, 3) == [10, 6, 2, 0]


def test_progressive_unfreezing_runs_stages_and_reverts_a_stage_that_hurts(small_digits_dir, tiny_config,
                                                                         tmp_path):
    events = []
    config = tiny_config.replace(epochs=1, unfreeze_stages=2, stage_epochs=1, lr=1e-8)
    summary = start_run(config, small_digits_dir, str(tmp_path), listeners=[events.append])
    stages = [e for e in events if type(e).__name__ == "StageChanged"]
    # lr ~ 0 means stage 1 cannot improve validation: it is entered, then reverted, and stage 2 never runs
    assert [(s.stage, s.reverted) for s in stages] == [(1, False), (1, True)]
    assert summary["status"] == "completed" and summary["epochs_run"] == 2
