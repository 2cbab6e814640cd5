from core.config import TrainConfig
from core.model.cache import cache_bytes
from core.plan.estimate import estimate_run, format_bytes, format_seconds, layer_groups, preprocess_for


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


def test_a_timing_taken_under_load_is_marked_and_measured_again_once_the_machine_is_idle(monkeypatch):
    import core.plan.estimate as estimate

    load = {"now": 4.0}  # per core: a busy machine
    per_image = {4.0: 0.039, 0.1: 0.004}  # the same step, measured busy and idle
    measured = []

    def fake_measure(*key):
        measured.append(key)
        return per_image[load["now"]], per_image[load["now"]] / 3, 1000

    monkeypatch.setattr(estimate, "machine_load", lambda: load["now"])
    monkeypatch.setattr(estimate, "_measure", fake_measure)
    estimate.forget_timings()
    config = TrainConfig(model="efficientnet_lite0", image_size=224, batch_size=16)  # its own size: one timing

    quick = estimate_run(config, 160, 40, wait=False)  # never measures: nothing cached yet
    assert quick.seconds_per_epoch is None and quick.timing_due and not measured
    busy = estimate_run(config, 160, 40)
    assert busy.timed_under_load and busy.measurements == 1 and not busy.timing_due
    assert any("busy" in note for note in busy.notes)
    assert estimate_run(config, 160, 40).measurements == 1, "still busy: nothing to gain from measuring again"

    load["now"] = 0.1
    stale = estimate_run(config, 160, 40, wait=False)
    assert stale.timing_due and stale.seconds_per_epoch == busy.seconds_per_epoch, "the old figure until then"
    idle = estimate_run(config, 160, 40)
    assert idle.measurements == 2 and not idle.timed_under_load and not idle.timing_due
    assert idle.seconds_per_epoch < busy.seconds_per_epoch / 5  # the idle one is used
    assert idle.epoch_seconds_range == (idle.seconds_per_epoch, busy.seconds_per_epoch)  # and the spread shown
    assert len(measured) == 2
    estimate.forget_timings()


def test_the_caller_knowing_of_training_makes_a_timing_busy(monkeypatch):
    import core.plan.estimate as estimate

    monkeypatch.setattr(estimate, "machine_load", lambda: None)  # an OS without a load average
    monkeypatch.setattr(estimate, "_measure", lambda *key: (0.01, 0.003, 100))
    estimate.forget_timings()
    config = TrainConfig(model="efficientnet_lite0", image_size=224)
    assert estimate_run(config, 64, 16, busy=True).timed_under_load
    assert not estimate_run(config, 64, 16, busy=False).timed_under_load  # idle now: measured again
    estimate.forget_timings()


def test_sharing_the_machine_states_its_cost():
    from core.plan.estimate import sharing_note

    assert "half of the CPU" in sharing_note(1, "cpu") and "2 times as long" in sharing_note(1, "cpu")
    assert "a third of the GPU" in sharing_note(2, "cuda") and "3 times as long" in sharing_note(2, "cuda")
