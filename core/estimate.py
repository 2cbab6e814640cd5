"""What a run will cost before it starts: parameters, memory and time per epoch on this machine.

The model is built from its architecture alone (weights do not change the cost), frozen as the config
asks, and one tiny batch is timed: a forward/backward/optimizer step after a warm-up, and an inference
forward, each the fastest of three. Per-image times scale to the configured batch size and split sizes. It is a rough guide
(small batches overstate the per-image cost a little, the image decode and a GPU's warm-up are not
counted), but it tells a 20-second run from a 2-hour one before anyone waits for it. Timings are
cached per (architecture, input size, freezing, device), so moving other sliders costs nothing.
"""
from __future__ import annotations

import copy
import functools
import math
import os
import time
from dataclasses import dataclass

import torch

from .backbones import Backbone, load_backbone
from .config import TrainConfig
from .data import cache_bytes
from .model import TransferModel
from .preprocess import PreprocessSpec

ADAMW_STATE_PER_PARAM = 2  # exp_avg and exp_avg_sq; SGD with momentum keeps 1
SLOW_RUN_SECONDS = 600.0  # above this for the whole run, the pages suggest a smaller image size or fewer epochs


@dataclass(frozen=True)
class RunEstimate:
    device: str  # "cpu", "cuda", "mps"
    input_size: int  # pixels the network sees
    native_input_size: int  # the size the pretrained weights were trained at
    params: int
    trainable_params: int
    frozen_groups: int
    total_groups: int
    groups: tuple[dict, ...]  # TransferModel.group_summary() rows: group, modules, params, frozen
    cache_bytes: int  # the decoded uint8 image cache (on the GPU when training there)
    weights_bytes: int  # weights + gradients + optimizer state
    activation_bytes: int  # tensors saved for backward, at the configured batch size
    steps_per_epoch: int
    total_epochs: int  # the configured maximum; early stopping may end sooner
    seconds_per_epoch: float | None  # None when timing failed (see notes)
    total_seconds: float | None
    native_seconds_per_epoch: float | None  # at the model's own input size, when that differs
    notes: tuple[str, ...] = ()

    @property
    def training_memory_bytes(self) -> int:
        return self.weights_bytes + self.activation_bytes

    @property
    def slow(self) -> bool:
        return self.total_seconds is not None and self.total_seconds > SLOW_RUN_SECONDS


def default_device() -> str:
    """The device a run with device="auto" trains on: cuda, mps or cpu."""
    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def device_description(device: str | None = None) -> str:
    """In words, for a person: which GPU, or how many CPU cores."""
    device = device or default_device()
    if device == "cuda" and torch.cuda.is_available():
        return f"GPU: {torch.cuda.get_device_name(0)}"
    if device == "mps":
        return "GPU: Apple (MPS)"
    return f"CPU ({os.cpu_count() or 1} cores, no GPU)"


@functools.lru_cache(maxsize=8)
def _architecture(model: str) -> Backbone:
    """The trunk without pretrained weights: enough for shapes, parameter counts and timing."""
    return load_backbone(model, pretrained=False)


def preprocess_for(model: str, image_size: int | None = None) -> PreprocessSpec:
    """The preprocessing a run of `model` at `image_size` uses (derived from the model itself)."""
    return _architecture(model).preprocess.with_input_size(image_size)


def _build(config: TrainConfig, num_classes: int) -> tuple[TransferModel, int]:
    backbone = copy.deepcopy(_architecture(config.model))  # freezing mutates it: a private copy
    model = TransferModel(backbone, num_classes, config.adapter_layers, config.adapter_dim, config.dropout,
                          config.bn_stats)
    return model, model.freeze_ratio(config.freeze_ratio)


def layer_groups(config: TrainConfig, num_classes: int = 2) -> tuple[dict, ...]:
    """The network's layer groups with parameter counts, frozen or trainable as `config` freezes them."""
    model, _ = _build(config, num_classes)
    return tuple(model.group_summary())


def _resolve(config: TrainConfig) -> tuple[torch.device, torch.dtype | None]:
    from .train import resolve_amp, resolve_device

    device = resolve_device(config.device)
    return device, resolve_amp(config.amp, device)


@functools.lru_cache(maxsize=64)
def _timed(model_name: str, input_size: int, freeze_ratio: float, adapter_layers: int, adapter_dim: int,
           num_classes: int, device_name: str, amp: str, channels_last: bool, batch_size: int
           ) -> tuple[float, float, int]:
    """(seconds per training image, seconds per inference image, saved-for-backward bytes per image)."""
    config = TrainConfig(model=model_name, freeze_ratio=freeze_ratio, adapter_layers=adapter_layers,
                         adapter_dim=adapter_dim, device=device_name, amp=amp)
    device, dtype = _resolve(config)
    model, _ = _build(config, num_classes)
    model.to(device)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    # about as many pixels as 4 images of 128 px: small images in larger batches, where per-batch overhead
    # would otherwise dominate and overstate the per-image time
    batch = max(2, min(batch_size, round(4 * (128 / input_size) ** 2)))
    x = torch.randn(batch, 3, input_size, input_size, device=device)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.arange(batch, device=device) % num_classes
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=0.0, weight_decay=0.0)  # lr 0: time the step, change nothing
    param_ptrs = {p.data_ptr() for p in model.parameters()}
    saved: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:  # count activations, not the weights autograd also keeps
        if t.data_ptr() not in param_ptrs:
            saved[t.data_ptr()] = t.numel() * t.element_size()
        return t

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    def train_step(measure: bool) -> None:
        model.train()
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            if measure:
                with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
                    loss = torch.nn.functional.cross_entropy(model(x).float(), y)
            else:
                loss = torch.nn.functional.cross_entropy(model(x).float(), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    def best_of(repeats: int, step) -> float:  # the fastest of a few: robust to a busy machine
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            step()
            sync()
            times.append(time.perf_counter() - t0)
        return min(times)

    train_step(measure=True)  # warm-up, and the activation count
    sync()
    train_s = best_of(3, lambda: train_step(measure=False)) / batch
    model.eval()
    with torch.inference_mode(), torch.autocast(device.type, dtype=dtype or torch.float32,
                                                enabled=dtype is not None):
        model(x)
        eval_s = best_of(3, lambda: model(x)) / batch
    return train_s, eval_s, sum(saved.values()) // batch


def estimate_run(config: TrainConfig, train_images: int, val_images: int, test_images: int = 0,
                 num_classes: int = 2, measure: bool = True) -> RunEstimate:
    """Parameters, memory and (when `measure`) seconds per epoch and in total for `config` on this data."""
    config = config.validate()
    model, frozen = _build(config, num_classes)
    pre = _architecture(config.model).preprocess
    native = pre.input_size
    size = config.image_size or native
    params = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    states = ADAMW_STATE_PER_PARAM if config.optimizer == "adamw" else 1
    weights_bytes = 4 * (params + trainable * (1 + states))
    steps = max(1, train_images // config.batch_size) if train_images >= config.batch_size else 1
    total_epochs = config.epochs + config.unfreeze_stages * config.stage_epochs
    notes: list[str] = []
    device, _ = _resolve(config)
    per_epoch = total = native_epoch = None
    activation_bytes = 0
    if measure:
        key = (config.model, config.freeze_ratio, config.adapter_layers, config.adapter_dim, num_classes,
               device.type, config.amp, config.channels_last, config.batch_size)
        try:
            train_s, eval_s, act = _timed(config.model, size, *key[1:])
            activation_bytes = act * config.batch_size
            per_epoch = _epoch_seconds(train_s, eval_s, steps * config.batch_size, val_images, steps, config)
            setup = eval_s * (train_images + 2 * val_images + 2 * test_images)  # probe features, epoch 0, final
            total = setup + per_epoch * total_epochs
            if size != native and device.type == "cpu":
                n_train, n_eval, _ = _timed(config.model, native, *key[1:])
                native_epoch = _epoch_seconds(n_train, n_eval, steps * config.batch_size, val_images, steps, config)
        except Exception as exc:  # an estimate must never break the page; say why it is missing
            notes.append(f"could not time a training step on {device.type}: {type(exc).__name__}: {exc}")
    if config.unfreeze_stages:
        notes.append("later unfreezing stages train more layers, so their epochs take longer than estimated")
    if config.early_stopping_patience:
        notes.append("early stopping may end the run before its last epoch")
    return RunEstimate(device.type, size, native, params, trainable, frozen, len(model.groups),
                       tuple(model.group_summary()), cache_bytes(train_images + val_images + test_images,
                                                                 pre.with_input_size(size)),
                       weights_bytes, activation_bytes, steps, total_epochs, per_epoch, total, native_epoch,
                       tuple(notes))


def _epoch_seconds(train_s: float, eval_s: float, train_images: int, val_images: int, steps: int,
                   config: TrainConfig) -> float:
    every = config.val_interval(steps)
    validations = 1 + (steps // every if every else 0)
    return train_s * train_images + eval_s * val_images * validations


def format_seconds(seconds: float | None) -> str:
    """12 s, 3 min 20 s, 2 h 05 min; an em dash when unknown."""
    if seconds is None or not math.isfinite(seconds):
        return "—"
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


def format_bytes(n: float) -> str:
    """512 B, 3.4 MB, 1.2 GB."""
    if n < 1024:
        return f"{n:.0f} B"
    for unit in ("KB", "MB", "GB"):
        n /= 1024
        if n < 1024 or unit == "GB":
            break
    return f"{n:.1f} {unit}"
