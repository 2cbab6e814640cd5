import dataclasses
import json
import math

import pytest

from core.config import AUGMENT_RULES, TRAIN_RULES, AugmentSpec, ConfigError, TrainConfig

# every setting, as validate() names it, with its declared type ("augment.<name>" for the nested spec)
FIELDS = [(f.name, f.type) for f in dataclasses.fields(TrainConfig)] + \
         [("augment." + f.name, f.type) for f in dataclasses.fields(AugmentSpec)]
NAMES = [name for name, _ in FIELDS]


def _rule(name):
    return AUGMENT_RULES[name.split(".", 1)[1]] if name.startswith("augment.") else TRAIN_RULES[name]


def _with(name, value) -> TrainConfig:
    """The default config with one setting changed (bypassing from_dict, so any value gets through)."""
    if name.startswith("augment."):
        return TrainConfig(augment=AugmentSpec(**{name.split(".", 1)[1]: value}))
    return TrainConfig(**{name: value})


def _refused(name, value) -> str:
    with pytest.raises(ConfigError) as exc:
        _with(name, value).validate()
    return str(exc.value)


# --- defaults and round trips

def test_defaults_follow_good_practice():
    c = TrainConfig().validate()
    assert (c.freeze_ratio, c.optimizer, c.lr, c.weight_decay) == (0.75, "adamw", 2e-3, 1e-4)  # lr: docs/BENCHMARKS.md
    assert 3 <= c.early_stopping_patience <= 5
    assert AugmentSpec().validate() == AugmentSpec()


def test_roundtrip_through_dict():
    c = TrainConfig(lr=3e-4, augment=AugmentSpec(hflip=False, noise_std=0.1))
    assert TrainConfig.from_dict(c.to_dict()) == c


@pytest.mark.parametrize("config", [TrainConfig(), TrainConfig(image_size=32, epochs=2, max_cache_gb=0.0, seed=3,
                                                                  val_every_batches=3, crossval_folds=0,
                                                                  checkpoint_path="w.safetensors",
                                                                  augment=AugmentSpec(hflip=False, noise_std=0.1))])
def test_a_valid_config_stays_valid_through_json(config):
    """What the run store and checkpoints keep (JSON) comes back as the same, valid config."""
    again = TrainConfig.from_dict(json.loads(json.dumps(config.validate().to_dict())))
    assert again.validate() == config


def test_cli_overrides_parse_json_and_nested_fields():
    c = TrainConfig().with_overrides(["epochs=3", "freeze_ratio=0.5", "lr=3e-4", "schedule=step",
                                      "augment.hflip=false", "image_size=null"])
    assert (c.epochs, c.freeze_ratio, c.lr, c.schedule, c.augment.hflip, c.image_size) == \
        (3, 0.5, 3e-4, "step", False, None)


@pytest.mark.parametrize("pairs, message", [
    (["freeze_ratio=1.5"], "freeze_ratio must be between 0.0 and 1.0, got 1.5"),
    (["optimizer=adam"], "choose one of adamw, sgd"),
    (["epochs=ten"], "epochs must be a whole number between 1 and 10000, got 'ten'"),
    (["epochs=2.5"], "epochs must be a whole number"),
    (["augment.hflip=yes"], "augment.hflip must be true or false, got 'yes'"),
    (["learning_rate=1"], "unknown setting 'learning_rate'"),
    (["augment.mixup=1"], "unknown augmentation setting"),
    (["epochs"], "key=value"),
])
def test_bad_values_are_explained(pairs, message):
    with pytest.raises(ConfigError, match=message):
        TrainConfig().with_overrides(pairs).validate()


# --- every setting has a rule, and the rule refuses what its type cannot be

def test_every_setting_has_a_rule_and_every_rule_a_setting():
    assert list(TRAIN_RULES) == [f.name for f in dataclasses.fields(TrainConfig)]
    assert list(AUGMENT_RULES) == [f.name for f in dataclasses.fields(AugmentSpec)]


# wrong values for each declared type: bools are not numbers, floats are not whole numbers, numbers are not text
WRONG_TYPES = {
    "bool": [1, 0, "yes", "true", None],
    "int": [True, False, 2.5, 3.0, "3", None],
    "float": [True, "0.1", [0.1], None],
    "str": [3, True, None],
    "AugmentSpec": [{}, {"hflip": False}, None],
}


def _wrong_values(annotation: str) -> list:
    base, _, optional = annotation.partition(" | ")
    return [v for v in WRONG_TYPES[base] if not (optional == "None" and v is None)]


@pytest.mark.parametrize("name, value", [(n, v) for n, t in FIELDS for v in _wrong_values(t)])
def test_a_value_of_the_wrong_type_is_refused_naming_the_setting_and_the_value(name, value):
    message = _refused(name, value)
    assert name in message and repr(value) in message, message


@pytest.mark.parametrize("name", [n for n, t in FIELDS if t.startswith("float")])
def test_an_int_is_a_number(name):
    value = math.ceil(_rule(name).lo)
    _with(name, value).validate()


# --- ranges: the bounds and the special values are valid, one step outside is not

def _numeric():
    return [n for n in NAMES if _rule(n).kind in ("whole", "number")]


@pytest.mark.parametrize("name", _numeric())
def test_the_bounds_and_special_values_are_valid(name):
    rule = _rule(name)
    for value in (rule.lo, rule.hi, *(v for v, _ in rule.special)):
        _with(name, value).validate()


def _out_of_range():
    cases = []
    for name in _numeric():
        rule = _rule(name)
        specials = [v for v, _ in rule.special]
        step = 1 if rule.kind == "whole" else 0.01
        values = {rule.lo - step, min([rule.lo, *specials]) - step, rule.hi + step}
        if rule.kind == "number":
            values |= {math.nan, math.inf, -math.inf}
        cases += [(name, v) for v in sorted(values, key=str) if v not in specials]
    return cases


@pytest.mark.parametrize("name, value", _out_of_range())
def test_a_value_out_of_range_is_refused_naming_the_setting_the_value_and_the_range(name, value):
    rule = _rule(name)
    message = _refused(name, value)
    assert message.startswith(f"{name} must be ") and f"got {value}" in message, message
    assert f"between {rule.lo} and {rule.hi}" in message, message
    assert all(f"{v} ({meaning})" in message for v, meaning in rule.special), message


@pytest.mark.parametrize("name", [n for n in NAMES if _rule(n).kind == "choice"])
def test_a_choice_outside_the_list_is_refused_with_the_list(name):
    rule = _rule(name)
    assert _refused(name, "nope") == f"{name}='nope' is not supported; choose one of {', '.join(rule.choices)}"
    for choice in rule.choices:
        _with(name, choice).validate()


@pytest.mark.parametrize("name", [n for n in NAMES if _rule(n).kind == "text" and _rule(n).nonempty])
@pytest.mark.parametrize("value", ["", "  "])
def test_blank_text_is_refused_where_a_name_is_needed(name, value):
    assert _refused(name, value) == f"{name} must be non-empty text{_none(name)}, got {value!r}"


def _none(name):
    return f" or None ({_rule(name).none})" if _rule(name).none else ""


# --- the cases that got through before every setting had a rule

@pytest.mark.parametrize("name, value, message", [
    ("focal_gamma", -1, "focal_gamma must be between 0.0 and 10.0, got -1"),
    ("step_epochs", 0, "step_epochs must be between 1 and 1000, got 0"),
    ("warmup_epochs", -0.5, "warmup_epochs must be between 0.0 and 1000.0, got -0.5"),
    ("momentum", 1.5, "momentum must be between 0.0 and 0.999, got 1.5"),
    ("momentum", 1, "momentum must be between 0.0 and 0.999, got 1"),
    ("adapter_dim", 0, "adapter_dim must be between 1 and 8192, got 0"),
    ("epochs", 2.5, "epochs must be a whole number between 1 and 10000, got 2.5"),
    ("epochs", "10", "epochs must be a whole number between 1 and 10000, got '10'"),
    ("image_size", 64.5, "image_size must be a whole number between 16 and 1024 or None (the model's own input "
                         "size), got 64.5"),
    ("image_size", 8, "image_size must be between 16 and 1024 or None (the model's own input size), got 8"),
    ("batch_size", True, "batch_size must be a whole number between 1 and 65536, got True"),
    ("lr", "0.001", "lr must be a number between 1e-08 and 10.0, got '0.001'"),
    ("lr", False, "lr must be a number between 1e-08 and 10.0, got False"),
    ("tta", "yes", "tta must be true or false, got 'yes'"),
    ("wise_ft", 1, "wise_ft must be true or false, got 1"),
    ("grad_stats", None, "grad_stats must be true or false, got None"),
    ("crossval_folds", 1, "crossval_folds must be 0 (off) or between 2 and 10, got 1"),
    ("val_every_batches", -2, "val_every_batches must be -1 (auto), 0 (once per epoch) or between 1 and "
                              "1000000000, got -2"),
    ("max_cache_gb", -1.0, "max_cache_gb must be between 0.0 and 4096.0 or None (decide from free memory), got -1.0"),
    ("seed", -1, "seed must be between 0 and 4294967295, got -1"),
    ("model", "", "model must be non-empty text, got ''"),
    ("run_name", 7, "run_name must be text, got 7"),
    ("device", "gpu", "device='gpu' is not supported; choose one of auto, cpu, cuda, mps"),
    ("augment", {"hflip": False}, "augment must be an AugmentSpec (a dict of augmentation settings in from_dict), "
                                  "got {'hflip': False}"),
    ("augment.hflip", "yes", "augment.hflip must be true or false, got 'yes'"),
    ("augment.scale_min", 0.0, "augment.scale_min must be between 0.05 and 1.0, got 0.0"),
    ("augment.blur_prob", 2, "augment.blur_prob must be between 0.0 and 1.0, got 2"),
])
def test_settings_that_used_to_get_through(name, value, message):
    assert _refused(name, value) == message


@pytest.mark.parametrize("name, value", [
    ("val_every_batches", -1), ("val_every_batches", 0), ("val_every_batches", 3), ("crossval_folds", 0),
    ("early_stopping_patience", 0), ("image_size", None), ("max_cache_gb", None), ("max_cache_gb", 0.0),
    ("checkpoint_path", None), ("run_name", ""), ("unfreeze_stages", 0), ("l2sp", 0), ("focal_gamma", 0),
])
def test_values_with_a_meaning_stay_valid(name, value):
    assert getattr(_with(name, value).validate(), name) == value


def test_config_errors_are_value_errors():
    assert issubclass(ConfigError, ValueError)
