"""The training loop. It reads top to bottom: set up, baseline, then stages of epochs of batches.

It knows nothing of the UI: everything it has to say goes out as events through one dispatcher, and the
only way in is `should_stop`, checked at batch boundaries. Checkpoints are written at each epoch's end
(the full state for resuming) and whenever validation loss improves (the best model).

Helpers with one job of their own live beside it: the memory check and out-of-memory retries
(core.train.memory), mixup and CutMix (core.train.mixing), comparing validation scores
(core.train.scores), the WiSE-FT mix (core.train.wise_ft) and TrainingFailed (core.train.failures).
"""
from __future__ import annotations

import math
import os
import time
import traceback
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch
from PIL import UnidentifiedImageError
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from core.train.augment import augment_batch
from core.model.backbones import load_backbone
from core.data.ingest import ImageError
from core.files import DiskFull
from core.model.checkpoint import (CheckpointError, copy_model, load_train_state, read_weights, rng_state, save_model,
    save_train_state, set_rng_state)
from core.config import TrainConfig
from core.train.batches import BatchSource
from core.data.split_data import SplitData
from core.model.cache import cache_bytes, memory_budget
from core.train.failures import TrainingFailed
from core.train.memory import (MIN_MICRO_BATCH, check_memory, is_out_of_memory, memory_advice, micro_batches,
    release_memory)
from core.train.mixing import mix_batch
from core.train.scores import better, monitor_score
from core.train.wise_ft import wise_ft
from core.train.events import (BaselineDone, BatchEnd, Dispatcher, EpochEnd, Failed, Finished, GradientStats, Note,
    RunStarted, StageChanged, Validated)
from core.train.advisor import advise_run
from core.train.gradients import POINTS_PER_EPOCH, GradientMonitor, adaptation_summary
from core.train.losses import make_loss
from core.metrics import classification_metrics
from core.model.transfer import TransferModel
from core.train.outcome import FINE_TUNED, PROBE, SMALL_VAL_PER_CLASS, Outcome, choose, compare
from core.train.probe import (extract_augmented_features, extract_features, fit_linear_head, linear_probe,
    recalibrate_batchnorm)
from core.train.schedules import make_scheduler
from core.runtime import device_name, resolve_amp, resolve_device, seed_everything

COMPILE_MIN_STEPS = 1500  # below this, torch.compile's 16-40 s warm-up costs more than it saves


def stage_frozen_counts(initial_frozen: int, stages: int) -> list[int]:
    """Frozen-group count per stage: stage 0 as configured, each later stage unfreezing an equal share."""
    if stages == 0 or initial_frozen == 0:
        return [initial_frozen]
    share = math.ceil(initial_frozen / stages)
    return [max(0, initial_frozen - k * share) for k in range(stages + 1)]


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


# ------------------------------------------------------------------------------------------ the run
class Trainer:
    def __init__(self, run_id: str, config: TrainConfig, data: SplitData, run_dir: str, dispatcher: Dispatcher,
                 should_stop: Callable[[], bool] = lambda: False, second_opinion: Callable | None = None):
        """`second_opinion(epochs, progress)`: a check of fine-tuning against the probe on more images than the
        validation split (core.train.crossval), asked only when a small validation split cannot tell them apart."""
        self.run_id, self.config, self.data, self.run_dir = run_id, config.validate(), data, run_dir
        self.dispatcher, self.should_stop, self.second_opinion = dispatcher, should_stop, second_opinion
        self.ckpt_dir = os.path.join(run_dir, "checkpoints")
        self.best_path = os.path.join(self.ckpt_dir, "best.safetensors")
        self.state_path = os.path.join(self.ckpt_dir, "last_state.pt")
        self.stage_path = os.path.join(self.ckpt_dir, "stage_start.safetensors")
        self.probe_path = os.path.join(self.ckpt_dir, "probe.safetensors")  # epoch 0, the linear probe
        self.tuned_path = os.path.join(self.ckpt_dir, "best_tuned.safetensors")  # the best fine-tuning epoch
        self.fine_tuning, self.ema, self.anchor, self.l2sp_pairs = False, None, {}, []
        self._accumulate = 1  # micro-batches per batch (LoopState.accumulate), for evaluation passes too

    def emit(self, event) -> None:
        self.dispatcher.emit(event)

    def run(self, resume: bool = False) -> dict[str, Any]:
        """Train to the end; returns the summary. Failures are emitted as `Failed` and re-raised."""
        try:
            return self._run(resume)
        except Exception as exc:
            message = _explain(exc)
            self.emit(Failed(self.run_id, message, traceback.format_exc()))
            raise TrainingFailed(message) from exc

    def _run(self, resume: bool) -> dict[str, Any]:
        cfg, data = self.config, self.data
        started = time.time()
        # 1. model, device, data cache
        seed_everything(cfg.seed)
        device = resolve_device(cfg.device)
        self.device, self.amp = device, resolve_amp(cfg.amp, device)
        backbone = load_backbone(cfg.model, cfg.checkpoint_path)
        self.pre = backbone.preprocess.with_input_size(cfg.image_size)
        model = TransferModel(backbone, len(data.classes), cfg.adapter_layers, cfg.adapter_dim, cfg.dropout,
                              cfg.bn_stats)
        initial_frozen = model.freeze_ratio(cfg.freeze_ratio)
        self.stage_counts = stage_frozen_counts(initial_frozen, cfg.unfreeze_stages)
        model.to(device)
        if cfg.channels_last:
            model.to(memory_format=torch.channels_last)
        self.model, self.backbone = model, backbone
        total = len(data.train) + len(data.val) + len(data.test)
        cached = cache_bytes(total, self.pre) <= memory_budget(device, cfg.max_cache_gb)
        bs = cfg.batch_size
        self.train_src = BatchSource(data.train, self.pre, device, bs, cached, cfg.num_workers)
        self.val_src = BatchSource(data.val, self.pre, device, bs * 2, cached, cfg.num_workers)
        self.test_src = BatchSource(data.test, self.pre, device, bs * 2, cached, cfg.num_workers)
        self.loss_fn = make_loss(cfg.loss, data.class_counts(), cfg.label_smoothing, cfg.focal_gamma).to(device)
        self.eval_loss = torch.nn.CrossEntropyLoss()  # comparable across runs whatever the training loss
        check_memory(model, cfg, device, self.pre, cache_bytes(total, self.pre) if cached else 0)
        self.steps_per_epoch = self.train_src.num_batches(drop_last=True)
        self.val_every = cfg.val_interval(self.steps_per_epoch)
        self.report_every = 1 if device.type == "cpu" else 10  # steps between loss reads (device syncs)
        total_epochs = cfg.epochs + cfg.unfreeze_stages * cfg.stage_epochs
        saved = load_train_state(self.state_path) if resume and os.path.exists(self.state_path) else None
        self.emit(RunStarted(self.run_id, cfg.to_dict(), data.describe(), device_name(device), total_epochs,
                             self.steps_per_epoch, len(model.groups), initial_frozen,
                             saved["loop"]["step"] if saved else (-1 if resume else None)))

        # 2. baseline: frozen pretrained features + a fitted linear head. It is validated as "epoch 0" and
        #    kept as the first best checkpoint, so a run never ends worse (on val loss) than its baseline.
        self.forward = _maybe_compile(model, cfg, device, self.steps_per_epoch * total_epochs)
        # L2-SP pulls trunk weights toward these (the pretrained ones), instead of weight decay toward zero
        self.anchor = {name: p.detach().clone() for name, p in model.trunk.named_parameters()} if cfg.l2sp else {}
        state = LoopState()
        if saved is None:
            fresh_head = {k: v.clone() for k, v in model.head.state_dict().items()}
            baseline, weight, bias = linear_probe(model, self.train_src, self.val_src, self.test_src,
                                                  len(data.classes), self.amp, cfg.seed, cfg.channels_last)
            state.baseline = baseline
            self.emit(BaselineDone(self.run_id, baseline))
            self._set_head(weight, bias)
            self._start_stage(0)
            self._close_epoch(state, {**self._validate(), **{f"lr_{k}": v for k, v in self._lrs().items()}},
                              started=time.time(), count=False)
            # 3. the head fine-tuning starts from: a fresh one (default), or the probe's (LP-FT), refitted on
            #    re-estimated statistics where trainable BatchNorm layers will normalise with batch statistics
            if cfg.head_init == "random":
                model.head.load_state_dict(fresh_head)
            elif cfg.head_init == "augmented_probe":
                recalibrate_batchnorm(model, self.train_src, self.amp, cfg.channels_last)
                x_train, y_train = extract_augmented_features(model, self.train_src, cfg.augment, cfg.probe_views,
                                                              cfg.seed, self.amp, cfg.channels_last)
                self._set_head(*fit_linear_head(x_train, y_train, len(data.classes), cfg.seed, device)[:2])
            elif recalibrate_batchnorm(model, self.train_src, self.amp, cfg.channels_last):
                x_train, y_train = extract_features(model, self.train_src, self.amp, cfg.channels_last)
                self._set_head(*fit_linear_head(x_train, y_train, len(data.classes), cfg.seed, device)[:2])
            self.ema = self._new_ema()
            # the state a resume starts from is the one fine-tuning starts from: after the head's reset or
            # refit (a kill in the first epoch must not resume from the probe's head)
            self._save_state(state)
        else:
            self._start_stage(0, restoring=True)
            self.ema = self._new_ema()
            state = self._restore(saved)

        # 4. stages of epochs; a stage ends at its epoch budget or by early stopping
        self.fine_tuning = True
        status = "completed"
        while True:
            stage_epochs = cfg.epochs if state.stage == 0 else cfg.stage_epochs
            while state.epoch_in_stage < stage_epochs:
                try:
                    trained = self._train_epoch(state)
                except Exception as exc:
                    if not is_out_of_memory(exc):
                        raise
                    state = self._after_out_of_memory(state, exc)  # the epoch again, in smaller micro-batches
                    continue
                if not trained:
                    status = "stopped"
                    break
                if cfg.early_stopping_patience and state.bad_epochs >= cfg.early_stopping_patience:
                    status = "early_stopped"
                    break
            if status == "stopped" or not self._next_stage(state):
                break
            if status == "early_stopped":
                status = "completed"

        # 5. final evaluation of the best model
        self.fine_tuning = False
        return self._finish(state, status, time.time() - started)

    # --- stages ------------------------------------------------------------------------------------
    def _start_stage(self, stage: int, restoring: bool = False) -> None:
        """Freeze to the stage's count and build its optimizer and schedules (stage k>0 at lr/10)."""
        cfg, model = self.config, self.model
        model.freeze_groups(self.stage_counts[stage])
        lr = cfg.lr if stage == 0 else cfg.lr / 10
        groups = model.param_groups(lr, cfg.lr_decay, cfg.trunk_lr_ratio)
        if cfg.l2sp:  # the trunk is pulled toward its pretrained weights (the loss's L2-SP term), not toward 0
            for g in groups[1:]:
                g["weight_decay"] = 0.0
            self.l2sp_pairs = [(p, self.anchor[n]) for n, p in model.trunk.named_parameters() if p.requires_grad]
        if cfg.optimizer == "sgd":
            self.optimizer = torch.optim.SGD(groups, lr=lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                                             nesterov=True)
        else:
            self.optimizer = torch.optim.AdamW(groups, lr=lr, weight_decay=cfg.weight_decay)
        epochs = cfg.epochs if stage == 0 else cfg.stage_epochs
        head_only = int(cfg.head_warmup_epochs * self.steps_per_epoch) if stage == 0 else 0
        self.per_step, self.plateau = make_scheduler(self.optimizer, cfg.schedule, epochs * self.steps_per_epoch,
                                                     self.steps_per_epoch, cfg.warmup_epochs, cfg.step_epochs,
                                                     cfg.plateau_patience, head_only)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp == torch.float16)
        self.gradients = GradientMonitor(model, self.steps_per_epoch // POINTS_PER_EPOCH) if cfg.grad_stats else None
        if stage > 0 and not restoring:
            save_model(model, self.stage_path, self._meta({}))

    def _next_stage(self, state: LoopState) -> bool:
        """Close the current stage: revert it if validation got worse, else unfreeze the next share."""
        if state.stage > 0 and not better(state.best_score, state.stage_start_score):
            self._load_weights(self.stage_path)
            self.model.freeze_groups(self.stage_counts[state.stage - 1])
            self.emit(StageChanged(self.run_id, state.stage, self.stage_counts[state.stage - 1], True,
                                   f"stage {state.stage} did not improve {self.config.monitor}; reverted to its start"))
            return False
        if state.stage + 1 >= len(self.stage_counts):
            return False
        if os.path.exists(self.tuned_path):  # each stage starts from the best fine-tuned weights so far
            self._load_weights(self.tuned_path)
        state.stage, state.epoch_in_stage, state.bad_epochs = state.stage + 1, 0, 0
        state.stage_start_score = state.best_score
        self._start_stage(state.stage)
        self.ema = self._new_ema()
        self.emit(StageChanged(self.run_id, state.stage, self.stage_counts[state.stage], False,
                               f"stage {state.stage}: {len(self.model.groups) - self.stage_counts[state.stage]} of "
                               f"{len(self.model.groups)} layer groups trainable, at lr/10"))
        self._save_state(state)
        return True

    # --- one epoch ---------------------------------------------------------------------------------
    def _train_epoch(self, state: LoopState) -> bool:
        """Train one epoch, validate, checkpoint. False when a stop was asked for mid-epoch."""
        cfg, model, device = self.config, self.model, self.device
        epoch_start = time.time()
        model.train()
        order = torch.randperm(len(self.train_src), generator=torch.Generator().manual_seed(cfg.seed * 7919 + state.epoch))
        aug_gen = torch.Generator(device=device).manual_seed(cfg.seed * 104729 + state.epoch)
        losses, seen, preds, labels = [], 0, [], []
        t0 = time.time()
        for b, (images, y) in enumerate(self.train_src.batches(order, drop_last=True)):
            if self.should_stop():
                return False
            x = augment_batch(images, cfg.augment, self.pre, aug_gen)
            x, y_mix, lam = mix_batch(x, y, cfg.mixup, cfg.cutmix, aug_gen)
            if cfg.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            self.optimizer.zero_grad(set_to_none=True)
            # one optimizer step over the batch, in `accumulate` micro-batches (1 unless memory ran out): each
            # part's loss weighted by its share of the batch, so the gradient is the whole batch's
            loss, logits_parts = 0.0, []
            for part in micro_batches(len(y), state.accumulate):
                share = (part.stop - part.start) / len(y)
                with torch.autocast(device.type, dtype=self.amp or torch.float32, enabled=self.amp is not None):
                    logits = self.forward(x[part])
                part_loss = self.loss_fn(logits.float(), y[part])
                if lam < 1.0:  # mixed images: each of the two labels weighted by its share of the picture
                    part_loss = lam * part_loss + (1 - lam) * self.loss_fn(logits.float(), y_mix[part])
                if self.anchor:
                    part_loss = part_loss + self._l2sp_penalty()
                if state.accumulate > 1:
                    part_loss = part_loss * share
                self.scaler.scale(part_loss).backward()
                loss = loss + part_loss.detach()
                logits_parts.append(logits.detach())
            logits = logits_parts[0] if len(logits_parts) == 1 else torch.cat(logits_parts)
            report = b % self.report_every == 0 or b == self.steps_per_epoch - 1
            if report:  # reading the loss waits for the device: on a GPU, only every few steps
                loss_value = float(loss)
                if not math.isfinite(loss_value):
                    raise TrainingFailed(
                        f"the loss became {loss_value} at epoch {state.epoch + 1}, batch {b + 1}; training stopped "
                        f"and the best checkpoint was kept. Lower the learning rate (now {cfg.lr:g}) or check "
                        "the data.")
            watch = self.gradients is not None and self.gradients.due(state.step)
            if watch:
                self.gradients.capture(self.scaler.get_scale() if self.scaler.is_enabled() else 1.0)
            self.scaler.step(self.optimizer)
            self.scaler.update()
            if watch:
                stats = self.gradients.finish()
                state.gradients.append({"step": state.step + 1, "epoch": state.epoch, **stats})
                if len(state.gradients) > 400:
                    state.gradients = state.gradients[::2]
                self.emit(GradientStats(self.run_id, state.epoch, state.step + 1, stats))
            if self.per_step is not None:
                self.per_step.step()
            if self.ema is not None:
                self.ema.update_parameters(model)
            state.step += 1
            losses.append(loss)
            preds.append(logits.argmax(1))
            labels.append(y)
            seen += len(y)
            if report:
                self.emit(BatchEnd(self.run_id, state.epoch, state.step, b, self.steps_per_epoch, loss_value,
                                   self._lrs(), seen / max(1e-9, time.time() - t0)))
            if self.val_every and state.step % self.val_every == 0:
                self.emit(Validated(self.run_id, state.epoch, state.step, self._evaluate(self.val_src, "val_")))
                model.train()
        # validation, schedules, checkpoints
        y_true = torch.cat(labels).cpu().numpy() if labels else np.zeros(0)
        y_pred = torch.cat(preds).cpu().numpy() if preds else np.zeros(0)
        metrics = {"train_loss": float(torch.stack(losses).mean()) if losses else math.nan,
                   **classification_metrics(y_true, y_pred, len(self.data.classes), "train_"),
                   **self._validate()}
        if self.plateau is not None and math.isfinite(metrics["val_loss"]):
            self.plateau.step(metrics["val_loss"])
        metrics.update({f"lr_{k}": v for k, v in self._lrs().items()})
        self._close_epoch(state, metrics, epoch_start)
        return True

    def _close_epoch(self, state: LoopState, metrics: dict[str, float], started: float, count: bool = True) -> None:
        """Decide on the monitored metric, checkpoint, report. Epoch 0 (count=False) is the probe.

        probe.safetensors holds the probe, best_tuned.safetensors the best fine-tuning epoch, and
        best.safetensors whichever of the two `core.train.outcome.choose` keeps: the model a run ends with.
        """
        val_loss = metrics["val_loss"]
        if not math.isfinite(val_loss):
            raise TrainingFailed(f"the validation loss became {val_loss} at epoch {state.epoch}; the weights "
                                 "diverged. The best checkpoint was kept. Lower the learning rate.")
        metrics["stage"] = state.stage
        score = monitor_score(metrics, self.config.monitor)
        saved = False
        if not count:  # the linear probe
            state.probe_score, state.probe_val_pred = score, [int(v) for v in self.val_pred]
            state.kept, state.kept_rule = PROBE, "no fine-tuning epoch yet"
            save_model(self.model, self.probe_path, self._meta({"epoch": 0, **_pick(metrics, "val_")}))
            save_model(self.model, self.best_path, self._meta({"epoch": 0, **_pick(metrics, "val_")}))
            saved = True  # the training state is saved by the caller, once the fine-tuning head is set
        else:  # early stopping's patience counts fine-tuning epochs only, never against the baseline
            state.epoch += 1
            state.epoch_in_stage += 1
            if better(score, state.patience_score):
                state.patience_score, state.bad_epochs = score, 0
            else:
                state.bad_epochs += 1
            if better(score, state.best_score):
                state.best_epoch, state.best_score = state.epoch, score
                state.best_val_pred = [int(v) for v in self.val_pred]
                save_model(self._scored(), self.tuned_path, self._meta({"epoch": state.epoch, **_pick(metrics, "val_")}))
                improved_tuned = True
            else:
                improved_tuned = False
            kept, state.kept_rule = choose(self.data.val.labels, state.probe_val_pred, state.best_val_pred,
                                           better(state.best_score, state.probe_score), len(self.data.classes),
                                           self.config.monitor, self.config.seed)
            if kept != state.kept or (kept == FINE_TUNED and improved_tuned):
                copy_model(self.tuned_path if kept == FINE_TUNED else self.probe_path, self.best_path)
                saved = True
            state.kept = kept
            self._save_state(state)
        metrics["epoch_seconds"] = time.time() - started
        state.history.append({"epoch": state.epoch, **metrics})
        self.emit(EpochEnd(self.run_id, state.epoch, state.step, metrics, saved, self.best_path))

    def _after_out_of_memory(self, state: LoopState, exc: BaseException) -> LoopState:
        """Out of memory in an epoch: back to the epoch's start (its saved state) and the same effective
        batch in twice as many micro-batches, or TrainingFailed with advice below MIN_MICRO_BATCH."""
        bs = self.config.batch_size
        accumulate = state.accumulate * 2
        micro = -(-bs // accumulate)
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        self.optimizer.zero_grad(set_to_none=True)
        release_memory(self.device)
        if micro < MIN_MICRO_BATCH or not os.path.exists(self.state_path):
            raise TrainingFailed(f"out of memory on {device_name(self.device)} even in micro-batches of "
                                 f"{-(-bs // state.accumulate)} images ({first}). {memory_advice(self.device, self.config)}")
        state = self._restore(load_train_state(self.state_path))
        state.accumulate = self._accumulate = accumulate
        self.emit(Note(self.run_id, f"out of memory on {device_name(self.device)} at epoch {state.epoch + 1} "
                                    f"({first}); retrying the epoch in micro-batches of {micro} images, {accumulate} "
                                    f"per step, so the effective batch stays {bs}"))
        return state

    def _l2sp_penalty(self) -> torch.Tensor:
        return 0.5 * self.config.l2sp * sum(((p - p0) ** 2).sum() for p, p0 in self.l2sp_pairs)

    def _new_ema(self):
        """An exponential moving average of the weights (and BatchNorm statistics), or None when off."""
        if not self.config.ema_epochs:
            return None
        decay = 0.5 ** (1.0 / max(1.0, self.config.ema_epochs * self.steps_per_epoch))
        return AveragedModel(self.model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)

    def _scored(self) -> torch.nn.Module:
        """The weights validation scores and the best checkpoint keeps: the EMA's while fine-tuning with one."""
        return self.ema.module if self.ema is not None and self.fine_tuning else self.model

    def _set_head(self, weight: torch.Tensor, bias: torch.Tensor) -> None:
        with torch.no_grad():
            self.model.head.weight.copy_(weight.to(self.device))
            self.model.head.bias.copy_(bias.to(self.device))

    def _validate(self) -> dict[str, float]:
        """The end-of-epoch validation that checkpoints, early stopping and stages decide on (its per-image
        predictions are kept in `self.val_pred` for the probe-or-fine-tuned decision)."""
        y_true, self.val_pred, loss = self._predict(self.val_src)
        if not len(y_true):
            return {}
        return {"val_loss": loss, **classification_metrics(y_true, self.val_pred, len(self.data.classes), "val_")}

    def _evaluate(self, source: BatchSource, prefix: str, model: torch.nn.Module | None = None,
                  exact: bool = False) -> dict[str, float]:
        """Metrics of `model` (default: the EMA weights while fine-tuning with EMA, else the model); `exact`: in
        fp32, as the exported model computes, rather than under the run's autocast."""
        y_true, y_pred, loss = self._predict(source, model, exact)
        if not len(y_true):
            return {}
        return {f"{prefix}loss": loss, **classification_metrics(y_true, y_pred, len(self.data.classes), prefix)}

    @torch.inference_mode()
    def _predict(self, source: BatchSource, model: torch.nn.Module | None = None, exact: bool = False
                 ) -> tuple[np.ndarray, np.ndarray, float]:
        """(true labels, predicted labels, mean cross-entropy) of a split, at the evaluation crop. Validation
        during training runs under the run's autocast (bf16 halves its time on a CPU that has it); `exact`
        passes, the figures a run reports at its end, run in fp32: the numbers `python -m core evaluate` and
        an exported model give (bf16 moved 1 test image in 53 on emoji)."""
        amp = None if exact else self.amp
        model = model or self._scored()
        model.eval()
        tta = self.config.tta and self.config.augment.hflip
        total_loss, preds, labels = 0.0, [], []
        for images, y in source.batches():
            x = self.pre.eval_input(images)
            if self.config.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            parts = []
            for part in micro_batches(len(x), self._accumulate):
                with torch.autocast(self.device.type, dtype=amp or torch.float32, enabled=amp is not None):
                    logits = model(x[part]).float()
                    if tta:  # the mirror image's logits averaged in
                        logits = (logits + model(torch.flip(x[part], dims=[3])).float()) / 2
                parts.append(logits)
            logits = parts[0] if len(parts) == 1 else torch.cat(parts)
            total_loss += float(self.eval_loss(logits, y)) * len(y)
            preds.append(logits.argmax(1).cpu())
            labels.append(y.cpu())
        if not labels:
            return np.zeros(0, np.int64), np.zeros(0, np.int64), math.nan
        y_true = torch.cat(labels).numpy()
        return y_true, torch.cat(preds).numpy(), total_loss / len(y_true)

    # --- state, checkpoints, the end ---------------------------------------------------------------
    def _lrs(self) -> dict[str, float]:
        return {g["name"]: g["lr"] for g in self.optimizer.param_groups}

    def _meta(self, extra: dict[str, Any]) -> dict[str, Any]:
        return {"run_id": self.run_id, "architecture_name": self.backbone.entry.name,
                "architecture": self.backbone.entry.architecture, "weights_source": self.backbone.weights_source,
                "classes": list(self.data.classes), "preprocess": self.pre.to_dict(),
                "config": self.config.to_dict(), "data": self.data.describe(), **extra}

    def _save_state(self, state: LoopState) -> None:
        save_train_state(self.state_path, {
            "loop": {k: v for k, v in state.__dict__.items()},
            "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
            "per_step": self.per_step.state_dict() if self.per_step else {},
            "plateau": self.plateau.state_dict() if self.plateau else {},
            "scaler": self.scaler.state_dict(), "rng": rng_state(),
            "ema": self.ema.state_dict() if self.ema is not None else {},
        })

    def _restore(self, saved: dict[str, Any]) -> LoopState:
        known = LoopState.__dataclass_fields__  # a state saved by an older version may lack or add fields
        state = LoopState(**{k: v for k, v in saved["loop"].items() if k in known})
        if state.stage:
            self._start_stage(state.stage, restoring=True)
        self.model.load_state_dict(saved["model"])
        self.optimizer.load_state_dict(saved["optimizer"])
        if self.per_step is not None and saved["per_step"]:
            self.per_step.load_state_dict(saved["per_step"])
        if self.plateau is not None and saved["plateau"]:
            self.plateau.load_state_dict(saved["plateau"])
        self.scaler.load_state_dict(saved["scaler"])
        if self.ema is not None and saved.get("ema"):
            self.ema.load_state_dict(saved["ema"])
        set_rng_state(saved["rng"])
        self._accumulate = state.accumulate
        return state

    def _load_weights(self, path: str) -> None:
        self.model.load_state_dict(read_weights(path, str(self.device)))

    def _wise_ft(self, state: LoopState) -> float:
        """WiSE-FT (core.train.wise_ft): the best weights mixed with the probe's, the share a chosen on
        validation. Leaves the chosen mix loaded; returns a."""
        return wise_ft(self.model, self.probe_path, self.tuned_path, str(self.device),
                       lambda: monitor_score(self._evaluate(self.val_src, "val_", self.model), self.config.monitor))

    def _outcome(self, state: LoopState, alpha: float | None) -> Outcome:
        """The loaded (kept) model against the probe's weights, image by image on val and test."""
        if alpha is not None:
            kept = PROBE if alpha == 0.0 else FINE_TUNED if alpha == 1.0 else f"WiSE-FT mix (a={alpha:g})"
            decided = (f"the WiSE-FT mix of the probe and the best fine-tuning epoch chosen on validation "
                       f"{self.config.monitor.removeprefix('val_').replace('_', '-')} ({len(self.data.val)} images)")
        else:
            kept, decided = state.kept, state.kept_rule
        notes = ()
        if state.best_epoch > 0:
            best = next((h for h in state.history if h["epoch"] == state.best_epoch), {})
            if "val_accuracy" in best:
                notes = (f"the best fine-tuning epoch ({state.best_epoch} of {state.epoch}) scored "
                         f"{best['val_accuracy']:.1%} validation accuracy",)
        splits = [(name, src) for name, src in (("val", self.val_src), ("test", self.test_src)) if len(src)]
        kept_preds = {name: self._predict(src, self.model, exact=True)[:2] for name, src in splits}
        if kept != PROBE and os.path.exists(self.probe_path):
            final = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
            self._load_weights(self.probe_path)
            probe_preds = {name: self._predict(src, self.model, exact=True)[1] for name, src in splits}
            self.model.load_state_dict(final)
        else:
            probe_preds = {name: kept_preds[name][1] for name, _ in splits}
        comparisons = tuple(c for c in (compare(name, *kept_preds[name], probe_preds[name], self.config.seed)
                                        for name, _ in splits) if c is not None)
        return Outcome(kept, state.best_epoch if kept != PROBE else 0, decided, comparisons, notes)

    def _second_opinion(self, state: LoopState) -> None:
        """A small validation split that cannot tell the best fine-tuning epoch from the probe: ask again on
        more images (core.train.crossval), and keep what that says."""
        if self.second_opinion is None or state.best_epoch <= 0 or not self.config.crossval_folds:
            return
        y_val = self.data.val.labels
        if len(y_val) >= SMALL_VAL_PER_CLASS * len(self.data.classes):
            return
        c = compare("val", y_val, state.best_val_pred, state.probe_val_pred, self.config.seed)
        if c is None or c.clear:
            return
        self.emit(Note(self.run_id, f"validation cannot tell the fine-tuned model from the probe ({c.n} images): "
                                    f"a {self.config.crossval_folds}-fold check on train+val decides"))
        check = self.second_opinion(state.best_epoch, lambda m: self.emit(Note(self.run_id, m)))
        if check is None:
            return
        kept = FINE_TUNED if check.comparison.difference > 0 else PROBE
        if kept != state.kept:
            copy_model(self.tuned_path if kept == FINE_TUNED else self.probe_path, self.best_path)
        state.kept, state.kept_rule = kept, check.describe()
        self._save_state(state)

    def _finish(self, state: LoopState, status: str, seconds: float) -> dict[str, Any]:
        if status != "stopped":
            self._second_opinion(state)
        if os.path.exists(self.best_path):
            self._load_weights(self.best_path)
        extra: dict[str, Any] = {}
        if self.config.wise_ft and status != "stopped" and state.best_epoch > 0 and os.path.exists(self.tuned_path):
            extra["wise_ft_alpha"] = self._wise_ft(state)
        metrics = {**self._evaluate(self.val_src, "val_", exact=True),
                   **self._evaluate(self.test_src, "test_", exact=True)}
        outcome = self._outcome(state, extra.get("wise_ft_alpha"))
        cfg_dict, counts = self.config.to_dict(), dict(zip(self.data.classes, self.data.class_counts()))
        summary = {"run_id": self.run_id, "status": status,
                   "best_checkpoint": self.best_path if os.path.exists(self.best_path) else None,
                   "best_epoch": outcome.best_epoch, "best_tuned_epoch": state.best_epoch,
                   "epochs_run": state.epoch, "steps": state.step,
                   "stage": state.stage, "metrics": metrics, "baseline": state.baseline,
                   "device": device_name(self.device), "seconds": round(seconds, 2),
                   "cached": self.train_src.images is not None, "outcome": outcome.to_dict(),
                   "advice": [a.to_dict() for a in advise_run(state.history, cfg_dict, counts, finished=True,
                                                                   kept=outcome.kept)],
                   "adaptation": adaptation_summary(state.gradients, self.model.frozen_groups,
                                                    len(self.model.groups), self.config.freeze_ratio)["sentence"],
                   "layer_groups": len(self.model.groups), "frozen_groups": self.model.frozen_groups, **extra}
        if status != "stopped" and summary["best_checkpoint"]:
            save_model(self.model, self.best_path, self._meta({"epoch": outcome.best_epoch, "kept": outcome.kept,
                                                               **metrics, **extra}))
        self.emit(Finished(self.run_id, status, summary))
        return summary


def _pick(metrics: dict[str, float], prefix: str) -> dict[str, float]:
    return {k: v for k, v in metrics.items() if k.startswith(prefix)}


def _maybe_compile(model: torch.nn.Module, cfg: TrainConfig, device: torch.device, total_steps: int):
    wanted = cfg.compile == "on" or (cfg.compile == "auto" and device.type == "cuda"
                                      and total_steps >= COMPILE_MIN_STEPS)
    return torch.compile(model) if wanted else model


def _explain(exc: BaseException) -> str:
    """A message a person can act on, for the failures people actually meet."""
    if isinstance(exc, TrainingFailed):
        return str(exc)
    if isinstance(exc, (DiskFull, CheckpointError)):
        return str(exc)
    if is_out_of_memory(exc):
        return (f"out of memory ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__}). Lower batch_size, "
                "raise freeze_ratio, or set image_size smaller.")
    if isinstance(exc, OSError) and getattr(exc, "filename", None):
        return f"could not read {exc.filename}: {exc.strerror or exc}. Remove or replace the file and resume."
    if isinstance(exc, (UnidentifiedImageError, ImageError)):
        return f"an image could not be decoded ({exc}). Run `python -m core audit` on the data and fix the file."
    return str(exc) or type(exc).__name__
