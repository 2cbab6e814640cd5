"""Deployment figures measured on the current device: parameters, file size, latency, throughput, peak memory.

Latency is the model's forward pass on a ready, normalised input tensor (decoding and resizing the image
are not included), the median over timed repeats after warm-up, per image, at batch 1 and at batch N.
The figures assume the device is otherwise idle: on a CPU, another busy process makes torch's worker
threads wait for each other and batch-1 latency can grow tenfold, so the load average is recorded too.

Peak memory, and what is measured (`memory_method` says which applied):
- CUDA: `torch.cuda.max_memory_allocated` above what was allocated before: tensor memory only, without
  the CUDA context or the caching allocator's reserve.
- CPU on Linux: the process's peak resident set size (VmHWM) above its resident size before, after
  returning freed heap memory to the OS (malloc_trim) and resetting the peak through /proc/self/clear_refs.
  This counts everything the process touched meanwhile (other threads too), including oneDNN's one-time
  weight reorders; tracemalloc would miss torch's allocations, which bypass Python's allocator.
- CPU elsewhere: the growth of `resource.getrusage` ru_maxrss, a lower bound (0 when the process had
  already peaked higher earlier).
"""
from __future__ import annotations

import dataclasses
import os
import resource
import statistics
import sys
import time
from dataclasses import dataclass
from typing import Any, Callable

import torch

_MIB = 2**20


@dataclass(frozen=True)
class LatencyProfile:
    device: str  # "cpu (Intel Xeon, 2 threads)", "cuda (NVIDIA H100)"
    dtype: str  # "fp32" or the autocast dtype ("bf16", "fp16")
    image_size: int  # square input side the timings are for
    batch_size: int  # N of the batched figures
    latency_ms_batch1: float  # median ms per image at batch 1
    latency_ms_batch: float  # median ms per image at batch N
    throughput_per_s: float  # images per second at batch N
    peak_memory_mb: float  # peak memory of running batch N, above the level with the model loaded (see method)
    memory_method: str
    load_average: float | None = None  # 1-minute load average before measuring: above the core count, other
    # processes competed for the CPU and the timings are pessimistic

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class DeploymentProfile:
    parameters: int  # every parameter of the exported model (trunk, adapter, head)
    file_size_mb: float | None  # the exported weights file, when there is one
    latency: LatencyProfile

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def count_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def device_description(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    model = ""
    try:
        with open("/proc/cpuinfo") as f:
            model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "")
    except OSError:
        pass
    return f"{device.type} ({model + ', ' if model else ''}{torch.get_num_threads()} threads)"


def dtype_name(amp_dtype: torch.dtype | None) -> str:
    return {torch.bfloat16: "bf16", torch.float16: "fp16", None: "fp32"}.get(amp_dtype, str(amp_dtype))


# ------------------------------------------------------------------------------------------- memory
class PeakMemory:
    """Context manager: `peak_bytes` above the level at entry, measured as the module docstring says."""

    def __init__(self, device: torch.device):
        self.device, self.peak_bytes, self.method = device, 0, ""

    def __enter__(self) -> "PeakMemory":
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._start = torch.cuda.memory_allocated(self.device)
            self.method = "cuda max_memory_allocated above the starting allocation (tensors only)"
        elif _reset_peak_rss():
            # give memory freed earlier back to the OS first: otherwise this run's allocations reuse pages that
            # are still resident and its peak reads as (nearly) nothing
            _release_free_heap()
            _reset_peak_rss()
            self._start = _status_kib("VmRSS") * 1024
            self.method = "process peak RSS (VmHWM, reset at start) above the starting RSS"
        else:
            self._start = _maxrss_bytes()
            self.method = "growth of ru_maxrss (a lower bound: 0 if the process peaked higher before)"
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            peak = torch.cuda.max_memory_allocated(self.device)
        elif self.method.startswith("process peak RSS"):
            peak = _status_kib("VmHWM") * 1024
        else:
            peak = _maxrss_bytes()
        self.peak_bytes = max(0, peak - self._start)


def _release_free_heap() -> None:
    """glibc's malloc_trim(0): return free heap pages to the OS (a no-op where there is no glibc)."""
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _reset_peak_rss() -> bool:
    """Reset this process's VmHWM to its current RSS (Linux >= 4.0); False where that is not possible."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return _status_kib("VmHWM") > 0
    except OSError:
        return False


def _status_kib(field: str) -> int:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


def _maxrss_bytes() -> int:
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss if sys.platform == "darwin" else rss * 1024  # bytes on macOS, KiB on Linux


# ------------------------------------------------------------------------------------------ latency
def _timed(fn: Callable[[], Any], device: torch.device, warmup: int, min_repeats: int, max_repeats: int,
           budget_s: float) -> float:
    """Median seconds of `fn()` after `warmup` untimed calls; at least min_repeats, stops at the budget."""
    for _ in range(warmup):
        fn()
    times: list[float] = []
    started = time.perf_counter()
    while len(times) < max_repeats and (len(times) < min_repeats or time.perf_counter() - started < budget_s):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


@torch.inference_mode()
def measure_latency(model: torch.nn.Module, image_size: int, device: torch.device | str = "cpu",
                    batch_size: int = 32, amp_dtype: torch.dtype | None = None, channels_last: bool = True,
                    budget_s: float = 1.0) -> LatencyProfile:
    """Forward-pass latency per image at batch 1 and `batch_size`, throughput, and peak memory of a batch.

    `budget_s` bounds the timed repeats of each batch size (at least 3 repeats at batch 1 and 2 at batch N,
    after warm-up), so a slow model on a small CPU costs seconds, not minutes.
    """
    device = torch.device(device)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(device, memory_format=fmt).eval()

    def runner(n: int) -> Callable[[], Any]:
        x = torch.randn(n, 3, image_size, image_size, device=device).contiguous(memory_format=fmt)

        def run() -> Any:
            with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
                return model(x)
        return run

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    one = _timed(runner(1), device, warmup=3, min_repeats=3, max_repeats=200, budget_s=budget_s)
    batch = runner(batch_size)
    # the first call at this shape is inside the measurement: freed activations may stay resident in the
    # allocator afterwards, and a peak measured from there would read as nothing
    with PeakMemory(device) as memory:
        many = _timed(batch, device, warmup=1, min_repeats=2, max_repeats=50, budget_s=budget_s)
    return LatencyProfile(device_description(device), dtype_name(amp_dtype), int(image_size), int(batch_size),
                          one * 1000.0, many * 1000.0 / batch_size, batch_size / many,
                          memory.peak_bytes / _MIB, memory.method, load)


def deployment_profile(model: torch.nn.Module, image_size: int, weights_path: str | None = None,
                       device: torch.device | str = "cpu", batch_size: int = 32,
                       amp_dtype: torch.dtype | None = None, budget_s: float = 1.0) -> DeploymentProfile:
    """Parameters, exported file size and measured latency/memory of a model, on `device`."""
    size = os.path.getsize(weights_path) / _MIB if weights_path and os.path.exists(weights_path) else None
    return DeploymentProfile(count_parameters(model), size,
                             measure_latency(model, image_size, device, batch_size, amp_dtype, budget_s=budget_s))
