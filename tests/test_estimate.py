from core.config import TrainConfig
from core.data import cache_bytes
from core.estimate import (
    estimate_run,
    format_bytes,
    format_seconds,
    layer_groups,
    preprocess_for,
)


def test_the_estimate_counts_parameters_memory_and_times_an_epoch():
    config = TrainConfig(image_size=64, batch_size=16, epochs=3)
    est = estimate_run(config, train_images=160, val_images=40, test_images=40, num_classes=10)
    assert 0 < est.trainable_params < est.params
    assert est.frozen_groups == int(0.75 * est.total_groups) and len(est.groups) == est.total_groups + 1
    assert est.steps_per_epoch == 10 and est.total_epochs == 3
    assert est.cache_bytes == cache_bytes(240, preprocess_for(config.model, 64))
    assert est.activation_bytes > 0 and est.weights_bytes > 4 * est.params
    assert 0 < est.seconds_per_epoch < est.total_seconds
    assert est.input_size == 64 and est.native_input_size == 224


def test_the_model_size_is_slower_than_a_small_size_and_freezing_trains_fewer_weights():
    small = estimate_run(TrainConfig(image_size=64), 64, 16, num_classes=4)
    assert small.native_seconds_per_epoch > small.seconds_per_epoch  # 224 px on this CPU: ~12x the pixels
    frozen = estimate_run(TrainConfig(freeze_ratio=1.0), 64, 16, num_classes=4, measure=False)
    assert frozen.seconds_per_epoch is None and frozen.frozen_groups == frozen.total_groups
    assert frozen.trainable_params == frozen.groups[-1]["params"]  # only the head
    assert [g["frozen"] for g in layer_groups(TrainConfig(freeze_ratio=0.0))] == [False] * len(frozen.groups)


def test_formatting():
    assert format_seconds(None) == "—" and format_seconds(12.4) == "12 s"
    assert format_seconds(200) == "3 min 20 s" and format_seconds(7500) == "2 h 05 min"
    assert format_bytes(512) == "512 B" and format_bytes(3 * 1024**2) == "3.0 MB" and format_bytes(5 * 1024**4) == "5120.0 GB"
