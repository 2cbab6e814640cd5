"""Deployment figures measured on the current device: parameters, file size, latency, throughput, peak memory.

Latency is the model's forward pass on a ready, normalised input tensor (decoding and resizing the image
are not included), the median over timed repeats after warm-up, per image, at batch 1 and at batch N.

This module owns the figures and their measurement in the calling process (`measure_latency`). Where they
are measured: core.evaluate.latency_child's `measure_in_child` (and `deployment_profile`, the bake-off and the
evaluation report through it) times the models in a clean child process, `python -m
core.evaluate.latency_child REQUEST.json`, that imports only torch and what the model needs. In the dashboard's server process, other threads compete for the
interpreter lock (Streamlit's reruns, a full garbage collection after each one, a training job), and a
figure timed there read 15,990 ms per image where the CLI measured 20. Only when no child can be started
is a model timed in the calling process, and the profile says so (`measured_in`).
What competes at the CPU level cannot be kept out by a process boundary: the profile records the load
average before and the cores other processes used while the timing ran (`others_cpu`, Linux), and
`conditions()` says all of it in one line, to be shown beside the figures.

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

import ctypes
import dataclasses
import gc
import os
import resource
import statistics
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Callable

import torch

from core.runtime import device_description, dtype_name

MIB = 2**20
# Cores' worth of CPU other processes may use while timing before the figures are called pessimistic. A timing
# uses every core it may (torch's intra-op threads), so little is enough: on 2 cores the dashboard's own polling
# (0.2-0.3 cores) made a clean child's latency 1.4-1.5x the CLI's (tests/browser/test_journey.py).
CONTENDED_CORES = 0.2
CHILD = "a clean child process"  # LatencyProfile.measured_in when timed by `python -m core.evaluate.latency_child`
IN_PROCESS = "this process"  # measure_latency called directly (a fallback when it says why)


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
    threads: int | None = None  # torch's intra-op threads during the timing
    cpu_count: int | None = None  # cores this process may run on
    measured_in: str = IN_PROCESS  # CHILD, or IN_PROCESS with why ("this process (fallback: ...)")
    others_cpu: float | None = None  # cores' worth of CPU other processes used while timing (Linux; None elsewhere)
    other_threads: int | None = None  # other Python threads alive in the measuring process (0 in a clean child)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "LatencyProfile":
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    @property
    def contended(self) -> bool:
        """Something competed while timing: other processes used CONTENDED_CORES or more, or the timing ran next
        to other threads of its own process. Its figures are then pessimistic."""
        return (self.others_cpu or 0.0) >= CONTENDED_CORES or (self.measured_in != CHILD and bool(self.other_threads))

    def conditions(self) -> str:
        """What these figures were measured under, in one line: shown beside them."""
        parts = [f"measured in {self.measured_in}", f"{self.device}, {self.dtype}",
                 f"{self.image_size} px input, batch 1 and {self.batch_size}"]
        cores = f" on {self.cpu_count} cores" if self.cpu_count else ""
        if self.load_average is not None:
            parts.append(f"load average {self.load_average:.1f}{cores} before")
        if self.others_cpu is not None:
            parts.append(f"other processes used {self.others_cpu:.1f} cores while timing")
        if self.measured_in != CHILD and self.other_threads:
            parts.append(f"{self.other_threads} other threads ran in the same process")
        text = "; ".join(parts)
        return text + (" (something competed: these figures are pessimistic)" if self.contended else "")

    def condition_rows(self) -> list[tuple[str, Any]]:
        """(figure, value) rows of the conditions, for a table next to the figures."""
        def shown(value: Any, fmt: str = "{}") -> Any:
            return "-" if value is None else fmt.format(value)

        return [("measured in", self.measured_in), ("threads", shown(self.threads)),
                ("load average when measured", shown(self.load_average, "{:.2f}")),
                ("other processes' CPU while timing, cores", shown(self.others_cpu, "{:.2f}")),
                ("competition while timing", "some: these figures are pessimistic" if self.contended else
                 "none seen")]


@dataclass(frozen=True)
class DeploymentProfile:
    parameters: int  # every parameter of the exported model (trunk, adapter, head)
    file_size_mb: float | None  # the exported weights file, when there is one
    latency: LatencyProfile

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def count_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


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


class OthersCpu:
    """Context manager: `cores`, the CPU other processes used on this process's cores while it was open, in
    cores' worth (/proc/stat's busy time of those cores minus this process's own CPU time); None off Linux."""

    def __enter__(self) -> "OthersCpu":
        self.cores: float | None = None
        self._cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
        self._start = (_busy_seconds(self._cpus), time.process_time(), time.perf_counter())
        return self

    def __exit__(self, *exc) -> None:
        busy, own, wall = _busy_seconds(self._cpus), time.process_time(), time.perf_counter()
        if busy is None or self._start[0] is None or wall <= self._start[2]:
            return
        # the kernel counts in clock ticks (10 ms): a short timing reads a little noise either way
        others = (busy - self._start[0]) - (own - self._start[1])
        self.cores = max(0.0, others / (wall - self._start[2]))


def _busy_seconds(cpus: Sequence[int]) -> float | None:
    """Seconds the given CPUs spent busy (user, nice, system, irq, softirq, steal) since boot; None off Linux."""
    if not cpus:
        return None
    try:
        with open("/proc/stat") as f:
            lines = {parts[0]: parts[1:] for parts in map(str.split, f) if parts and parts[0].startswith("cpu")}
        ticks = 0
        for cpu in cpus:
            user, nice, system, _idle, _iowait, irq, softirq, steal = map(int, lines[f"cpu{cpu}"][:8])
            ticks += user + nice + system + irq + softirq + steal
        return ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, KeyError, ValueError):
        return None


def _cpu_count() -> int | None:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


@torch.inference_mode()
def measure_latency(model: torch.nn.Module, image_size: int, device: torch.device | str = "cpu",
                    batch_size: int = 32, amp_dtype: torch.dtype | None = None, channels_last: bool = True,
                    budget_s: float = 1.0, measured_in: str = IN_PROCESS) -> LatencyProfile:
    """Forward-pass latency per image at batch 1 and `batch_size`, throughput, and peak memory of a batch, timed
    in this process (what competes here competes with the timing: see core.evaluate.latency_child).

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
    with OthersCpu() as others:
        one = _timed(runner(1), device, warmup=3, min_repeats=3, max_repeats=200, budget_s=budget_s)
        batch = runner(batch_size)
        # the first call at this shape is inside the measurement: freed activations may stay resident in the
        # allocator afterwards, and a peak measured from there would read as nothing
        with PeakMemory(device) as memory:
            many = _timed(batch, device, warmup=1, min_repeats=2, max_repeats=50, budget_s=budget_s)
    return LatencyProfile(device_description(device), dtype_name(amp_dtype), int(image_size), int(batch_size),
                          one * 1000.0, many * 1000.0 / batch_size, batch_size / many,
                          memory.peak_bytes / MIB, memory.method, load, torch.get_num_threads(), _cpu_count(),
                          measured_in, others.cores, threading.active_count() - 1)


def shared_conditions(profiles: Sequence[LatencyProfile]) -> str:
    """The conditions of several profiles timed one after another (a bake-off's candidates), in one line."""
    if not profiles:
        return ""
    if len(profiles) == 1:
        return profiles[0].conditions()
    first = profiles[0]
    where = "; ".join(dict.fromkeys(p.measured_in for p in profiles))
    sizes = "/".join(str(s) for s in dict.fromkeys(p.image_size for p in profiles))
    parts = [f"measured in {where}, one model after another", f"{first.device}, {first.dtype}",
             f"{sizes} px input, batch 1 and {first.batch_size}"]
    if first.load_average is not None:
        cores = f" on {first.cpu_count} cores" if first.cpu_count else ""
        parts.append(f"load average {first.load_average:.1f}{cores} before")
    others = [p.others_cpu for p in profiles if p.others_cpu is not None]
    if others:
        parts.append(f"other processes used up to {max(others):.1f} cores while timing")
    contended = [p for p in profiles if p.contended]
    text = "; ".join(parts)
    return text + (" (something competed: these figures are pessimistic)" if contended else "")
