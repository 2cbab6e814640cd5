"""Did fine-tuning earn its keep? The run's kept model against its own linear probe, on validation and test.

Both models predicted the same images, so the difference in accuracy is paired: its 95% interval is a
bootstrap over the images of (model right) - (probe right), which is far narrower than two separate
intervals would suggest. The sentence says which model was kept, by how much it differs from the probe
on each split, and whether the difference is more than the images can tell apart.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

import numpy as np

from core.stats import bootstrap_mean_interval

FINE_TUNED, PROBE = "fine-tuned", "linear probe"
# below this many validation images per class, one validation split is small: the decision says how little it
# can tell apart (and, with decide_small_val="kfold", a cross-validated check decides; core.train.crossval)
SMALL_VAL_PER_CLASS = 30


@dataclass(frozen=True)
class Comparison:
    """The kept model against the probe on one split."""

    split: str
    n: int
    model: float  # accuracy
    probe: float
    difference: float  # model - probe
    interval: tuple[float, float]  # paired bootstrap 95% interval of the difference

    @property
    def clear(self) -> bool:
        """The interval excludes zero: the images tell the two apart."""
        return self.interval[0] > 0 or self.interval[1] < 0

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "clear": self.clear}


def compare(split: str, y_true: Sequence[int], y_model: Sequence[int], y_probe: Sequence[int],
            seed: int = 0) -> Comparison | None:
    y_true, y_model, y_probe = (np.asarray(v, dtype=np.int64) for v in (y_true, y_model, y_probe))
    if not len(y_true):
        return None
    delta = (y_model == y_true).astype(np.float64) - (y_probe == y_true)
    lo, hi = bootstrap_mean_interval(delta, seed=seed)
    return Comparison(split, len(y_true), float((y_model == y_true).mean()), float((y_probe == y_true).mean()),
                      float(delta.mean()), (lo, hi))


def choose(y_val: Sequence[int], probe_pred: Sequence[int], tuned_pred: Sequence[int], tuned_better: bool,
           num_classes: int, monitor: str = "val_macro_f1", seed: int = 0) -> tuple[str, str]:
    """Keep the probe or the best fine-tuning epoch? Returns (FINE_TUNED or PROBE, the rule in words).

    The fine-tuned model is kept when it beats the probe on the monitored validation metric (`tuned_better`;
    ties go to the lower loss, then to the probe). Measured against the alternatives on six datasets
    (docs/BENCHMARKS.md, `benchmarks/bench_recipes.py --rules`): keeping the fine-tuned model unless the
    probe wins beyond the paired interval, or shrinking the difference toward the recipe's record, lost
    1-3 points where the probe was already near perfect and gained nothing elsewhere. With fewer than
    SMALL_VAL_PER_CLASS validation images per class the rule says so and gives the paired interval, which
    is then wide: the decision is close to a coin toss when the two models are close.
    """
    n = len(y_val)
    if len(tuned_pred) == 0 or not n:
        return PROBE, "no fine-tuning epoch yet"
    per_class = n / max(1, num_classes)
    metric = monitor.removeprefix("val_").replace("_", "-")
    kept = FINE_TUNED if tuned_better else PROBE
    if per_class >= SMALL_VAL_PER_CLASS:
        return kept, f"validation {metric} on {n} images ({per_class:.0f} per class)"
    c = compare("val", y_val, tuned_pred, probe_pred, seed)
    span = f"{c.interval[0] * 100:+.1f} to {c.interval[1] * 100:+.1f} points"
    if c.clear:
        return kept, (f"validation {metric} on {n} images ({per_class:.0f} per class: a small split, but the paired "
                      f"95% interval of the accuracy difference, {span}, excludes zero)")
    return kept, (f"validation {metric} on {n} images ({per_class:.0f} per class: too few to tell the two apart; "
                  f"the paired 95% interval of the accuracy difference is {span})")


@dataclass(frozen=True)
class Outcome:
    kept: str  # "fine-tuned", "linear probe", or "WiSE-FT mix (a=0.6)"
    best_epoch: int
    decided_by: str  # what chose the kept model, in words
    comparisons: tuple[Comparison, ...] = ()
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def is_probe(self) -> bool:
        return self.kept == PROBE

    def get(self, split: str) -> Comparison | None:
        return next((c for c in self.comparisons if c.split == split), None)

    def sentence(self) -> str:
        val, test = self.get("val"), self.get("test")
        if self.is_probe:
            text = (f"Fine-tuning did not beat the linear probe on validation ({self.decided_by}), so the saved model "
                    "is the probe itself: the frozen pretrained network with a fitted linear head.")
            if test is not None:
                text += f" Its test accuracy is {test.probe:.1%} on {test.n} images."
            return text
        parts = []
        for c in (test, val):
            if c is None:
                continue
            size = f"{c.difference * 100:+.1f} points, 95% interval {c.interval[0] * 100:+.1f} to {c.interval[1] * 100:+.1f}"
            if c.clear and c.difference > 0:
                verdict = "beat the linear probe"
            elif c.clear:
                verdict = "fell below the linear probe"
            elif c.difference > 0:
                verdict = "scored above the linear probe, within what these images can tell apart,"
            elif c.difference < 0:
                verdict = "scored below the linear probe, within what these images can tell apart,"
            else:
                verdict = "tied with the linear probe"
            name = "test" if c.split == "test" else "validation"
            parts.append(f"on {name} it {verdict}: {c.model:.1%} against {c.probe:.1%} ({size}, {c.n} images)")
        what = "The fine-tuned model" if self.kept == FINE_TUNED else f"The kept model ({self.kept})"
        return f"{what} was chosen by {self.decided_by}; " + "; ".join(parts) + "."

    def to_dict(self) -> dict[str, Any]:
        return {"kept": self.kept, "best_epoch": self.best_epoch, "decided_by": self.decided_by,
                "comparisons": {c.split: c.to_dict() for c in self.comparisons}, "notes": list(self.notes),
                "sentence": self.sentence()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Outcome":
        comparisons = tuple(Comparison(c["split"], c["n"], c["model"], c["probe"], c["difference"],
                                       tuple(c["interval"])) for c in d.get("comparisons", {}).values())
        return cls(d["kept"], d["best_epoch"], d["decided_by"], comparisons, tuple(d.get("notes", ())))
