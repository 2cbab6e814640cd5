"""Memory of a training run: the estimate checked before it starts (`check_memory`: weights, gradients,
optimizer state, one batch's activations, the image cache, against what is free on the device), what to
do when it does not fit (`memory_advice`), recognising an out-of-memory error (`is_out_of_memory`), and
the micro-batches an epoch is retried in after one (`micro_batches`, `release_memory`, `split_further`).
"""
from __future__ import annotations

import gc

import torch

from core.config import TrainConfig
from core.files import format_bytes
from core.model.cache import available_memory
from core.runtime import device_name, resolve_amp
from core.train.failures import TrainingFailed

MIN_MICRO_BATCH = 2  # below this, BatchNorm's batch statistics are meaningless: give up instead
MEMORY_MARGIN = 1.3  # activation gradients, allocator fragmentation and workspaces on top of the estimate


def micro_batches(n: int, accumulate: int) -> list[slice]:
    """`n` items in `accumulate` nearly equal consecutive slices (one slice of all when accumulate is 1)."""
    size = -(-n // max(1, accumulate))
    return [slice(i, min(n, i + size)) for i in range(0, n, size)] if n else [slice(0, 0)]


def is_out_of_memory(exc: BaseException) -> bool:
    """CUDA's OutOfMemoryError, MPS's and the CPU allocator's RuntimeErrors."""
    if isinstance(exc, getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError)):
        return True
    text = str(exc).lower()
    return isinstance(exc, (RuntimeError, MemoryError)) and (
        isinstance(exc, MemoryError) or "out of memory" in text or "can't allocate memory" in text
        or "failed to allocate" in text)


def release_memory(device: torch.device) -> None:
    """Collect garbage and hand the device allocator's cached blocks back (CUDA, MPS)."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    elif device.type == "mps" and hasattr(torch, "mps"):
        torch.mps.empty_cache()


def split_further(exc: BaseException, accumulate: int, config: TrainConfig, device: torch.device,
                  resumable: bool) -> tuple[int, str]:
    """Out of memory in `accumulate` micro-batches per step: memory released, and (twice as many, the error's
    first line); TrainingFailed with advice where they would hold under MIN_MICRO_BATCH images or there is no
    saved state (`resumable`) to retry the epoch from."""
    bs = config.batch_size
    first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
    release_memory(device)
    if -(-bs // (accumulate * 2)) < MIN_MICRO_BATCH or not resumable:
        raise TrainingFailed(f"out of memory on {device_name(device)} even in micro-batches of "
                             f"{-(-bs // accumulate)} images ({first}). {memory_advice(device, config)}")
    return accumulate * 2, first


def free_memory(device: torch.device) -> int | None:
    """Bytes free for tensors on `device` now, or None when it cannot be told."""
    try:
        if device.type == "mps":
            return int(torch.mps.recommended_max_memory() - torch.mps.driver_allocated_memory())
        return available_memory(device)
    except (OSError, StopIteration, ValueError, RuntimeError, AttributeError):
        return None


def memory_advice(device: torch.device, config: TrainConfig) -> str:
    common = (f"lower batch_size (now {config.batch_size}) or image_size, or raise freeze_ratio (now "
              f"{config.freeze_ratio:g}) so fewer layers keep activations for backward")
    if device.type == "cuda":
        return (f"To fit: {common}; use amp bf16; or free the GPU (other processes: nvidia-smi).")
    if device.type == "mps":
        return f"To fit: {common}; close other apps using the GPU's unified memory."
    return f"To fit: {common}; set max_cache_gb lower or num_workers to 0; close other programs."


def activation_bytes_per_image(model: torch.nn.Module, config: TrainConfig, device: torch.device,
                               pre) -> int:
    """Bytes autograd keeps per training image for backward (a forward of 2 images, in eval mode so that
    neither BatchNorm statistics nor random numbers change)."""
    params = {p.data_ptr() for p in model.parameters()}
    saved: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        if t.data_ptr() not in params:
            saved[t.data_ptr()] = t.numel() * t.element_size()
        return t

    was_training = model.training
    model.eval()
    size = pre.input_size
    x = torch.zeros(2, 3, size, size, device=device)
    if config.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    amp = resolve_amp(config.amp, device)
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), \
                torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
            model(x)
    finally:
        model.train(was_training)
    return sum(saved.values()) // 2


def check_memory(model: torch.nn.Module, config: TrainConfig, device: torch.device, pre, cache: int = 0,
                 free: int | None = None) -> None:
    """TrainingFailed, before training starts, when the run's estimated memory (weights, gradients, optimizer
    state, the activations of one batch, the image cache) exceeds what is free on the device."""
    free = free_memory(device) if free is None else free
    if free is None:
        return
    params = sum(p.numel() * p.element_size() for p in model.parameters())
    trainable = sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
    states = 2 if config.optimizer == "adamw" else 1
    fixed = params + trainable * (1 + states) + cache
    per_image = activation_bytes_per_image(model, config, device, pre) * MEMORY_MARGIN
    need = fixed + per_image * config.batch_size
    if need <= free:
        return
    fits = int((free - fixed) // per_image) if free > fixed and per_image else 0
    hint = (f"a batch of {fits} fits (set batch_size={fits})" if fits >= MIN_MICRO_BATCH
            else "even a batch of 2 does not fit")
    raise TrainingFailed(f"this run needs about {format_bytes(need)} of memory on {device_name(device)} "
                         f"(weights, gradients and optimizer state {format_bytes(fixed - cache)}, image cache "
                         f"{format_bytes(cache)}, activations of a batch of {config.batch_size} "
                         f"{format_bytes(per_image * config.batch_size)}) and {format_bytes(free)} is free: "
                         f"{hint}. {memory_advice(device, config)}")
