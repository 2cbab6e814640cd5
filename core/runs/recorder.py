"""The run store's listener on the training loop: status, metrics, pid and heartbeat of every run, written as they happen."""
from __future__ import annotations

import contextlib
import os
import sys
import time
from typing import Callable

from core.runs.store import RunStore
from core.train.events import (
    BaselineDone,
    BatchEnd,
    EpochEnd,
    Event,
    Failed,
    Finished,
    GradientStats,
    Note,
    RunStarted,
    StageChanged,
    Validated,
)


class StoreTracker:
    """Writes status and metrics to the run store; per-step metrics are buffered and flushed each second.

    It never raises (the Dispatcher drops a listener that does): a metric row the store cannot take (a full
    disk, a locked database) is counted and reported on stderr, and the run's status is written with retries
    for up to `status_retry_s`, so a run never ends with the store still saying "running" while it could be
    told otherwise. The trainer's pid and a heartbeat (every `heartbeat_s`) go into the run's row.
    """

    def __init__(self, store: RunStore, flush_seconds: float = 1.0, heartbeat_s: float = 5.0,
                 status_retry_s: float = 60.0):
        self.store, self.flush_seconds, self.heartbeat_s = store, flush_seconds, heartbeat_s
        self.status_retry_s = status_retry_s
        self.buffer: list[tuple] = []
        self.last_flush = self.last_beat = time.time()
        self.dropped = 0

    def __call__(self, event: Event) -> None:
        if isinstance(event, (RunStarted, Finished, Failed)):  # statuses: retried until written
            self._retrying(lambda: self._record(event), f"the status of run {event.run_id}")
            return
        try:
            self._record(event)
            if time.time() - self.last_beat >= self.heartbeat_s:
                self.last_beat = time.time()
                self.store.update_run(event.run_id, heartbeat=self.last_beat)
        except Exception as exc:
            self.dropped += 1
            if self.dropped in (1, 10, 100, 1000):
                print(f"transfer-studio: could not write to the run store {self.store.db_path} ({exc}); "
                      f"{self.dropped} record(s) lost so far, training goes on", file=sys.stderr)

    def _retrying(self, write: Callable[[], None], what: str) -> None:
        deadline, delay = time.time() + self.status_retry_s, 0.5
        while True:
            try:
                write()
                return
            except Exception as exc:
                if time.time() >= deadline:
                    print(f"transfer-studio: could not write {what} to {self.store.db_path} after "
                          f"{self.status_retry_s:.0f} s ({exc}); `python -m core runs` will show it as "
                          "interrupted", file=sys.stderr)
                    return
                time.sleep(delay)
                delay = min(5.0, delay * 2)

    def _record(self, event: Event) -> None:
        s = self.store
        if isinstance(event, RunStarted):
            s.update_run(event.run_id, status="running", error=None, pid=os.getpid(), heartbeat=time.time())
            if event.resumed_at_step is not None:  # steps after the checkpoint are about to be redone
                s.truncate_metrics(event.run_id, event.resumed_at_step)
            s.log_metrics(event.run_id, "setup", 0, 0, {
                "device": event.device, "total_epochs": event.total_epochs, "steps_per_epoch": event.steps_per_epoch,
                "layer_groups": event.layer_groups, "frozen_groups": event.frozen_groups})
        elif isinstance(event, BaselineDone):
            s.log_metrics(event.run_id, "baseline", 0, 0, event.metrics)
        elif isinstance(event, BatchEnd):
            self.buffer.append((event.epoch, event.step, {"loss": event.loss, "images_per_s": event.images_per_s,
                                                          **{f"lr_{k}": v for k, v in event.lrs.items()}}))
            if time.time() - self.last_flush >= self.flush_seconds:
                self.flush(event.run_id)
        elif isinstance(event, Validated):
            self.flush(event.run_id)
            s.log_metrics(event.run_id, "val", event.epoch, event.step, event.metrics)
        elif isinstance(event, GradientStats):
            s.log_metrics(event.run_id, "grad", event.epoch, event.step, event.stats)
        elif isinstance(event, EpochEnd):
            self.flush(event.run_id)
            s.log_metrics(event.run_id, "epoch", event.epoch, event.step, event.metrics)
            if event.improved:
                s.update_run(event.run_id, best_checkpoint=event.checkpoint)
        elif isinstance(event, StageChanged):
            s.log_metrics(event.run_id, "stage", event.stage, 0, {"frozen_groups": event.frozen_groups,
                                                                 "reverted": event.reverted, "message": event.message})
        elif isinstance(event, Note):
            s.log_metrics(event.run_id, "note", 0, 0, {"message": event.message})
        elif isinstance(event, Finished):
            with contextlib.suppress(Exception):
                self.flush(event.run_id)
            s.update_run(event.run_id, status=event.status, summary=event.summary,
                         best_checkpoint=event.summary.get("best_checkpoint"))
        elif isinstance(event, Failed):
            with contextlib.suppress(Exception):
                self.flush(event.run_id)
            s.update_run(event.run_id, status="failed", error=event.message)

    def flush(self, run_id: str) -> None:
        for epoch, step, values in self.buffer:
            self.store.log_metrics(run_id, "step", epoch, step, values)
        self.buffer.clear()
        self.last_flush = time.time()
