"""Listeners on the training loop's events: the run store (always), console progress, wandb, TensorBoard.

wandb and TensorBoard are imported only when a run asks for them. The wandb API key is read by wandb
itself from the environment (WANDB_API_KEY) and never passes through a config, a log or an export.
"""
from __future__ import annotations

import contextlib
import os
import sys
import time
from typing import Callable

from .events import BaselineDone, BatchEnd, EpochEnd, Event, Failed, Finished, GradientStats, Note, RunStarted, \
    StageChanged, Validated
from .store import RunStore


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


class ConsoleProgress:
    """One updating line per epoch on stderr, for the CLI."""

    def __init__(self, stream=sys.stderr):
        self.stream = stream

    def __call__(self, event: Event) -> None:
        w = self.stream.write
        if isinstance(event, RunStarted):
            w(f"run {event.run_id} on {event.device}: {event.data['train']} train / {event.data['val']} val / "
              f"{event.data['test']} test images, {len(event.data['classes'])} classes, "
              f"{event.frozen_groups}/{event.layer_groups} layer groups frozen\n")
        elif isinstance(event, BaselineDone):
            w("baseline (frozen features + linear probe): " + _fmt(event.metrics) + "\n")
        elif isinstance(event, BatchEnd):
            w(f"\repoch {event.epoch + 1} batch {event.batch + 1}/{event.batches} loss {event.loss:.4f} "
              f"{event.images_per_s:.0f} img/s")
        elif isinstance(event, EpochEnd):
            keys = ("train_loss", "val_loss", "val_accuracy", "val_macro_f1", "epoch_seconds")
            w(f"\repoch {event.epoch}: " + _fmt({k: event.metrics[k] for k in keys if k in event.metrics})
              + (" *" if event.improved else "") + "\n")
        elif isinstance(event, (StageChanged, Note)):
            w(event.message + "\n")
        elif isinstance(event, Finished):
            w(f"{event.status}: " + _fmt(event.summary["metrics"]) + "\n")
            outcome = event.summary.get("outcome") or {}
            if outcome.get("sentence"):
                w(outcome["sentence"] + "\n")
            for advice in event.summary.get("advice", ()):
                w(f"{advice['severity'].upper()} [{advice['code']}] {advice['message']}. {advice['action']}\n")
            if event.summary.get("adaptation"):
                w(event.summary["adaptation"] + "\n")
        elif isinstance(event, Failed):
            w(f"\nfailed: {event.message}\n")
        self.stream.flush()


WANDB_INIT_TIMEOUT = 10.0  # seconds an online wandb.init may take (wandb's own default, 90 s, stalls the run's start)


def _report(message: str) -> None:
    print(f"transfer-studio: {message}", file=sys.stderr)  # where the dispatcher reports a failed listener


class WandbTracker:
    """Weights & Biases, offline unless the environment carries WANDB_API_KEY (then online).

    An online start that fails or takes over `init_timeout` seconds (no network, server down, bad key) falls back
    to an offline run in the run's folder, to upload later with `wandb sync`; should that fail too, the run goes on
    without W&B. Either way `notify` (default: stderr) is told what happened, and `self.problem` keeps it.
    """

    def __init__(self, project: str, run_dir: str, notify: Callable[[str], None] = _report,
                 init_timeout: float = WANDB_INIT_TIMEOUT):
        import wandb  # lazy: only runs that ask for wandb pay for the import

        self.wandb, self.project, self.run_dir, self.run = wandb, project, run_dir, None
        self.notify, self.init_timeout, self.problem = notify, init_timeout, ""

    def _init(self, event: RunStarted, mode: str, run_id: str, **settings):
        # reinit="create_new": runs training side by side in one process (the job manager) each get their own
        return self.wandb.init(project=self.project, name=event.run_id, id=run_id, resume="allow",
                               config={**event.config, "data": event.data}, dir=self.run_dir, mode=mode,
                               reinit="create_new", settings=self.wandb.Settings(**settings))

    def _start(self, event: RunStarted) -> None:
        # online only when the user configured a key and did not force offline mode
        online = os.environ.get("WANDB_API_KEY") and os.environ.get("WANDB_MODE", "online") != "offline"
        if not online:
            self.run = self._init(event, "offline", event.run_id)
            return
        timeout = {} if "WANDB_INIT_TIMEOUT" in os.environ else {"init_timeout": self.init_timeout}  # the user's wins
        try:
            self.run = self._init(event, "online", event.run_id, **timeout)
            return
        except Exception as exc:  # wandb.errors.CommError on a timeout; anything else wandb raises, alike
            reason = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else 'no message'}"
        # the failed online run keeps its id in wandb's service until the process ends: the offline one needs another
        try:
            self.run = self._init(event, "offline", f"{event.run_id}-offline")
        except Exception as exc:
            self.problem = (f"W&B could not start an online run ({reason}) nor an offline one "
                            f"({type(exc).__name__}: {exc}); this run is not logged to W&B")
        else:
            self.problem = (f"W&B could not start an online run ({reason}); logging offline instead, to "
                            f"{self.run.dir}: upload it with `wandb sync {os.path.dirname(self.run.dir)}` once "
                            "the server is reachable")
            self.run.config.update({"wandb_offline_because": reason}, allow_val_change=True)
        self.notify(self.problem)

    def __call__(self, event: Event) -> None:
        if isinstance(event, RunStarted):
            self._start(event)
        elif self.run is None:
            return
        elif isinstance(event, BaselineDone):
            self.run.summary.update({f"baseline/{k}": v for k, v in event.metrics.items()})
        elif isinstance(event, BatchEnd):
            self.run.log({"train/loss": event.loss, **{f"lr/{k}": v for k, v in event.lrs.items()}}, step=event.step)
        elif isinstance(event, (EpochEnd, Validated)):
            self.run.log(dict(event.metrics), step=event.step)
        elif isinstance(event, (Finished, Failed)):
            if isinstance(event, Finished):
                self.run.summary.update(event.summary["metrics"])
            self.run.finish(exit_code=0 if isinstance(event, Finished) else 1)
            self.run = None


class TensorBoardTracker:
    def __init__(self, log_dir: str):
        from torch.utils.tensorboard import SummaryWriter  # lazy: needs the tensorboard package

        self.writer = SummaryWriter(log_dir)

    def __call__(self, event: Event) -> None:
        if isinstance(event, BatchEnd):
            self.writer.add_scalar("train/loss", event.loss, event.step)
        elif isinstance(event, (EpochEnd, Validated)):
            for k, v in event.metrics.items():
                self.writer.add_scalar(k.replace("_", "/", 1), v, event.step)
        elif isinstance(event, (Finished, Failed)):
            self.writer.close()


def _fmt(metrics: dict) -> str:
    return " ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in metrics.items())
