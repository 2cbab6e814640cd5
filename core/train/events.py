"""What the training loop tells the world: small immutable events and the one dispatcher that sends them.

Listeners (the run store, the job manager, wandb, TensorBoard, the console) are plain callables taking
an event. A listener that raises is reported once and dropped, so a tracker can never kill a run.
"""
from __future__ import annotations

import sys
import traceback
from dataclasses import dataclass, field
from typing import Any, Callable


@dataclass(frozen=True)
class Event:
    run_id: str


@dataclass(frozen=True)
class RunStarted(Event):
    config: dict[str, Any]
    data: dict[str, Any]
    device: str
    total_epochs: int
    steps_per_epoch: int
    layer_groups: int
    frozen_groups: int
    resumed_at_step: int | None = None  # set when the run resumes from a checkpoint taken at this step


@dataclass(frozen=True)
class BaselineDone(Event):
    metrics: dict[str, float]  # frozen pretrained trunk + linear probe: val_* and test_* metrics


@dataclass(frozen=True)
class BatchEnd(Event):
    epoch: int
    step: int  # global optimizer step
    batch: int  # index within the epoch
    batches: int  # batches per epoch
    loss: float
    lrs: dict[str, float]
    images_per_s: float


@dataclass(frozen=True)
class Validated(Event):
    epoch: int
    step: int
    metrics: dict[str, float]  # val_loss, val_accuracy, ...


@dataclass(frozen=True)
class GradientStats(Event):
    epoch: int
    step: int
    stats: dict[str, float]  # grad_norm/<group>, update_ratio/<group> for every trunk group and the head


@dataclass(frozen=True)
class EpochEnd(Event):
    epoch: int
    step: int
    metrics: dict[str, float]  # train_* and val_* metrics, lr_<group>, epoch_seconds
    improved: bool
    checkpoint: str


@dataclass(frozen=True)
class StageChanged(Event):
    stage: int
    frozen_groups: int
    reverted: bool  # the previous stage made validation worse and was rolled back
    message: str


@dataclass(frozen=True)
class Note(Event):
    message: str  # what the run is doing between epochs (a cross-validated check, ...), for the progress line


@dataclass(frozen=True)
class Finished(Event):
    status: str  # "completed", "early_stopped" or "stopped"
    summary: dict[str, Any]


@dataclass(frozen=True)
class Failed(Event):
    message: str
    traceback: str = field(default="", repr=False)


Listener = Callable[[Event], None]


class Dispatcher:
    def __init__(self, listeners: list[Listener] | None = None):
        self.listeners: list[Listener] = list(listeners or [])

    def add(self, listener: Listener) -> None:
        self.listeners.append(listener)

    def emit(self, event: Event) -> None:
        for listener in list(self.listeners):
            try:
                listener(event)
            except Exception:  # one broken tracker must not stop the run or the other listeners
                self.listeners.remove(listener)
                print(f"transfer-studio: listener {listener!r} failed and was removed:\n{traceback.format_exc()}",
                      file=sys.stderr)
