"""The training loop. It reads top to bottom: set up, baseline, then stages of epochs of batches.

It knows nothing of the UI: everything it has to say goes out as events through one dispatcher, and the
only way in is `should_stop`, checked at batch boundaries. Checkpoints are written at each epoch's end
(the full state for resuming) and whenever validation loss improves (the best model).

Its helpers, one job each, live beside it in core.train: memory, mixing, scores, wise_ft, optim, state,
predict, probe, ending (after the last epoch), failures and explain.
"""
from __future__ import annotations

import math
import os
import time
import traceback
from typing import Any, Callable

import numpy as np
import torch

from core.config import TrainConfig
from core.data.split_data import SplitData
from core.metrics import classification_metrics
from core.model.backbones import load_backbone
from core.model.cache import cache_bytes, memory_budget
from core.model.checkpoint import copy_model, load_train_state, read_weights, save_model
from core.model.transfer import TransferModel
from core.runtime import device_name, resolve_amp, resolve_device, seed_everything
from core.train.augment import augment_batch
from core.train.batches import BatchSource
from core.train.ending import final_outcome, run_summary, second_opinion
from core.train.events import (
    BaselineDone,
    BatchEnd,
    Dispatcher,
    EpochEnd,
    Failed,
    Finished,
    GradientStats,
    Note,
    RunStarted,
    StageChanged,
    Validated,
)
from core.train.explain import explain
from core.train.failures import TrainingFailed
from core.train.gradients import POINTS_PER_EPOCH, GradientMonitor
from core.train.losses import make_loss
from core.train.memory import check_memory, is_out_of_memory, micro_batches, split_further
from core.train.mixing import mix_batch
from core.train.optim import l2sp_penalty, make_optimizer, new_ema
from core.train.outcome import FINE_TUNED, PROBE, choose
from core.train.predict import predict
from core.train.probe import linear_probe, set_head, set_starting_head
from core.train.schedules import make_scheduler
from core.train.scores import better, monitor_score
from core.train.state import Checkpoints, LoopState, load_state, save_state, saved_loop_state
from core.train.wise_ft import wise_ft

COMPILE_MIN_STEPS = 1500  # below this, torch.compile's 16-40 s warm-up costs more than it saves


def stage_frozen_counts(initial_frozen: int, stages: int) -> list[int]:
    """Frozen-group count per stage: stage 0 as configured, each later stage unfreezing an equal share."""
    if stages == 0 or initial_frozen == 0:
        return [initial_frozen]
    share = math.ceil(initial_frozen / stages)
    return [max(0, initial_frozen - k * share) for k in range(stages + 1)]


# ------------------------------------------------------------------------------------------ the run
class Trainer:
    def __init__(self, run_id: str, config: TrainConfig, data: SplitData, run_dir: str, dispatcher: Dispatcher,
                 should_stop: Callable[[], bool] = lambda: False, second_opinion: Callable | None = None):
        """`second_opinion(epochs, progress)`: a check of fine-tuning against the probe on more images than the
        validation split (core.train.crossval), asked only when a small validation split cannot tell them apart."""
        self.run_id, self.config, self.data, self.run_dir = run_id, config.validate(), data, run_dir
        self.dispatcher, self.should_stop, self.second_opinion = dispatcher, should_stop, second_opinion
        self.ckpt = Checkpoints.of(run_dir)
        self.fine_tuning, self.ema, self.anchor, self.l2sp_pairs = False, None, {}, []
        self._accumulate = 1  # micro-batches per batch (LoopState.accumulate), for evaluation passes too

    def emit(self, event) -> None:
        self.dispatcher.emit(event)

    def run(self, resume: bool = False) -> dict[str, Any]:
        """Train to the end; returns the summary. Failures are emitted as `Failed` and re-raised."""
        try:
            return self._run(resume)
        except Exception as exc:
            message = explain(exc)
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
        saved = load_train_state(self.ckpt.state) if resume and os.path.exists(self.ckpt.state) else None
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
            set_head(model, weight, bias)
            self._start_stage(0)
            self._close_epoch(state, {**self._validate(), **{f"lr_{k}": v for k, v in self._lrs().items()}},
                              started=time.time(), count=False)
            # 3. the head fine-tuning starts from: a fresh one (default), or the probe's (LP-FT), refitted on
            #    re-estimated statistics where trainable BatchNorm layers will normalise with batch statistics
            set_starting_head(model, cfg, self.train_src, fresh_head, len(data.classes), self.amp)
            self.ema = new_ema(self.model, self.config, self.steps_per_epoch)
            # the state a resume starts from is the one fine-tuning starts from: after the head's reset or
            # refit (a kill in the first epoch must not resume from the probe's head)
            self._save_state(state)
        else:
            self._start_stage(0, restoring=True)
            self.ema = new_ema(self.model, self.config, self.steps_per_epoch)
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
        self.optimizer, self.l2sp_pairs = make_optimizer(model, cfg, lr, self.anchor)
        epochs = cfg.epochs if stage == 0 else cfg.stage_epochs
        head_only = int(cfg.head_warmup_epochs * self.steps_per_epoch) if stage == 0 else 0
        self.per_step, self.plateau = make_scheduler(self.optimizer, cfg.schedule, epochs * self.steps_per_epoch,
                                                     self.steps_per_epoch, cfg.warmup_epochs, cfg.step_epochs,
                                                     cfg.plateau_patience, head_only)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp == torch.float16)
        self.gradients = GradientMonitor(model, self.steps_per_epoch // POINTS_PER_EPOCH) if cfg.grad_stats else None
        if stage > 0 and not restoring:
            save_model(model, self.ckpt.stage, self._meta({}))

    def _next_stage(self, state: LoopState) -> bool:
        """Close the current stage: revert it if validation got worse, else unfreeze the next share."""
        if state.stage > 0 and not better(state.best_score, state.stage_start_score):
            self._load_weights(self.ckpt.stage)
            self.model.freeze_groups(self.stage_counts[state.stage - 1])
            self.emit(StageChanged(self.run_id, state.stage, self.stage_counts[state.stage - 1], True,
                                   f"stage {state.stage} did not improve {self.config.monitor}; reverted to its start"))
            return False
        if state.stage + 1 >= len(self.stage_counts):
            return False
        if os.path.exists(self.ckpt.tuned):  # each stage starts from the best fine-tuned weights so far
            self._load_weights(self.ckpt.tuned)
        state.stage, state.epoch_in_stage, state.bad_epochs = state.stage + 1, 0, 0
        state.stage_start_score = state.best_score
        self._start_stage(state.stage)
        self.ema = new_ema(self.model, self.config, self.steps_per_epoch)
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
                    part_loss = part_loss + l2sp_penalty(cfg.l2sp, self.l2sp_pairs)
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
            save_model(self.model, self.ckpt.probe, self._meta({"epoch": 0, **_pick(metrics, "val_")}))
            save_model(self.model, self.ckpt.best, self._meta({"epoch": 0, **_pick(metrics, "val_")}))
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
                save_model(self._scored(), self.ckpt.tuned, self._meta({"epoch": state.epoch, **_pick(metrics, "val_")}))
                improved_tuned = True
            else:
                improved_tuned = False
            kept, state.kept_rule = choose(self.data.val.labels, state.probe_val_pred, state.best_val_pred,
                                           better(state.best_score, state.probe_score), len(self.data.classes),
                                           self.config.monitor, self.config.seed)
            if kept != state.kept or (kept == FINE_TUNED and improved_tuned):
                copy_model(self.ckpt.tuned if kept == FINE_TUNED else self.ckpt.probe, self.ckpt.best)
                saved = True
            state.kept = kept
            self._save_state(state)
        metrics["epoch_seconds"] = time.time() - started
        state.history.append({"epoch": state.epoch, **metrics})
        self.emit(EpochEnd(self.run_id, state.epoch, state.step, metrics, saved, self.ckpt.best))

    def _after_out_of_memory(self, state: LoopState, exc: BaseException) -> LoopState:
        """Out of memory in an epoch: back to the epoch's start (its saved state) and the same effective
        batch in twice as many micro-batches (core.train.memory.split_further)."""
        bs = self.config.batch_size
        self.optimizer.zero_grad(set_to_none=True)
        accumulate, first = split_further(exc, state.accumulate, self.config, self.device,
                                          os.path.exists(self.ckpt.state))
        state = self._restore(load_train_state(self.ckpt.state))
        state.accumulate = self._accumulate = accumulate
        self.emit(Note(self.run_id, f"out of memory on {device_name(self.device)} at epoch {state.epoch + 1} "
                                    f"({first}); retrying the epoch in micro-batches of {-(-bs // accumulate)} "
                                    f"images, {accumulate} per step, so the effective batch stays {bs}"))
        return state

    def _scored(self) -> torch.nn.Module:
        """The weights validation scores and the best checkpoint keeps: the EMA's while fine-tuning with one."""
        return self.ema.module if self.ema is not None and self.fine_tuning else self.model

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

    def _predict(self, source: BatchSource, model: torch.nn.Module | None = None, exact: bool = False
                 ) -> tuple[np.ndarray, np.ndarray, float]:
        """(true labels, predicted labels, mean cross-entropy) of a split (core.train.predict). Validation
        during training runs under the run's autocast (bf16 halves its time on a CPU that has it); `exact`
        passes, the figures a run reports at its end, run in fp32: the numbers `python -m core evaluate` and
        an exported model give (bf16 moved 1 test image in 53 on emoji)."""
        cfg = self.config
        return predict(model or self._scored(), source, self.pre, self.device, None if exact else self.amp,
                       self._accumulate, cfg.tta and cfg.augment.hflip, cfg.channels_last, self.eval_loss)

    # --- state, checkpoints, the end ---------------------------------------------------------------
    def _lrs(self) -> dict[str, float]:
        return {g["name"]: g["lr"] for g in self.optimizer.param_groups}

    def _meta(self, extra: dict[str, Any]) -> dict[str, Any]:
        return {"run_id": self.run_id, "architecture_name": self.backbone.entry.name,
                "architecture": self.backbone.entry.architecture, "weights_source": self.backbone.weights_source,
                "classes": list(self.data.classes), "preprocess": self.pre.to_dict(),
                "config": self.config.to_dict(), "data": self.data.describe(), **extra}

    def _save_state(self, state: LoopState) -> None:
        save_state(self.ckpt.state, state, self.model, self.optimizer, self.per_step, self.plateau, self.scaler,
                   self.ema)

    def _restore(self, saved: dict[str, Any]) -> LoopState:
        state = saved_loop_state(saved)
        if state.stage:
            self._start_stage(state.stage, restoring=True)
        load_state(saved, self.model, self.optimizer, self.per_step, self.plateau, self.scaler, self.ema)
        self._accumulate = state.accumulate
        return state

    def _load_weights(self, path: str) -> None:
        self.model.load_state_dict(read_weights(path, str(self.device)))

    def _finish(self, state: LoopState, status: str, seconds: float) -> dict[str, Any]:
        if status != "stopped":
            second_opinion(self, state)
        if os.path.exists(self.ckpt.best):
            self._load_weights(self.ckpt.best)
        extra: dict[str, Any] = {}
        if self.config.wise_ft and status != "stopped" and state.best_epoch > 0 and os.path.exists(self.ckpt.tuned):
            extra["wise_ft_alpha"] = wise_ft(  # leaves the mix chosen on validation loaded
                self.model, self.ckpt.probe, self.ckpt.tuned, str(self.device), lambda: monitor_score(
                    self._evaluate(self.val_src, "val_", self.model), self.config.monitor))
        metrics = {**self._evaluate(self.val_src, "val_", exact=True),
                   **self._evaluate(self.test_src, "test_", exact=True)}
        outcome = final_outcome(self, state, extra.get("wise_ft_alpha"))
        summary = run_summary(self, state, status, seconds, metrics, outcome, extra)
        if status != "stopped" and summary["best_checkpoint"]:
            save_model(self.model, self.ckpt.best, self._meta({"epoch": outcome.best_epoch, "kept": outcome.kept,
                                                               **metrics, **extra}))
        self.emit(Finished(self.run_id, status, summary))
        return summary


def _pick(metrics: dict[str, float], prefix: str) -> dict[str, float]:
    return {k: v for k, v in metrics.items() if k.startswith(prefix)}


def _maybe_compile(model: torch.nn.Module, cfg: TrainConfig, device: torch.device, total_steps: int):
    wanted = cfg.compile == "on" or (cfg.compile == "auto" and device.type == "cuda"
                                      and total_steps >= COMPILE_MIN_STEPS)
    return torch.compile(model) if wanted else model
