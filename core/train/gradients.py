"""Where a run adapts: per layer group, the gradient norm and the update-to-weight ratio every few steps,
and what they say about the freeze ratio and the next unfreezing stage.

The update-to-weight ratio ||w_after - w_before|| / ||w_before|| of one optimizer step is the figure
practitioners watch (around 1e-3 is a healthy rate; far above, the group is being rewritten; far below,
it is not learning). Frozen groups have no gradient and no update: both figures are 0 for them.
"""
from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import torch

HEAD = "head"
POINTS_PER_EPOCH = 4  # statistics this many times an epoch: enough for a heat map, cheap (one weight copy each)
STILL = 0.01  # a group moving at under 1% of the fastest group's rate barely adapts
DEEP = 0.3  # the lowest trainable group moving at 30%+ of the fastest: the adaptation reaches the frozen edge
HIGH_RATE = 1e-2  # a group whose weights change by 1% per step is being rewritten, not fine-tuned


def group_names(num_groups: int) -> list[str]:
    """Trunk groups in forward order, then the head: the heat map's rows from the input up."""
    return [f"group{i}" for i in range(num_groups)] + [HEAD]


class GradientMonitor:
    """Collects the statistics of one optimizer step: `capture()` after backward, `finish()` after the step."""

    def __init__(self, model, every: int):
        self.every = max(1, every)
        self.groups: list[tuple[str, list[torch.nn.Parameter]]] = [
            (f"group{i}", [p for m in model.group_modules(i) for p in m.parameters()]) for i in range(len(model.groups))]
        self.groups.append((HEAD, list(model.head.parameters()) + list(model.adapter.parameters())))
        self._before: list[list[torch.Tensor]] | None = None
        self._grads: dict[str, float] = {}

    def due(self, step: int) -> bool:
        return step % self.every == 0

    @torch.no_grad()
    def capture(self, grad_scale: float = 1.0) -> None:
        """Gradient norms (unscaled) and a copy of the trainable weights, before the optimizer moves them."""
        self._grads, self._before = {}, []
        for name, params in self.groups:
            grads = [p.grad for p in params if p.requires_grad and p.grad is not None]
            norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g.float()) for g in grads])) \
                if grads else torch.zeros(())
            self._grads[name] = float(norm) / grad_scale
            self._before.append([p.detach().clone() if p.requires_grad else None for p in params])

    @torch.no_grad()
    def finish(self) -> dict[str, float]:
        """{"grad_norm/<group>": ..., "update_ratio/<group>": ...} for every group, 0 for frozen ones."""
        out: dict[str, float] = {}
        for (name, params), before in zip(self.groups, self._before or []):
            moved = [(p.detach().float() - b.float(), b.float()) for p, b in zip(params, before) if b is not None]
            if moved:
                delta = math.sqrt(sum(float((d * d).sum()) for d, _ in moved))
                weight = math.sqrt(sum(float((w * w).sum()) for _, w in moved))
                ratio = delta / weight if weight > 0 else 0.0
            else:
                ratio = 0.0
            out[f"grad_norm/{name}"] = self._grads.get(name, 0.0)
            out[f"update_ratio/{name}"] = ratio
        self._before = None
        return out


# ------------------------------------------------------------------------------------------ reading
def mean_rates(rows: Sequence[Mapping[str, Any]], recent: float = 0.5) -> dict[str, float]:
    """Mean update-to-weight ratio per group over the latest `recent` share of the points."""
    rows = list(rows)[int(len(rows) * (1 - recent)):] if rows else []
    rates: dict[str, list[float]] = {}
    for row in rows:
        for key, value in row.items():
            if key.startswith("update_ratio/") and isinstance(value, (int, float)):
                rates.setdefault(key.split("/", 1)[1], []).append(float(value))
    return {k: sum(v) / len(v) for k, v in rates.items()}


def adaptation_summary(rows: Sequence[Mapping[str, Any]], frozen_groups: int, num_groups: int,
                       freeze_ratio: float) -> dict[str, Any]:
    """Which groups carry the adaptation and what that suggests, as a sentence and its evidence."""
    rates = mean_rates(rows)
    trainable = [f"group{i}" for i in range(frozen_groups, num_groups)] + [HEAD]
    moving = {g: rates.get(g, 0.0) for g in trainable}
    fastest = max(moving.values(), default=0.0)
    if not rows or fastest <= 0:
        return {"sentence": "", "rates": rates}
    carry = [g for g, r in moving.items() if r >= 0.1 * fastest]
    parts = [f"The adaptation is carried by {_names(carry)} (update/weight ratio "
             f"{', '.join(f'{moving[g]:.1e}' for g in carry)} per step)."]
    trunk = [g for g in trainable if g != HEAD]
    advice = {"carry": carry}
    if trunk:
        lowest = trunk[0]
        share = moving[lowest] / fastest
        still = [g for g in trunk if moving[g] < STILL * fastest]
        if still and len(still) < len(trunk) + 1:
            keep_frozen = frozen_groups + len(still) if still == trunk[:len(still)] else frozen_groups
            if keep_frozen > frozen_groups:
                ratio = keep_frozen / num_groups
                parts.append(f"{_names(still)} barely change (under {STILL:.0%} of the fastest rate): freezing them "
                             f"too (freeze_ratio {ratio:.2f} instead of {freeze_ratio:.2f}) would cost little and "
                             "train faster.")
                advice["freeze_ratio"] = round(ratio, 2)
        elif share >= DEEP and frozen_groups > 0:
            parts.append(f"The lowest trainable group ({lowest}) still changes at {share:.0%} of the fastest rate: "
                         "the adaptation reaches the frozen layers' edge, so a next unfreezing stage "
                         "(unfreeze_stages) or a lower freeze_ratio may help if validation is still improving.")
            advice["unfreeze"] = True
    hot = [g for g in trainable if moving[g] > HIGH_RATE]
    if hot:
        parts.append(f"{_names(hot)} change by over {HIGH_RATE:.0%} of their weights per step: the learning rate is "
                     "high for them.")
        advice["lower_lr"] = hot
    return {"sentence": " ".join(parts), "rates": rates, **advice}


def _names(groups: Sequence[str]) -> str:
    if len(groups) <= 3:
        return " and ".join(groups) if len(groups) < 3 else f"{groups[0]}, {groups[1]} and {groups[2]}"
    return f"{groups[0]} ... {groups[-1]} ({len(groups)} groups)"
