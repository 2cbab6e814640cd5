"""Run configuration: frozen dataclasses that travel unchanged to the run store, wandb and checkpoints.

`TrainConfig` is the one object a page, the CLI or a script builds to describe a run. Every field has a
default that follows good transfer-learning practice; `validate()` checks every field against its rule
(TRAIN_RULES, AUGMENT_RULES: type, range, choices) and says, in words, what is wrong.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field, fields
from typing import Any

from core.errors import StudioError

OPTIMIZERS = ("adamw", "sgd")
SCHEDULES = ("cosine", "step", "plateau", "constant")
LOSSES = ("cross_entropy", "weighted_cross_entropy", "focal")
MONITORS = ("val_macro_f1", "val_accuracy", "val_loss")
HEAD_INITS = ("linear_probe", "augmented_probe", "random")
DEVICES = ("auto", "cpu", "cuda", "mps")
AMP_MODES = ("auto", "bf16", "fp16", "off")
COMPILE_MODES = ("auto", "on", "off")
BN_STATS = ("frozen", "trainable", "all")
GROUP_BY = ("auto", "names", "embeddings", "none")  # core.data.related.GROUP_BY


AUTO_VAL_EVERY = 100  # batches between validations in a long epoch
AUTO_VAL_MIN_STEPS = 300  # an epoch this long (or longer) gets them: three or more points per epoch


class ConfigError(StudioError, ValueError):
    """A configuration value is invalid; the message says which and what is allowed."""


@dataclass(frozen=True)
class AugmentSpec:
    """Training-time augmentation, applied in batches to cached uint8 images (CPU or GPU)."""

    hflip: bool = True  # random horizontal flip, p=0.5
    vflip: bool = False  # random vertical flip (microscopy, aerial images), p=0.5
    scale_min: float = 0.6  # random-resized-crop area range: smallest share of the image kept
    rotation_deg: float = 0.0  # random rotation in [-deg, +deg]
    brightness: float = 0.2  # colour jitter: multiply brightness by 1 +/- this
    contrast: float = 0.2  # colour jitter: scale contrast by 1 +/- this
    noise_std: float = 0.0  # additive Gaussian noise, in units of the [0, 1] pixel range
    blur_prob: float = 0.0  # probability of a 3x3 Gaussian blur per image

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "AugmentSpec":
        return _from_dict(cls, d)

    def validate(self) -> "AugmentSpec":
        """This spec, or a ConfigError naming the first setting outside AUGMENT_RULES (as `augment.<name>`)."""
        _check_fields(self, AUGMENT_RULES, "augment.")
        return self


@dataclass(frozen=True)
class TrainConfig:
    # --- model
    model: str = "efficientnet_lite0"  # catalog name (see `python -m core models`) or a timm name
    checkpoint_path: str | None = None  # the user's own weights (.safetensors or weights-only .pt/.pth)
    image_size: int | None = None  # None: the model's own input size
    freeze_ratio: float = 0.75  # share of the trunk's layer groups frozen, in forward order
    bn_stats: str = "trainable"  # which trunk BatchNorm layers learn batch statistics: frozen|trainable|all
    adapter_layers: int = 0  # 0-4 hidden layers between trunk and head, for domains far from ImageNet
    adapter_dim: int = 256
    dropout: float = 0.1  # before the head
    head_init: str = "random"  # or "linear_probe": start from the probe's head (LP-FT); "augmented_probe": from
    #                            a probe refitted on augmented training views (what fine-tuning will show it)
    probe_views: int = 4  # augmented_probe: augmented copies of each training image the head is fitted on
    # --- optimisation
    optimizer: str = "adamw"
    lr: float = 2e-3  # head learning rate (docs/BENCHMARKS.md: 2e-3 beat 1e-3 on six small datasets)
    trunk_lr_ratio: float = 0.8  # the top trainable trunk group trains at lr * this
    lr_decay: float = 0.8  # and each group below it at a further * lr_decay (discriminative lr)
    weight_decay: float = 1e-4
    momentum: float = 0.9  # SGD only
    schedule: str = "cosine"
    warmup_epochs: float = 0.5  # cosine only
    head_warmup_epochs: float = 0.0  # the trunk waits (lr 0) this many epochs while the head learns alone
    step_epochs: int = 3  # step schedule: lr /10 every this many epochs
    plateau_patience: int = 1  # plateau schedule: epochs without improvement before lr /10
    loss: str = "cross_entropy"
    label_smoothing: float = 0.1
    focal_gamma: float = 2.0
    l2sp: float = 0.0  # L2-SP: pull the trunk toward its pretrained weights (alpha/2 * ||w - w0||^2); 0: off
    mixup: float = 0.0  # mixup's Beta(alpha, alpha) for each batch; 0: off
    cutmix: float = 0.0  # CutMix's Beta(alpha, alpha); with mixup too, each batch takes one of the two
    ema_epochs: float = 0.0  # evaluate an exponential moving average of the weights, half-life in epochs; 0: off
    wise_ft: bool = False  # at the end, mix fine-tuned and starting weights, the share chosen on validation
    tta: bool = False  # test-time augmentation: average each image with its mirror (when hflip is on)
    epochs: int = 10
    batch_size: int = 32
    # what "better" means for the best checkpoint, early stopping and unfreezing stages; ties go to the lower
    # val loss. Not the val loss itself by default: label smoothing raises a fine-tuned model's loss (its
    # softmax is kept soft) above the probe's at equal or better accuracy.
    monitor: str = "val_macro_f1"
    early_stopping_patience: int = 4  # epochs without a better monitored value; 0 turns it off
    # under 30 validation images per class, when validation cannot tell the best fine-tuning epoch from the
    # probe (the paired interval spans 0), a K-fold check on train+val decides (core.train.crossval); 0: off
    crossval_folds: int = 3
    val_every_batches: int = -1  # also validate every N batches; 0: once per epoch; -1: auto (see val_interval)
    grad_stats: bool = True  # per layer group, gradient norm and update/weight ratio about 4 times an epoch
    unfreeze_stages: int = 0  # progressive unfreezing: stages after the first, each unfreezing a share
    stage_epochs: int = 2  # epochs per unfreezing stage
    augment: AugmentSpec = field(default_factory=AugmentSpec)
    # --- data
    # related images (views of one object, one patient) kept in one split: "auto" infers them from file names
    # and pretrained embeddings (core.data.related), "names", "embeddings", or "none" (only duplicates and the
    # data's own groups, which always win)
    group_by: str = "auto"
    val_fraction: float = 0.15  # used only when the data has no val split
    test_fraction: float = 0.15  # used only when the data has no split at all
    max_cache_gb: float | None = None  # None: decide from free memory
    num_workers: int = 2  # streaming loader, for datasets too large to cache
    # --- execution
    device: str = "auto"
    amp: str = "auto"  # auto: bf16 where the device has it, fp16 + scaler on older GPUs
    channels_last: bool = True
    compile: str = "auto"  # auto: torch.compile only on CUDA for runs long enough to repay warm-up
    seed: int = 0
    # --- tracking
    wandb: bool = False  # offline by default; online only when WANDB_API_KEY is set in the environment
    wandb_project: str = "transfer-studio"
    tensorboard: bool = False
    run_name: str = ""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainConfig":
        d = dict(d)
        if isinstance(d.get("augment"), dict):
            d["augment"] = AugmentSpec.from_dict(d["augment"])
        return _from_dict(cls, d)

    def replace(self, **changes: Any) -> "TrainConfig":
        return self.from_dict({**self.to_dict(), **changes})

    def with_overrides(self, pairs: list[str]) -> "TrainConfig":
        """Apply CLI-style `key=value` pairs; values are JSON when they parse, else strings.

        Nested augmentation fields are addressed as `augment.hflip=false`.
        """
        d = self.to_dict()
        for pair in pairs:
            if "=" not in pair:
                raise ConfigError(f"--set expects key=value, got {pair!r}")
            key, raw = pair.split("=", 1)
            try:
                value = json.loads(raw)
            except json.JSONDecodeError:
                value = raw
            if key.startswith("augment."):
                sub = key.split(".", 1)[1]
                if sub not in {f.name for f in fields(AugmentSpec)}:
                    raise ConfigError(f"unknown augmentation setting {sub!r}; valid: {_names(AugmentSpec)}")
                d["augment"] = {**d["augment"], sub: value}
            elif key not in d:
                raise ConfigError(f"unknown setting {key!r}; valid: {_names(TrainConfig)}")
            else:
                d[key] = value
        return self.from_dict(d)

    def val_interval(self, steps_per_epoch: int) -> int:
        """Batches between mid-epoch validations (0: none). Auto: every AUTO_VAL_EVERY batches once an epoch
        is AUTO_VAL_MIN_STEPS long, so a long epoch shows its validation curve while it runs."""
        if self.val_every_batches >= 0:
            return self.val_every_batches
        return AUTO_VAL_EVERY if steps_per_epoch >= AUTO_VAL_MIN_STEPS else 0

    def validate(self) -> "TrainConfig":
        """This config, or a ConfigError naming the first setting outside TRAIN_RULES, what it got and what is valid."""
        _check_fields(self, TRAIN_RULES)
        return self


@dataclass(frozen=True)
class Rule:
    """What one setting accepts. `check` raises a ConfigError naming the setting, the value given and what is valid.

    Bools are not numbers here (True is an int in Python), ints are numbers, and a float is not a whole number
    (epochs=2.5 is refused, so is 3.0). Every range is closed and finite, so NaN and infinity are refused too.
    """

    kind: str  # "flag" (a bool), "whole" (an int), "number" (an int or a float), "text", "choice" or "augment"
    lo: float = 0  # whole and number: the range [lo, hi]
    hi: float = 0
    special: tuple[tuple[Any, str], ...] = ()  # whole: values outside the range, each with what it means
    none: str = ""  # where None is allowed: what it means
    choices: tuple[str, ...] = ()  # choice: the valid values
    nonempty: bool = False  # text: blank is refused

    def describe(self) -> str:
        """What is valid, in words: "a whole number between 1 and 10000", "one of adamw, sgd"."""
        if self.kind == "flag":
            text = "true or false"
        elif self.kind == "text":
            text = "non-empty text" if self.nonempty else "text"
        elif self.kind == "choice":
            text = "one of " + ", ".join(self.choices)
        elif self.kind == "augment":
            text = "an AugmentSpec (a dict of augmentation settings in from_dict)"
        else:
            text = self._range("a whole number between" if self.kind == "whole" else "a number between")
        return text + (f" or None ({self.none})" if self.none else "")

    def check(self, name: str, value: Any) -> None:
        if value is None and self.none:
            return
        if self.kind == "choice":
            if not isinstance(value, str) or value not in self.choices:
                raise ConfigError(f"{name}={value!r} is not supported; choose one of {', '.join(self.choices)}")
            return
        if not self._has_type(value):
            raise ConfigError(f"{name} must be {self.describe()}, got {value!r}")
        if self.kind == "text" and self.nonempty and not value.strip():
            raise ConfigError(f"{name} must be {self.describe()}, got {value!r}")
        if self.kind in ("whole", "number") and value not in [v for v, _ in self.special] \
                and not self.lo <= value <= self.hi:
            raise ConfigError(f"{name} must be {self._range('between')}"
                              + (f" or None ({self.none})" if self.none else "") + f", got {value}")
        if self.kind == "augment":
            value.validate()

    def _has_type(self, value: Any) -> bool:
        if self.kind == "flag":
            return isinstance(value, bool)
        if self.kind == "text":
            return isinstance(value, str)
        if self.kind == "augment":
            return isinstance(value, AugmentSpec)
        if isinstance(value, bool):
            return False
        return isinstance(value, int) if self.kind == "whole" else isinstance(value, (int, float))

    def _range(self, words: str) -> str:
        """`words` and the range, after any special values: "-1 (auto), 0 (once per epoch) or between 1 and 10"."""
        text = f"{words} {self.lo} and {self.hi}"
        if not self.special:
            return text
        specials = [f"{v} ({meaning})" for v, meaning in self.special]
        return ", ".join(specials) + " or " + text


def _flag() -> Rule:
    return Rule("flag")


def _whole(lo: int, hi: int, **kw: Any) -> Rule:
    return Rule("whole", lo, hi, **kw)


def _number(lo: float, hi: float, **kw: Any) -> Rule:
    return Rule("number", lo, hi, **kw)


def _one_of(choices: tuple[str, ...]) -> Rule:
    return Rule("choice", choices=choices)


def _text(nonempty: bool = False, **kw: Any) -> Rule:
    return Rule("text", nonempty=nonempty, **kw)


# Every field of AugmentSpec and TrainConfig, in their order; a field without a rule fails validate() (KeyError)
# and tests/test_config.py. Bounds: what the Configure page's widgets allow, or wider where a script may need it.
AUGMENT_RULES: dict[str, Rule] = {
    "hflip": _flag(),
    "vflip": _flag(),
    "scale_min": _number(0.05, 1.0),
    "rotation_deg": _number(0.0, 180.0),
    "brightness": _number(0.0, 1.0),
    "contrast": _number(0.0, 1.0),
    "noise_std": _number(0.0, 1.0),
    "blur_prob": _number(0.0, 1.0),
}

TRAIN_RULES: dict[str, Rule] = {
    # --- model
    "model": _text(nonempty=True),
    "checkpoint_path": _text(nonempty=True, none="the model's pretrained weights"),
    "image_size": _whole(16, 1024, none="the model's own input size"),
    "freeze_ratio": _number(0.0, 1.0),
    "bn_stats": _one_of(BN_STATS),
    "adapter_layers": _whole(0, 4),
    "adapter_dim": _whole(1, 8192),
    "dropout": _number(0.0, 0.95),
    "head_init": _one_of(HEAD_INITS),
    "probe_views": _whole(1, 64),
    # --- optimisation
    "optimizer": _one_of(OPTIMIZERS),
    "lr": _number(1e-8, 10.0),
    "trunk_lr_ratio": _number(0.0, 10.0),
    "lr_decay": _number(0.0, 1.0),
    "weight_decay": _number(0.0, 1.0),
    "momentum": _number(0.0, 0.999),  # 1 would never forget a gradient
    "schedule": _one_of(SCHEDULES),
    "warmup_epochs": _number(0.0, 1000.0),
    "head_warmup_epochs": _number(0.0, 1000.0),
    "step_epochs": _whole(1, 1000),
    "plateau_patience": _whole(0, 1000),
    "loss": _one_of(LOSSES),
    "label_smoothing": _number(0.0, 0.5),
    "focal_gamma": _number(0.0, 10.0),
    "l2sp": _number(0.0, 100.0),
    "mixup": _number(0.0, 10.0),
    "cutmix": _number(0.0, 10.0),
    "ema_epochs": _number(0.0, 1000.0),
    "wise_ft": _flag(),
    "tta": _flag(),
    "epochs": _whole(1, 10_000),
    "batch_size": _whole(1, 65_536),
    "monitor": _one_of(MONITORS),
    "early_stopping_patience": _whole(0, 1000),
    "crossval_folds": _whole(2, 10, special=((0, "off"),)),
    "val_every_batches": _whole(1, 10**9, special=((-1, "auto"), (0, "once per epoch"))),
    "grad_stats": _flag(),
    "unfreeze_stages": _whole(0, 20),
    "stage_epochs": _whole(1, 1000),
    "augment": Rule("augment"),
    # --- data
    "group_by": _one_of(GROUP_BY),
    "val_fraction": _number(0.0, 0.5),
    "test_fraction": _number(0.0, 0.5),
    "max_cache_gb": _number(0.0, 4096.0, none="decide from free memory"),  # 0: cache nothing, stream
    "num_workers": _whole(0, 64),
    # --- execution
    "device": _one_of(DEVICES),
    "amp": _one_of(AMP_MODES),
    "channels_last": _flag(),
    "compile": _one_of(COMPILE_MODES),
    "seed": _whole(0, 2**32 - 1),  # numpy's seed range
    # --- tracking
    "wandb": _flag(),
    "wandb_project": _text(nonempty=True),
    "tensorboard": _flag(),
    "run_name": _text(),  # empty: the run id
}


def _check_fields(config: Any, rules: dict[str, Rule], prefix: str = "") -> None:
    for f in fields(config):
        rules[f.name].check(prefix + f.name, getattr(config, f.name))


def _names(cls: type) -> str:
    return ", ".join(f.name for f in fields(cls))


def _from_dict(cls: type, d: dict[str, Any]):
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(d) - known)
    if unknown:
        raise ConfigError(f"unknown setting(s) {', '.join(unknown)}; valid: {_names(cls)}")
    return cls(**d)
