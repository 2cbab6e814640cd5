"""What errors cost: a model's confusion on the test split priced per error and scaled to monthly volume.

A misclassification of an image of class t as class p is a false negative for t and a false positive for
p, so it costs  error_cost + false_negative_cost[t] + false_positive_cost[p]. (For a two-class problem
with a "positive" class, set that class's costs; the other class's then follow by symmetry.) The expected
cost per image is the mean over the test images; times the monthly volume, the cost per month, with a
bootstrap 95% interval over the test images.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from core.errors import StudioError
from core.stats import bootstrap_mean_interval


class CostError(StudioError, ValueError):
    """Costs given in a form we cannot use; the message says what is expected."""


@dataclass(frozen=True)
class CostModel:
    monthly_volume: float = 0.0  # images the model classifies per month
    error_cost: float = 0.0  # cost of any misclassification
    false_positive_cost: dict[str, float] = field(default_factory=dict)  # class -> cost of wrongly predicting it
    false_negative_cost: dict[str, float] = field(default_factory=dict)  # class -> cost of missing it
    default_false_positive_cost: float = 0.0  # for classes not named above
    default_false_negative_cost: float = 0.0
    currency: str = ""  # a label for reports ("EUR", "$"), nothing is converted

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "CostModel":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise CostError(f"unknown cost setting(s) {', '.join(unknown)}; valid: {', '.join(sorted(known))}")
        return cls(**d)

    def matrix(self, classes: Sequence[str]) -> np.ndarray:
        """(C, C) cost of predicting column p for an image of row class t; zero on the diagonal."""
        unknown = sorted((set(self.false_positive_cost) | set(self.false_negative_cost)) - set(classes))
        if unknown:
            raise CostError(f"costs name unknown class(es) {', '.join(unknown)}; classes: {', '.join(classes)}")
        fp = np.array([self.false_positive_cost.get(c, self.default_false_positive_cost) for c in classes], float)
        fn = np.array([self.false_negative_cost.get(c, self.default_false_negative_cost) for c in classes], float)
        m = self.error_cost + fn[:, None] + fp[None, :]
        np.fill_diagonal(m, 0.0)
        return m


@dataclass(frozen=True)
class ModelCost:
    model: str
    error_rate: float  # share of test images misclassified
    errors_per_month: float  # expected: error rate x volume, a fraction (pages and reports show it rounded)
    cost_per_image: float
    cost_per_month: float
    cost_per_month_interval: tuple[float, float]  # bootstrap 95% over the test images

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def error_costs(y_true, predictions: dict[str, Any], classes: Sequence[str], costs: CostModel, seed: int = 0
                ) -> tuple[ModelCost, ...]:
    """The cost of each model's errors on the same test images; `predictions` maps model name -> labels."""
    y_true = np.asarray(y_true, dtype=np.int64)
    matrix = costs.matrix(classes)
    rows = []
    for name, y_pred in predictions.items():
        y_pred = np.asarray(y_pred, dtype=np.int64)
        per_image = matrix[y_true, y_pred]
        lo, hi = bootstrap_mean_interval(per_image, seed=seed)
        error_rate = float(np.mean(y_pred != y_true)) if len(y_true) else 0.0
        rows.append(ModelCost(name, error_rate, error_rate * costs.monthly_volume, float(per_image.mean()),
                              float(per_image.mean()) * costs.monthly_volume,
                              (lo * costs.monthly_volume, hi * costs.monthly_volume)))
    return tuple(rows)


def cost_model(monthly_volume: float = 0.0, error_cost: float = 0.0, false_positive: str | None = None,
               false_negative: str | None = None, currency: str = "") -> CostModel:
    """A CostModel from what a person types: the per-class costs as `parse_class_costs` reads them."""
    fp_default, fp = parse_class_costs(false_positive)
    fn_default, fn = parse_class_costs(false_negative)
    numbers = {"monthly volume": monthly_volume, "cost of an error": error_cost,
               **{f"false-positive cost of {c}": v for c, v in fp.items()}, "false-positive cost": fp_default,
               **{f"false-negative cost of {c}": v for c, v in fn.items()}, "false-negative cost": fn_default}
    bad = [f"{name} ({value:g})" for name, value in numbers.items() if not np.isfinite(value) or value < 0]
    if bad:
        raise CostError(f"costs and volume must be zero or positive numbers: {', '.join(bad)}")
    return CostModel(float(monthly_volume), float(error_cost), fp, fn, fp_default, fn_default, currency.strip())


def parse_class_costs(text: str | None) -> tuple[float, dict[str, float]]:
    """`"5"` -> (5, {}); `"cat=5,dog=2"` -> (0, {cat: 5, dog: 2}); `"1,cat=5"` -> (1, {cat: 5})."""
    default, per_class = 0.0, {}
    for part in (text or "").split(","):
        part = part.strip()
        if not part:
            continue
        key, sep, value = part.rpartition("=")
        try:
            number = float(value)
        except ValueError:
            raise CostError(f"cost {part!r} is not a number; write 5, or class=5, or 1,cat=5") from None
        if sep:
            per_class[key.strip()] = number
        else:
            default = number
    return default, per_class
