"""Dynamic micro-batching: concurrent requests' items gathered into one model call.

A named daemon worker takes the first waiting item, then gathers more until it holds `max_batch` or `max_wait_ms`
have passed since the first; the items are grouped by the model object they were prepared for (identity, so a
hot switch never mixes two versions in one call) and each group goes to `fn(model, items) -> results` (one per
item, in order). Each item's Future gets its result, or the exception of its group's call: a failed call fails
only that group, and the worker goes on.
"""
from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from typing import Any

_STOP = object()


class BatcherStopped(RuntimeError):
    """An item submitted to, or left waiting in, a stopped batcher."""


class MicroBatcher:
    """`submit(model, item)` -> Future; `stop()` ends the worker. `on_batch(model, size, seconds)` is told of each
    call (for metrics); its own errors are ignored."""

    def __init__(self, fn: Callable[[Any, list[Any]], Sequence[Any]], max_batch: int = 32, max_wait_ms: float = 5.0,
                 name: str = "micro-batcher", on_batch: Callable[[Any, int, float], None] | None = None):
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, not {max_batch}")
        if max_wait_ms < 0:
            raise ValueError(f"max_wait_ms must be 0 or more, not {max_wait_ms}")
        self.fn, self.max_batch, self.max_wait = fn, int(max_batch), float(max_wait_ms) / 1000.0
        self.on_batch = on_batch
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._stopped = threading.Event()
        self._submit_lock = threading.Lock()
        self.batches = 0  # calls made, for tests and metrics
        self._thread = threading.Thread(target=self._work, name=name, daemon=True)
        self._thread.start()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def submit(self, model: Any, item: Any) -> Future:
        future: Future = Future()
        with self._submit_lock:  # nothing slips in behind the stop sentinel
            if self._stopped.is_set():
                raise BatcherStopped("the micro-batcher has been stopped")
            self._queue.put((model, item, future))
        return future

    def submit_many(self, model: Any, items: Sequence[Any]) -> list[Future]:
        return [self.submit(model, item) for item in items]

    def stop(self, timeout: float = 5.0) -> bool:
        """Refuse new items, serve those already submitted (they come before the sentinel); True when the worker
        ended within `timeout`."""
        with self._submit_lock:
            if not self._stopped.is_set():
                self._stopped.set()
                self._queue.put(_STOP)
        self._thread.join(timeout)
        return not self._thread.is_alive()

    # ------------------------------------------------------------------------------------------- worker
    def _work(self) -> None:
        stopping = False
        while not stopping:
            first = self._queue.get()
            if first is _STOP:
                break
            jobs = [first]
            deadline = time.monotonic() + self.max_wait
            while len(jobs) < self.max_batch:
                remaining = deadline - time.monotonic()
                try:
                    job = self._queue.get(timeout=remaining) if remaining > 0 else self._queue.get_nowait()
                except queue.Empty:
                    break
                if job is _STOP:
                    stopping = True
                    break
                jobs.append(job)
            self._run(jobs)
        self._drain()

    def _run(self, jobs: list[tuple[Any, Any, Future]]) -> None:
        groups: dict[int, list[tuple[Any, Any, Future]]] = {}
        for job in jobs:  # by model identity, in arrival order
            if job[2].set_running_or_notify_cancel():
                groups.setdefault(id(job[0]), []).append(job)
        for group in groups.values():
            model = group[0][0]
            started = time.perf_counter()
            try:
                results = self.fn(model, [item for _, item, _ in group])
                if len(results) != len(group):
                    raise RuntimeError(f"the batch function returned {len(results)} results for {len(group)} items")
            except BaseException as exc:
                for _, _, future in group:
                    future.set_exception(exc)
                continue
            finally:
                self.batches += 1
                self._tell(model, len(group), time.perf_counter() - started)
            for (_, _, future), result in zip(group, results):
                future.set_result(result)

    def _tell(self, model: Any, size: int, seconds: float) -> None:
        if self.on_batch is not None:
            try:
                self.on_batch(model, size, seconds)
            except Exception:
                pass

    def _drain(self) -> None:
        while True:
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                return
            if job is not _STOP and job[2].set_running_or_notify_cancel():
                job[2].set_exception(BatcherStopped("the server is shutting down; retry"))
