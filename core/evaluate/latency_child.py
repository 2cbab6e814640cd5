"""Timing models in a clean child process: `measure_in_child` saves each model to a private file and has
`python -m core.evaluate.latency_child` (this module's entry point, started ahead by `LatencyChild`) time it
with core.evaluate.latency's `measure_latency`, away from everything else the calling process runs (a
dashboard's reruns, their garbage collections, a training job); when no child can give a result, the models
are timed in the calling process and the profile says so and why. `deployment_profile` is a model's
deployment figures timed this way.

The protocol: the parent writes a JSON request (device, dtype, batch size, budget, threads, the saved
models) to a temporary file and sends its path on the child's stdin; the child reports progress on stderr
as "progress: ..." lines and writes the profiles, as JSON, to the request's result_file.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Callable

import torch

from core.evaluate.latency import (
    CHILD,
    IN_PROCESS,
    MIB,
    DeploymentProfile,
    LatencyProfile,
    count_parameters,
    measure_latency,
)
from core.runtime import dtype_name

_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the folder holding the `core` package


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
    """Time each job's model, one after another, in one clean child process (`python -m core.evaluate.latency_child`), with
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
    """The clean child process that times models: `python -m core.evaluate.latency_child --wait`, which imports torch and timm
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
            self.proc = subprocess.Popen([sys.executable, "-m", "core.evaluate.latency_child", "--wait"], cwd=_ROOT, env=env,
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
    size = os.path.getsize(weights_path) / MIB if weights_path and os.path.exists(weights_path) else None
    return DeploymentProfile(count_parameters(model), size,
                             measure_latency_isolated(model, image_size, device, batch_size, amp_dtype, budget_s))


if __name__ == "__main__":  # the clean child of measure_in_child; not a command for people (see core.cli.main)
    sys.exit(_child_main(sys.argv[1:]))
