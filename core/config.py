"""Run configuration: frozen dataclasses that travel unchanged to the run store, wandb and checkpoints.

`TrainConfig` is the one object a page, the CLI or a script builds to describe a run. Every field has a
default that follows good transfer-learning practice; `validate()` says, in words, what is wrong.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field, fields
from typing import Any

OPTIMIZERS = ("adamw", "sgd")
SCHEDULES = ("cosine", "step", "plateau", "constant")
LOSSES = ("cross_entropy", "weighted_cross_entropy", "focal")
MONITORS = ("val_macro_f1", "val_accuracy", "val_loss")
HEAD_INITS = ("linear_probe", "augmented_probe", "random")
DEVICES = ("auto", "cpu", "cuda", "mps")
AMP_MODES = ("auto", "bf16", "fp16", "off")
COMPILE_MODES = ("auto", "on", "off")
BN_STATS = ("frozen", "trainable", "all")
GROUP_BY = ("auto", "names", "embeddings", "none")  # core.related.GROUP_BY


AUTO_VAL_EVERY = 100  # batches between validations in a long epoch
AUTO_VAL_MIN_STEPS = 300  # an epoch this long (or longer) gets them: three or more points per epoch


class ConfigError(ValueError):
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

    def validate(self) -> None:
        _check_range("augment.scale_min", self.scale_min, 0.05, 1.0)
        _check_range("augment.rotation_deg", self.rotation_deg, 0.0, 180.0)
        _check_range("augment.brightness", self.brightness, 0.0, 1.0)
        _check_range("augment.contrast", self.contrast, 0.0, 1.0)
        _check_range("augment.noise_std", self.noise_std, 0.0, 1.0)
        _check_range("augment.blur_prob", self.blur_prob, 0.0, 1.0)


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
    # probe (the paired interval spans 0), a K-fold check on train+val decides (core.crossval); 0: off
    crossval_folds: int = 3
    val_every_batches: int = -1  # also validate every N batches; 0: once per epoch; -1: auto (see val_interval)
    grad_stats: bool = True  # per layer group, gradient norm and update/weight ratio about 4 times an epoch
    unfreeze_stages: int = 0  # progressive unfreezing: stages after the first, each unfreezing a share
    stage_epochs: int = 2  # epochs per unfreezing stage
    augment: AugmentSpec = field(default_factory=AugmentSpec)
    # --- data
    # related images (views of one object, one patient) kept in one split: "auto" infers them from file names
    # and pretrained embeddings (core.related), "names", "embeddings", or "none" (only duplicates and the
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
        _check_range("freeze_ratio", self.freeze_ratio, 0.0, 1.0)
        _check_range("adapter_layers", self.adapter_layers, 0, 4)
        _check_range("dropout", self.dropout, 0.0, 0.95)
        _check_range("lr", self.lr, 1e-8, 10.0)
        _check_range("lr_decay", self.lr_decay, 0.0, 1.0)
        _check_range("trunk_lr_ratio", self.trunk_lr_ratio, 0.0, 10.0)
        _check_range("probe_views", self.probe_views, 1, 64)
        _check_range("head_warmup_epochs", self.head_warmup_epochs, 0.0, 1000.0)
        _check_range("l2sp", self.l2sp, 0.0, 100.0)
        _check_range("mixup", self.mixup, 0.0, 10.0)
        _check_range("cutmix", self.cutmix, 0.0, 10.0)
        _check_range("ema_epochs", self.ema_epochs, 0.0, 1000.0)
        _check_range("weight_decay", self.weight_decay, 0.0, 1.0)
        _check_range("label_smoothing", self.label_smoothing, 0.0, 0.5)
        _check_range("epochs", self.epochs, 1, 10_000)
        _check_range("batch_size", self.batch_size, 1, 65_536)
        _check_range("early_stopping_patience", self.early_stopping_patience, 0, 1000)
        _check_range("crossval_folds", self.crossval_folds, 0, 10)
        if self.crossval_folds == 1:
            raise ConfigError("crossval_folds must be 0 (off) or between 2 and 10, got 1")
        _check_range("val_every_batches", self.val_every_batches, -1, 10**9)
        _check_range("unfreeze_stages", self.unfreeze_stages, 0, 20)
        _check_range("stage_epochs", self.stage_epochs, 1, 1000)
        _check_range("val_fraction", self.val_fraction, 0.0, 0.5)
        _check_range("test_fraction", self.test_fraction, 0.0, 0.5)
        if self.image_size is not None:
            _check_range("image_size", self.image_size, 16, 1024)
        for name, value, choices in (
            ("optimizer", self.optimizer, OPTIMIZERS),
            ("schedule", self.schedule, SCHEDULES),
            ("loss", self.loss, LOSSES),
            ("head_init", self.head_init, HEAD_INITS),
            ("device", self.device, DEVICES),
            ("amp", self.amp, AMP_MODES),
            ("compile", self.compile, COMPILE_MODES),
            ("bn_stats", self.bn_stats, BN_STATS),
            ("monitor", self.monitor, MONITORS),
            ("group_by", self.group_by, GROUP_BY),
        ):
            if value not in choices:
                raise ConfigError(f"{name}={value!r} is not supported; choose one of {', '.join(choices)}")
        self.augment.validate()
        return self


def _names(cls: type) -> str:
    return ", ".join(f.name for f in fields(cls))


def _check_range(name: str, value: Any, lo: float, hi: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{name} must be a number between {lo} and {hi}, got {value!r}")
    if not lo <= value <= hi:
        raise ConfigError(f"{name} must be between {lo} and {hi}, got {value}")


def _from_dict(cls: type, d: dict[str, Any]):
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(d) - known)
    if unknown:
        raise ConfigError(f"unknown setting(s) {', '.join(unknown)}; valid: {_names(cls)}")
    return cls(**d)
