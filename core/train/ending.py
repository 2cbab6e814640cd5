"""What happens after a run's last epoch (``core.train.loop``'s ``Trainer._finish``): the second opinion a
small validation split may need, the kept model's ``Outcome`` against the probe, and the run's summary.
Each takes the finished ``Trainer`` (untyped here: core.train.loop imports this module).
"""
from __future__ import annotations

import os
from typing import Any

from core.model.checkpoint import copy_model
from core.runtime import device_name
from core.train.advisor import advise_run
from core.train.events import Note
from core.train.gradients import adaptation_summary
from core.train.outcome import FINE_TUNED, PROBE, SMALL_VAL_PER_CLASS, Outcome, compare
from core.train.state import LoopState


def second_opinion(trainer, state: LoopState) -> None:
    """A small validation split that cannot tell the best fine-tuning epoch from the probe: ask again on
    more images (core.train.crossval), and keep what that says."""
    cfg, data, ckpt = trainer.config, trainer.data, trainer.ckpt
    if trainer.second_opinion is None or state.best_epoch <= 0 or not cfg.crossval_folds:
        return
    y_val = data.val.labels
    if len(y_val) >= SMALL_VAL_PER_CLASS * len(data.classes):
        return
    c = compare("val", y_val, state.best_val_pred, state.probe_val_pred, cfg.seed)
    if c is None or c.clear:
        return
    trainer.emit(Note(trainer.run_id, f"validation cannot tell the fine-tuned model from the probe ({c.n} images): "
                                      f"a {cfg.crossval_folds}-fold check on train+val decides"))
    check = trainer.second_opinion(state.best_epoch, lambda m: trainer.emit(Note(trainer.run_id, m)))
    if check is None:
        return
    kept = FINE_TUNED if check.comparison.difference > 0 else PROBE
    if kept != state.kept:
        copy_model(ckpt.tuned if kept == FINE_TUNED else ckpt.probe, ckpt.best)
    state.kept, state.kept_rule = kept, check.describe()
    trainer._save_state(state)


def final_outcome(trainer, state: LoopState, alpha: float | None) -> Outcome:
    """The loaded (kept) model against the probe's weights, image by image on val and test (`alpha`: the
    WiSE-FT share, when the kept model is a mix)."""
    cfg, model = trainer.config, trainer.model
    if alpha is not None:
        kept = PROBE if alpha == 0.0 else FINE_TUNED if alpha == 1.0 else f"WiSE-FT mix (a={alpha:g})"
        decided = (f"the WiSE-FT mix of the probe and the best fine-tuning epoch chosen on validation "
                   f"{cfg.monitor.removeprefix('val_').replace('_', '-')} ({len(trainer.data.val)} images)")
    else:
        kept, decided = state.kept, state.kept_rule
    notes = ()
    if state.best_epoch > 0:
        best = next((h for h in state.history if h["epoch"] == state.best_epoch), {})
        if "val_accuracy" in best:
            notes = (f"the best fine-tuning epoch ({state.best_epoch} of {state.epoch}) scored "
                     f"{best['val_accuracy']:.1%} validation accuracy",)
    splits = [(name, src) for name, src in (("val", trainer.val_src), ("test", trainer.test_src)) if len(src)]
    kept_preds = {name: trainer._predict(src, model, exact=True)[:2] for name, src in splits}
    if kept != PROBE and os.path.exists(trainer.ckpt.probe):
        final = {k: v.detach().clone() for k, v in model.state_dict().items()}
        trainer._load_weights(trainer.ckpt.probe)
        probe_preds = {name: trainer._predict(src, model, exact=True)[1] for name, src in splits}
        model.load_state_dict(final)
    else:
        probe_preds = {name: kept_preds[name][1] for name, _ in splits}
    comparisons = tuple(c for c in (compare(name, *kept_preds[name], probe_preds[name], cfg.seed)
                                    for name, _ in splits) if c is not None)
    return Outcome(kept, state.best_epoch if kept != PROBE else 0, decided, comparisons, notes)


def run_summary(trainer, state: LoopState, status: str, seconds: float, metrics: dict[str, float],
                outcome: Outcome, extra: dict[str, Any]) -> dict[str, Any]:
    """The summary a run ends with (core.train.events.Finished carries it; the run store keeps it)."""
    cfg, data, model, best = trainer.config, trainer.data, trainer.model, trainer.ckpt.best
    counts = dict(zip(data.classes, data.class_counts()))
    return {"run_id": trainer.run_id, "status": status,
            "best_checkpoint": best if os.path.exists(best) else None,
            "best_epoch": outcome.best_epoch, "best_tuned_epoch": state.best_epoch,
            "epochs_run": state.epoch, "steps": state.step,
            "stage": state.stage, "metrics": metrics, "baseline": state.baseline,
            "device": device_name(trainer.device), "seconds": round(seconds, 2),
            "cached": trainer.train_src.images is not None, "outcome": outcome.to_dict(),
            "advice": [a.to_dict() for a in advise_run(state.history, cfg.to_dict(), counts, finished=True,
                                                       kept=outcome.kept)],
            "adaptation": adaptation_summary(state.gradients, model.frozen_groups, len(model.groups),
                                             cfg.freeze_ratio)["sentence"],
            "layer_groups": len(model.groups), "frozen_groups": model.frozen_groups, **extra}
