import torch

from core.train.batches import BatchSource
from core.model.cache import cache_bytes
from core.data.split_data import from_manifest
from core.model.preprocess import PreprocessSpec
from core.runs.launch import prepare_data, start_run

PRE = PreprocessSpec(input_size=32, crop_pct=0.875, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))


def test_cached_and_streamed_batches_are_identical(small_digits_dir, tiny_config, tmp_path):
    data = from_manifest(prepare_data(small_digits_dir, tiny_config, str(tmp_path)))
    cpu = torch.device("cpu")
    cached = BatchSource(data.val, PRE, cpu, batch_size=16, cached=True)
    streamed = BatchSource(data.val, PRE, cpu, batch_size=16, cached=False, num_workers=2)
    assert cached.images is not None and cached.images.dtype == torch.uint8
    assert tuple(cached.images.shape[1:]) == (3, PRE.cache_size, PRE.cache_size)
    assert streamed.images is None
    order = torch.randperm(len(data.val), generator=torch.Generator().manual_seed(0))
    pairs = list(zip(cached.batches(order), streamed.batches(order)))
    assert len(pairs) == cached.num_batches()
    for (xa, ya), (xb, yb) in pairs:
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    assert cache_bytes(len(data.val), PRE) == cached.images.numel()


def test_a_dataset_over_the_memory_budget_trains_through_the_streaming_loader(small_digits_dir, tiny_config,
                                                                             tmp_path):
    summary = start_run(tiny_config.replace(epochs=1, max_cache_gb=0.0), small_digits_dir, str(tmp_path))
    assert summary["status"] == "completed" and summary["cached"] is False
    assert summary["metrics"]["val_accuracy"] > 0.2
