"""What a run will cost before it starts: parameters, memory and time per epoch on this machine.

The model is built from its architecture alone (weights do not change the cost), frozen as the config
asks, and one tiny batch is timed: a forward/backward/optimizer step after a warm-up, and an inference
forward, each the fastest of three. Per-image times scale to the configured batch size and split sizes. It is a rough guide
(small batches overstate the per-image cost a little, the image decode and a GPU's warm-up are not
counted), but it tells a 20-second run from a 2-hour one before anyone waits for it. Timings are
cached per setup (architecture, input size, freezing, device, batch size), so moving other sliders costs nothing.

A timing taken while the machine was busy (a high load average, or training in this process) is kept with that
fact: the estimate says so and shows the spread of its measurements, and the next estimate on an idle machine
measures again. One measurement runs at a time (two at once would slow each other down). Pages that must not
wait ask with `wait=False`: they get what is cached at once, and `timing_due` says a measurement is wanted.
"""
from __future__ import annotations

import atexit
import copy
import functools
import math
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from core.config import TrainConfig
from core.model.backbones import Backbone, load_backbone
from core.model.cache import cache_bytes
from core.model.preprocess import PreprocessSpec
from core.model.transfer import TransferModel
from core.runtime import resolve_amp, resolve_device

ADAMW_STATE_PER_PARAM = 2  # exp_avg and exp_avg_sq; SGD with momentum keeps 1
SLOW_RUN_SECONDS = 600.0  # above this for the whole run, the pages suggest a smaller image size or fewer epochs
BUSY_LOAD_PER_CORE = 0.75  # a 1-minute load average per core above this: a timing taken now counts as under load
MAX_MEASUREMENTS = 4  # kept per setup: the fastest is used, the spread is shown


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
    timed_under_load: bool = False  # every measurement of this setup was taken while the machine was busy
    epoch_seconds_range: tuple[float, float] | None = None  # per epoch, fastest and slowest measurement
    measurements: int = 0  # how many timings of this setup the figures come from
    timing_due: bool = False  # not timed yet (wait=False), or timed only under load and the machine is idle now

    @property
    def training_memory_bytes(self) -> int:
        return self.weights_bytes + self.activation_bytes

    @property
    def slow(self) -> bool:
        return self.total_seconds is not None and self.total_seconds > SLOW_RUN_SECONDS


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
    device = resolve_device(config.device)
    return device, resolve_amp(config.amp, device)


@dataclass(frozen=True)
class StepTiming:
    """One measurement of one setup's training and inference step."""
    train_s: float  # seconds per training image
    eval_s: float  # seconds per inference image
    activation_bytes: int  # saved for backward, per image
    load: float | None  # 1-minute load average per core just before (None: this OS has none)
    busy: bool  # taken while the machine was busy: the load, or the caller knew of training in this process
    when: float  # time.time()


_timings: dict[tuple, list[StepTiming]] = {}  # setup -> its measurements, oldest first (MAX_MEASUREMENTS)
_timings_lock = threading.Lock()
_measuring = threading.Lock()  # one measurement at a time in this process
_exiting = threading.Event()
_in_flight = threading.Condition()  # guards _in_flight_count: the estimates that may measure, running now
_in_flight_count = 0
MAX_SETUPS = 64
EXIT_WAIT_S = 60.0


@atexit.register
def _finish_measuring() -> None:
    """At exit, let background estimates end first (a measurement stops at its next step): a thread still in
    torch when the interpreter finalizes aborts the whole process ("terminate called without an active
    exception")."""
    _exiting.set()
    with _in_flight:
        _in_flight.wait_for(lambda: _in_flight_count == 0, timeout=EXIT_WAIT_S)


@contextmanager
def _counted() -> Iterator[None]:
    global _in_flight_count
    with _in_flight:
        _in_flight_count += 1
    try:
        yield
    finally:
        with _in_flight:
            _in_flight_count -= 1
            _in_flight.notify_all()


def machine_load() -> float | None:
    """The 1-minute load average per CPU core (None where the OS has none)."""
    try:
        return os.getloadavg()[0] / (os.cpu_count() or 1)
    except (AttributeError, OSError):
        return None


def machine_busy(busy: bool = False, load: float | None = None) -> bool:
    """Whether a timing taken now would be disturbed: `busy` (the caller knows of training or other work in this
    process), or a load average (`load`, else the current one) above BUSY_LOAD_PER_CORE (other processes)."""
    load = machine_load() if load is None else load
    return busy or (load is not None and load > BUSY_LOAD_PER_CORE)


def _due(measured: list[StepTiming], busy_now: bool) -> bool:
    """Measure (again)? When never measured, or only under load and the machine is idle now."""
    return not measured or (all(m.busy for m in measured) and not busy_now)


def _timing(key: tuple, busy: bool, wait: bool, progress: Callable[[str], None] | None = None
            ) -> tuple[list[StepTiming], bool]:
    """The measurements of setup `key` (oldest first) and whether another one is due. With `wait`, a due
    measurement is taken first (after any other one in progress)."""
    with _timings_lock:
        measured = list(_timings.get(key, ()))
    due = _due(measured, machine_busy(busy))
    if not wait or not due:
        return measured, due
    if _measuring.locked() and progress:
        progress("waiting for another timing to finish")
    with _measuring:
        if _exiting.is_set():
            raise RuntimeError("the process is exiting")
        with _timings_lock:  # measured while this one waited?
            measured = list(_timings.get(key, ()))
        if _due(measured, machine_busy(busy)):
            if progress:
                progress(f"timing a training step at {key[1]} px")
            load = machine_load()
            train_s, eval_s, act = _measure(*key)
            taken = StepTiming(train_s, eval_s, act, load, machine_busy(busy, load), time.time())
            measured = [*measured, taken][-MAX_MEASUREMENTS:]
            with _timings_lock:
                _timings[key] = measured
                while len(_timings) > MAX_SETUPS:
                    del _timings[next(iter(_timings))]
    return measured, False


def forget_timings() -> None:
    """Drop every cached timing (tests; a changed machine)."""
    with _timings_lock:
        _timings.clear()


def _measure(model_name: str, input_size: int, freeze_ratio: float, adapter_layers: int, adapter_dim: int,
             num_classes: int, device_name: str, amp: str, channels_last: bool, batch_size: int
             ) -> tuple[float, float, int]:
    """(seconds per training image, seconds per inference image, saved-for-backward bytes per image), measured now."""
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
            if _exiting.is_set():
                raise RuntimeError("the process is exiting")
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
                 num_classes: int = 2, measure: bool = True, wait: bool = True, busy: bool = False,
                 progress: Callable[[str], None] | None = None) -> RunEstimate:
    """Parameters, memory and (when `measure`) seconds per epoch and in total for `config` on this data.

    `wait=False` never measures: the time comes from this setup's earlier timings, if any, and `timing_due`
    says whether one is wanted (call again with `wait=True`, in the background). `busy`: the caller knows the
    machine is busy (training in this process); a timing taken then is marked as taken under load.
    """
    if not (measure and wait):
        return _estimate_run(config, train_images, val_images, test_images, num_classes, measure, wait, busy, progress)
    if _exiting.is_set():
        raise RuntimeError("the process is exiting")
    with _counted():
        return _estimate_run(config, train_images, val_images, test_images, num_classes, measure, wait, busy, progress)


def _estimate_run(config: TrainConfig, train_images: int, val_images: int, test_images: int, num_classes: int,
                  measure: bool, wait: bool, busy: bool, progress: Callable[[str], None] | None) -> RunEstimate:
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
    per_epoch = total = native_epoch = spread = None
    activation_bytes = measurements = 0
    under_load = due = False
    if measure:
        setup = (config.freeze_ratio, config.adapter_layers, config.adapter_dim, num_classes, device.type,
                 config.amp, config.channels_last, config.batch_size)

        def epoch_seconds(m: StepTiming) -> float:
            return _epoch_seconds(m.train_s, m.eval_s, steps * config.batch_size, val_images, steps, config)

        try:
            timed, due = _timing((config.model, size, *setup), busy, wait, progress)
            if timed:
                best = min(timed, key=lambda m: m.train_s)  # the least disturbed
                activation_bytes = best.activation_bytes * config.batch_size
                per_epoch = epoch_seconds(best)
                setup_s = best.eval_s * (train_images + 2 * val_images + 2 * test_images)  # probe, epoch 0, final
                total = setup_s + per_epoch * total_epochs
                under_load, measurements = all(m.busy for m in timed), len(timed)
                spread = (min(map(epoch_seconds, timed)), max(map(epoch_seconds, timed)))
            if size != native and device.type == "cpu":
                native_timed, native_due = _timing((config.model, native, *setup), busy, wait, progress)
                due = due or native_due
                if native_timed:
                    native_epoch = min(map(epoch_seconds, native_timed))
        except Exception as exc:  # an estimate must never break the page; say why it is missing
            notes.append(f"could not time a training step on {device.type}: {type(exc).__name__}: {exc}")
            due = False
        if under_load:
            notes.append("timed while the machine was busy (training, or a high load): runs may go faster; it "
                         "is timed again when the machine is idle")
    if config.unfreeze_stages:
        notes.append("later unfreezing stages train more layers, so their epochs take longer than estimated")
    if config.early_stopping_patience:
        notes.append("early stopping may end the run before its last epoch")
    return RunEstimate(device.type, size, native, params, trainable, frozen, len(model.groups),
                       tuple(model.group_summary()), cache_bytes(train_images + val_images + test_images,
                                                                 pre.with_input_size(size)),
                       weights_bytes, activation_bytes, steps, total_epochs, per_epoch, total, native_epoch,
                       tuple(notes), under_load, spread, measurements, due)


def setup_key(config: TrainConfig, num_classes: int) -> str:
    """What a timing depends on, as text: one background timing per setup."""
    return (f"{config.model}|{config.image_size or 0}|{config.freeze_ratio}|{config.adapter_layers}|"
            f"{config.adapter_dim}|{num_classes}|{config.device}|{config.amp}|{config.channels_last}|"
            f"{config.batch_size}")


def sharing_note(running: int, device: str) -> str:
    """What one more run costs while `running` runs train on this machine (they share it evenly)."""
    n = running + 1
    what = "GPU" if device != "cpu" else "CPU"
    share = {2: "half", 3: "a third", 4: "a quarter"}.get(n, f"1/{n}")
    runs = "1 run trains" if running == 1 else f"{running} runs train"
    return (f"{runs} here already: with one more, each gets about {share} of the {what}, so each takes about "
            f"{n} times as long, and their memory must fit together.")


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
