"""What a training run leaves to resume from: the loop's counters and records (``LoopState``), where its
checkpoints live (``Checkpoints``), and saving and restoring the full training state (weights, optimizer,
schedules, gradient scaler, EMA, random generators) at an epoch's end. ``core.train.loop`` uses them.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import torch

from core.model.checkpoint import rng_state, save_train_state, set_rng_state
from core.train.outcome import PROBE


@dataclass
class LoopState:
    """Everything the loop needs to resume; saved at every epoch end."""

    epoch: int = 0  # epochs completed
    step: int = 0  # optimizer steps taken
    stage: int = 0
    epoch_in_stage: int = 0
    best_epoch: int = -1  # the best fine-tuning epoch (>= 1) so far; -1: none yet
    best_score: list[float] = field(default_factory=list)  # its monitor_score; [] = none yet
    best_val_pred: list[int] = field(default_factory=list)  # its predictions on the val images
    probe_score: list[float] = field(default_factory=list)  # epoch 0, the linear probe
    probe_val_pred: list[int] = field(default_factory=list)
    kept: str = PROBE  # what best.safetensors holds now: the probe or the best fine-tuning epoch
    kept_rule: str = ""  # the rule that decided it, in words
    stage_start_score: list[float] = field(default_factory=list)
    bad_epochs: int = 0  # fine-tuning epochs since validation last improved on `patience_score`
    patience_score: list[float] = field(default_factory=list)
    baseline: dict[str, float] = field(default_factory=dict)
    history: list[dict[str, float]] = field(default_factory=list)
    gradients: list[dict[str, float]] = field(default_factory=list)  # core.train.gradients rows (thinned to 400)
    accumulate: int = 1  # micro-batches per optimizer step: raised after running out of memory


@dataclass(frozen=True)
class Checkpoints:
    """The files of a run's checkpoints directory."""

    dir: str
    best: str  # the model the run ends with: the probe or the best fine-tuning epoch
    state: str  # the full training state, for resuming
    stage: str  # the weights the current stage started from (a stage that did not help reverts to them)
    probe: str  # epoch 0, the linear probe
    tuned: str  # the best fine-tuning epoch

    @classmethod
    def of(cls, run_dir: str) -> Checkpoints:
        d = os.path.join(run_dir, "checkpoints")
        return cls(d, os.path.join(d, "best.safetensors"), os.path.join(d, "last_state.pt"),
                   os.path.join(d, "stage_start.safetensors"), os.path.join(d, "probe.safetensors"),
                   os.path.join(d, "best_tuned.safetensors"))


def save_state(path: str, state: LoopState, model: torch.nn.Module, optimizer, per_step, plateau, scaler,
               ema) -> None:
    """The full training state at an epoch's end (`per_step`, `plateau`, `ema`: None when unused)."""
    save_train_state(path, {
        "loop": {k: v for k, v in state.__dict__.items()},
        "model": model.state_dict(), "optimizer": optimizer.state_dict(),
        "per_step": per_step.state_dict() if per_step else {},
        "plateau": plateau.state_dict() if plateau else {},
        "scaler": scaler.state_dict(), "rng": rng_state(),
        "ema": ema.state_dict() if ema is not None else {},
    })


def saved_loop_state(saved: dict[str, Any]) -> LoopState:
    """The LoopState of a saved training state."""
    known = LoopState.__dataclass_fields__  # a state saved by an older version may lack or add fields
    return LoopState(**{k: v for k, v in saved["loop"].items() if k in known})


def load_state(saved: dict[str, Any], model: torch.nn.Module, optimizer, per_step, plateau, scaler, ema) -> None:
    """Load a saved training state into the objects of a stage built as it was (the random generators too)."""
    model.load_state_dict(saved["model"])
    optimizer.load_state_dict(saved["optimizer"])
    if per_step is not None and saved["per_step"]:
        per_step.load_state_dict(saved["per_step"])
    if plateau is not None and saved["plateau"]:
        plateau.load_state_dict(saved["plateau"])
    scaler.load_state_dict(saved["scaler"])
    if ema is not None and saved.get("ema"):
        ema.load_state_dict(saved["ema"])
    set_rng_state(saved["rng"])
