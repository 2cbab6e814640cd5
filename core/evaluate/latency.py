"""Deployment figures measured on the current device: parameters, file size, latency, throughput, peak memory.

Latency is the model's forward pass on a ready, normalised input tensor (decoding and resizing the image
are not included), the median over timed repeats after warm-up, per image, at batch 1 and at batch N.

Where it is measured: `measure_in_child` (and `deployment_profile`, the bake-off and the evaluation report
through it) times the models in a clean child process, `python -m core.evaluate.latency REQUEST.json`, that imports
only torch and what the model needs. In the dashboard's server process, other threads compete for the
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

import dataclasses
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Callable

import torch
from core.runtime import device_description, dtype_name

_MIB = 2**20
CHILD = "a clean child process"  # LatencyProfile.measured_in when timed by `python -m core.evaluate.latency`
IN_PROCESS = "this process"  # measure_latency called directly (a fallback when it says why)
_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the folder holding the `core` package


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
        """Something competed while timing: other processes used half a core or more, or the timing ran next to
        other threads of its own process. Its figures are then pessimistic."""
        return (self.others_cpu or 0.0) >= 0.5 or (self.measured_in != CHILD and bool(self.other_threads))

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
    in this process (what competes here competes with the timing: see `measure_in_child`).

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
                          memory.peak_bytes / _MIB, memory.method, load, torch.get_num_threads(), _cpu_count(),
                          measured_in, others.cores, threading.active_count() - 1)


# ----------------------------------------------------------------------------------- in a clean child
@dataclass(frozen=True)
class LatencyJob:
    """One model to time in the child: saved whole to a file, so the caller can free it meanwhile."""

    name: str  # for progress messages
    image_size: int
    model_file: str | None  # torch.save(model) in a private temporary folder; None when it could not be saved
    model: torch.nn.Module | None = None  # kept only when it could not be saved (it is then timed in this process)
    unsaved: str = ""  # why it could not be saved


def save_for_timing(model: torch.nn.Module, folder: str, name: str, image_size: int) -> LatencyJob:
    """The model as a LatencyJob: written to `folder` (one made by tempfile.mkdtemp: only this user reads it),
    or kept in memory, with the reason, when it cannot be pickled (a class defined in a function, a hook)."""
    path = os.path.join(folder, f"model-{len(os.listdir(folder))}.pt")
    try:
        torch.save(model, path)
    except Exception as exc:  # pickling raises almost anything (PicklingError, AttributeError, TypeError)
        return LatencyJob(name, int(image_size), None, model, f"the model could not be saved for it "
                                                            f"({type(exc).__name__}: {str(exc)[:200]})")
    return LatencyJob(name, int(image_size), path)


def measure_in_child(jobs: Sequence[LatencyJob], device: torch.device | str = "cpu", batch_size: int = 32,
                     amp_dtype: torch.dtype | None = None, budget_s: float = 1.0,
                     progress: Callable[[str], None] = lambda message: None,
                     timeout_s: float | None = None, child: LatencyChild | None = None) -> list[LatencyProfile]:
    """Time each job's model, one after another, in one clean child process (`python -m core.evaluate.latency`), with
    this process's torch thread count; one LatencyProfile per job, in order. Nothing else of this process
    (threads, the interpreter lock, garbage collections) runs in the child, so the figures are the model's.

    Fallback: when the child cannot start or gives no result (no interpreter, out of memory, a model it cannot
    load), the jobs are timed here instead and each profile's `measured_in` says so and why.
    `progress` gets one message per model, as the child reaches it. `child`: one started ahead (LatencyChild),
    used up by this call; by default one is started now.
    """
    device = torch.device(device)
    threads = torch.get_num_threads()
    profiles: list[LatencyProfile | None] = [None] * len(jobs)
    saved = [i for i, job in enumerate(jobs) if job.model_file]
    why = "; ".join(dict.fromkeys(job.unsaved for job in jobs if not job.model_file))
    if saved:
        request = {"device": str(device), "dtype": dtype_name(amp_dtype), "batch_size": int(batch_size),
                   "budget_s": float(budget_s), "threads": threads,
                   "jobs": [{"name": jobs[i].name, "image_size": jobs[i].image_size, "model_file": jobs[i].model_file}
                            for i in saved]}
        # start-up (torch and timm imports) plus, per model, warm-up and the timed repeats of two batch sizes
        limit = timeout_s if timeout_s is not None else 120.0 + len(saved) * (60.0 + 4 * budget_s)
        with child or LatencyChild() as runner:
            results, failure = runner.run(request, progress, limit)
        for i, result in zip(saved, results):
            profiles[i] = LatencyProfile.from_dict(result)
        if failure:
            why = "; ".join(filter(None, (why, f"the clean child process {failure}")))
    elif child is not None:
        child.close()
    for i, job in enumerate(jobs):
        if profiles[i] is None:  # the fallback: timed here, and labelled as such
            progress(f"timing {job.name} in this process (fallback: {why})")
            model = job.model if job.model is not None else _load_saved(job.model_file)
            profiles[i] = measure_latency(model, job.image_size, device, batch_size, amp_dtype, budget_s=budget_s,
                                          measured_in=f"{IN_PROCESS} (fallback: {why})")
            del model
    return profiles  # type: ignore[return-value]


def _load_saved(path: str) -> torch.nn.Module:
    # a whole module this process saved itself a moment ago in its own private folder (save_for_timing):
    # unpickling it runs no code anybody else wrote
    return torch.load(path, map_location="cpu", weights_only=False)


class LatencyChild:
    """The clean child process that times models: `python -m core.evaluate.latency --wait`, which imports torch and timm
    (seconds) and waits; `run` then gives it one request. It may be started ahead of the request:

        with LatencyChild() as child:   # e.g. before a bake-off extracts its features
            ...
            profiles = measure_in_child(jobs, device, child=child)

    Start one ahead only where the caller's work leaves a core free: on a CPU where torch's threads use every
    core, the child's imports make them wait for each other (a bake-off's features on 2 cores: 1.0 -> 2.8 s).
    A child that cannot be started is not an error here: `run` then says why and the caller falls back.
    """

    def __init__(self) -> None:
        self.proc: subprocess.Popen | None = None
        self.error = ""
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, (_ROOT, os.environ.get("PYTHONPATH"))))}
        try:
            self.proc = subprocess.Popen([sys.executable, "-m", "core.evaluate.latency", "--wait"], cwd=_ROOT, env=env,
                                         stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                         text=True, errors="replace")
        except OSError as exc:
            self.error = f"could not be started ({exc})"

    def __enter__(self) -> "LatencyChild":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
        if self.proc is not None:
            self.proc.wait()
            self.proc.stdin.close()
            self.proc.stderr.close()

    def run(self, request: dict[str, Any], progress: Callable[[str], None], timeout_s: float
            ) -> tuple[list[dict[str, Any]], str]:
        """Time `request` (see measure_in_child) in the child, once; (the profiles it measured, "" or what went
        wrong: then fewer profiles than jobs, or none)."""
        proc = self.proc
        if proc is None:
            return [], self.error
        with tempfile.TemporaryDirectory(prefix="latency-") as folder:
            request_file, result_file = os.path.join(folder, "request.json"), os.path.join(folder, "result.json")
            with open(request_file, "w") as f:
                json.dump({**request, "result_file": result_file}, f)
            timed_out, tail = threading.Event(), []

            def stop() -> None:
                timed_out.set()
                proc.kill()
            timer = threading.Timer(timeout_s, stop)
            timer.daemon = True
            timer.start()
            try:
                try:
                    proc.stdin.write(request_file + "\n")
                    proc.stdin.close()
                except OSError:  # it died before reading: its stderr says why
                    pass
                for line in proc.stderr:  # its progress, one line per model; anything else is kept for errors
                    line = line.rstrip()
                    if line.startswith(_PROGRESS):
                        progress(line[len(_PROGRESS):])
                    elif line:
                        tail = (tail + [line])[-5:]
                code = proc.wait()
            finally:
                timer.cancel()
                self.close()
            results = []
            if os.path.exists(result_file):
                with open(result_file) as f:
                    results = json.load(f)
        if code == 0 and len(results) == len(request["jobs"]):
            return results, ""
        if timed_out.is_set():
            return results, f"ran past its {timeout_s:g} s limit and was stopped"
        return results, f"exited with status {code}{': ' + ' / '.join(tail)[-400:] if tail else ''}"


_PROGRESS = "progress: "
_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def _child_main(argv: Sequence[str]) -> int:
    """The child: time each model of the request (a JSON file: its path as the argument, or with --wait on the
    first line of stdin, read once the imports are done) and write the profiles to its result_file."""
    if argv and argv[0] == "--wait":
        try:  # what unpickling a timm model needs, imported while the parent still works
            import timm  # noqa: F401
        except ImportError:
            pass
        argv = [sys.stdin.readline().strip()]
        if not argv[0]:  # the parent closed without a request (it fell back or stopped)
            return 0
    with open(argv[0]) as f:
        request = json.load(f)
    torch.set_num_threads(int(request["threads"]))
    results = []
    for i, job in enumerate(request["jobs"]):
        print(f"{_PROGRESS}timing {job['name']} in a clean child process ({i + 1} of {len(request['jobs'])})",
              file=sys.stderr, flush=True)
        model = _load_saved(job["model_file"])
        profile = measure_latency(model, job["image_size"], request["device"], request["batch_size"],
                                  _DTYPES[request["dtype"]], budget_s=request["budget_s"], measured_in=CHILD)
        results.append(profile.to_dict())
        del model
    partial = request["result_file"] + ".part"
    with open(partial, "w") as f:
        json.dump(results, f)
    os.replace(partial, request["result_file"])
    return 0


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


def measure_latency_isolated(model: torch.nn.Module, image_size: int, device: torch.device | str = "cpu",
                             batch_size: int = 32, amp_dtype: torch.dtype | None = None, budget_s: float = 1.0,
                             progress: Callable[[str], None] = lambda message: None) -> LatencyProfile:
    """`measure_latency` of one model, in a clean child process (see `measure_in_child`)."""
    with tempfile.TemporaryDirectory(prefix="latency-models-") as folder:
        job = save_for_timing(model, folder, type(model).__name__, image_size)
        return measure_in_child([job], device, batch_size, amp_dtype, budget_s, progress)[0]


def deployment_profile(model: torch.nn.Module, image_size: int, weights_path: str | None = None,
                       device: torch.device | str = "cpu", batch_size: int = 32,
                       amp_dtype: torch.dtype | None = None, budget_s: float = 1.0) -> DeploymentProfile:
    """Parameters, exported file size and measured latency/memory of a model on `device`, timed in a clean child
    process."""
    size = os.path.getsize(weights_path) / _MIB if weights_path and os.path.exists(weights_path) else None
    return DeploymentProfile(count_parameters(model), size,
                             measure_latency_isolated(model, image_size, device, batch_size, amp_dtype, budget_s))


if __name__ == "__main__":  # the clean child of measure_in_child; not a command for people (see core.cli.main)
    sys.exit(_child_main(sys.argv[1:]))
