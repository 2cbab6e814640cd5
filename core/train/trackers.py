"""Listeners on the training loop's events: console progress, wandb, TensorBoard (the run store's own listener
is core.runs.recorder).

wandb and TensorBoard are imported only when a run asks for them. The wandb API key is read by wandb
itself from the environment (WANDB_API_KEY) and never passes through a config, a log or an export.
"""
from __future__ import annotations

import os
import sys
from typing import Callable

from core.train.events import (
    BaselineDone,
    BatchEnd,
    EpochEnd,
    Event,
    Failed,
    Finished,
    Note,
    RunStarted,
    StageChanged,
    Validated,
)


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
