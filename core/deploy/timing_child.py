"""Latency and memory of an exported ONNX model, timed in a clean child process (`python -m
core.deploy.timing_child MODEL.onnx SIZE`): the dashboard's server process has other threads competing for the
interpreter and the cores (see core.evaluate.latency), so a bundle's figures are never timed there.

The child imports only numpy and onnxruntime (and core.evaluate.latency's CPU accounting), loads the model,
and prints one JSON line: resident memory the session added, the median ms per image at batch 1 and at batch
16 on a ready input (decoding and resizing not included), and the cores other processes used meanwhile.
"""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time

BATCH = 16


def time_onnx(path: str, size: int, timeout_s: float = 300.0) -> dict:
    """The child's figures for `path`; {"error": ...} when it could not run (the card says so)."""
    try:
        done = subprocess.run([sys.executable, "-m", "core.deploy.timing_child", path, str(size)], capture_output=True,
                              text=True, timeout=timeout_s, cwd=os.path.dirname(os.path.dirname(
                                  os.path.dirname(os.path.abspath(__file__)))))
    except (OSError, subprocess.TimeoutExpired) as exc:
        return {"error": f"timing child did not finish ({exc})"}
    lines = [line for line in done.stdout.splitlines() if line.strip()]
    if done.returncode != 0 or not lines:
        return {"error": f"timing child failed ({(done.stderr or '').strip().splitlines()[-1:] or done.returncode})"}
    return json.loads(lines[-1])


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) / 1024


def _median_ms(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def _child_main(argv: list[str]) -> int:
    import numpy as np
    import onnxruntime as ort

    from core.evaluate.latency import OthersCpu

    path, size = argv[0], int(argv[1])
    before = _rss_mb()
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    one = np.random.default_rng(0).standard_normal((1, 3, size, size)).astype(np.float32)
    many = np.repeat(one, BATCH, axis=0)
    for _ in range(3):  # warm-up: first runs allocate and pick kernels
        session.run(None, {"input": one})
    session.run(None, {"input": many})
    loaded = _rss_mb() - before
    load_average = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    with OthersCpu() as others:
        batch1 = _median_ms(lambda: session.run(None, {"input": one}), 20)
        batched = _median_ms(lambda: session.run(None, {"input": many}), 5) / BATCH
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(json.dumps({"runtime": f"onnxruntime {ort.__version__} CPU", "latency_ms_batch1": round(batch1, 3),
                      "latency_ms_batch": round(batched, 3), "batch_size": BATCH,
                      "throughput_per_s": round(1000 / batched, 1), "memory_mb": round(loaded, 1),
                      "memory_method": "resident memory the loaded and warmed-up session added (VmRSS)",
                      "image_size": size, "cpu_count": cores, "load_average": load_average,
                      "others_cpu": None if others.cores is None else round(others.cores, 2),
                      "measured_in": "a clean child process"}))
    return 0


if __name__ == "__main__":  # the child process; core.deploy.card starts it through time_onnx
    sys.exit(_child_main(sys.argv[1:]))
