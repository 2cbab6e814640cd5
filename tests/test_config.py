import pytest

from core.config import AugmentSpec, ConfigError, TrainConfig


def test_defaults_follow_good_practice():
    c = TrainConfig().validate()
    assert (c.freeze_ratio, c.optimizer, c.lr, c.weight_decay) == (0.75, "adamw", 2e-3, 1e-4)  # lr: docs/BENCHMARKS.md
    assert 3 <= c.early_stopping_patience <= 5


def test_roundtrip_through_dict():
    c = TrainConfig(lr=3e-4, augment=AugmentSpec(hflip=False, noise_std=0.1))
    assert TrainConfig.from_dict(c.to_dict()) == c


def test_cli_overrides_parse_json_and_nested_fields():
    c = TrainConfig().with_overrides(["epochs=3", "freeze_ratio=0.5", "lr=3e-4", "schedule=step",
                                      "augment.hflip=false", "image_size=null"])
    assert (c.epochs, c.freeze_ratio, c.lr, c.schedule, c.augment.hflip, c.image_size) == \
        (3, 0.5, 3e-4, "step", False, None)


@pytest.mark.parametrize("pairs, message", [
    (["freeze_ratio=1.5"], "freeze_ratio must be between"),
    (["optimizer=adam"], "choose one of adamw, sgd"),
    (["epochs=ten"], "epochs must be a number"),
    (["learning_rate=1"], "unknown setting 'learning_rate'"),
    (["augment.mixup=1"], "unknown augmentation setting"),
    (["epochs"], "key=value"),
])
def test_bad_values_are_explained(pairs, message):
    with pytest.raises(ConfigError, match=message):
        TrainConfig().with_overrides(pairs).validate()
