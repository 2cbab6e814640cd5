"""Out of memory: refused before training when the estimate does not fit; during training, the epoch is
retried in micro-batches that keep the effective batch; below the minimum, the run fails with advice."""
import pytest
import torch

import core.train.loop
from core.train.events import Note
from core.runs.launch import start_run
from core.runs.store import RunStore
from core.train.failures import TrainingFailed
from core.train.memory import MIN_MICRO_BATCH, check_memory, is_out_of_memory, micro_batches


def _oom_above(monkeypatch, limit: int, message: str = "CUDA out of memory. Tried to allocate 2.00 GiB"):
    """The training forward raises the allocator's error for batches above `limit` images."""
    original = core.train.loop._maybe_compile

    def compile_(model, *args):
        forward = original(model, *args)

        def guarded(x):
            if x.shape[0] > limit:
                raise torch.OutOfMemoryError(message)
            return forward(x)
        return guarded

    monkeypatch.setattr(core.train.loop, "_maybe_compile", compile_)


def test_micro_batches_cover_the_batch_once():
    for n, k in ((16, 1), (16, 2), (17, 4), (3, 8)):
        parts = micro_batches(n, k)
        assert [i for p in parts for i in range(n)[p]] == list(range(n))
    assert is_out_of_memory(torch.OutOfMemoryError("x"))
    assert is_out_of_memory(RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 1"))
    assert is_out_of_memory(RuntimeError("MPS backend out of memory (MPS allocated: 1 GB)"))
    assert not is_out_of_memory(RuntimeError("shape mismatch"))


def test_out_of_memory_in_training_retries_with_half_the_batch_and_says_so(small_digits_dir, tiny_config, tmp_path,
                                                                          monkeypatch):
    _oom_above(monkeypatch, 8)  # batches of 32 do not fit; micro-batches of 8 do
    notes = []
    summary = start_run(tiny_config.replace(epochs=2), small_digits_dir, str(tmp_path),
                        [lambda e: notes.append(e.message) if isinstance(e, Note) else None])
    assert summary["status"] == "completed" and summary["epochs_run"] == 2
    oom = [n for n in notes if "out of memory" in n]
    assert len(oom) == 2  # 32 -> 2 x 16 (still too large) -> 4 x 8
    assert "micro-batches of 16 images, 2 per step" in oom[0] and "micro-batches of 8 images, 4 per step" in oom[1]
    assert all("effective batch stays 32" in n for n in oom)
    stored = RunStore(str(tmp_path)).metrics(summary["run_id"], "note")
    assert any("micro-batches of 8" in row["message"] for row in stored)  # in the run's record too
    epochs = RunStore(str(tmp_path)).metrics(summary["run_id"], "epoch")
    assert [e["epoch"] for e in epochs] == [0, 1, 2]  # the failed attempt logged no epoch


def test_out_of_memory_below_the_minimum_batch_fails_with_advice(small_digits_dir, tiny_config, tmp_path, monkeypatch):
    _oom_above(monkeypatch, MIN_MICRO_BATCH - 1)
    with pytest.raises(TrainingFailed, match=r"out of memory on .* even in micro-batches of 2 images.*lower batch_size"):
        start_run(tiny_config, small_digits_dir, str(tmp_path))
    (run,) = RunStore(str(tmp_path)).list_runs()
    assert run["status"] == "failed" and "To fit" in run["error"]


def test_a_configuration_that_cannot_fit_is_refused_before_training(small_digits_dir, tiny_config, tmp_path,
                                                                   monkeypatch):
    monkeypatch.setattr(core.train.memory, "free_memory", lambda device: 50 * 2**20)  # 50 MB free
    with pytest.raises(TrainingFailed, match=r"needs about .* and 50\.0 MB is free") as info:
        start_run(tiny_config.replace(image_size=224, batch_size=256, freeze_ratio=0.0), small_digits_dir,
                  str(tmp_path))
    assert "batch_size=" in str(info.value) or "even a batch of 2" in str(info.value)
    (run,) = RunStore(str(tmp_path)).list_runs()
    assert run["status"] == "failed"
    assert RunStore(str(tmp_path)).metrics(run["id"], "baseline") == []  # refused before the probe was fitted


def test_the_estimate_names_a_batch_that_fits():
    from core.model.backbones import load_backbone
    from core.config import TrainConfig
    from core.model.transfer import TransferModel

    backbone = load_backbone("efficientnet_lite0", pretrained=False)
    model = TransferModel(backbone, 3, 0, 0, 0.0)
    model.freeze_ratio(0.0)
    config = TrainConfig(batch_size=512, image_size=64)
    pre = backbone.preprocess.with_input_size(64)
    check_memory(model, config, torch.device("cpu"), pre, free=64 * 2**30)  # fits in 64 GB: no error
    with pytest.raises(TrainingFailed, match=r"a batch of (\d+) fits \(set batch_size=\1\)"):
        check_memory(model, config, torch.device("cpu"), pre, free=200 * 2**20)
