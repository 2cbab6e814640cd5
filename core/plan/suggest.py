"""Settings suggested by the data and the machine, each with the reason a person can read.

The defaults in TrainConfig suit most datasets; these rules change only what the audit gives a reason
to change: focal loss for imbalanced classes, more trainable layers for images unlike ImageNet, and
on a CPU an input size near the images' own size instead of upscaling small images to 224 px.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from core.config import TrainConfig
from core.data.audit import IMBALANCE_WARN_RATIO
from core.data.audit_report import AuditReport

DOMAIN_GAP = 0.15  # largest per-channel mean difference from the model's normalisation (the audit's)
CPU_MIN_SIZE = 64  # pretrained features degrade fast below this
# a first run in about a minute on a laptop CPU: the demo at 64 px, 5 epochs took 38 s on this 2-core machine
# (`python -m core train demo --set image_size=64 epochs=5 augment.hflip=false`) and beat its linear probe on
# validation (macro-F1 0.948 vs 0.922); 2 epochs did not (0.915)
QUICK_CPU = {"image_size": 64, "epochs": 5}
QUICK_GPU = {"epochs": 5}


@dataclass(frozen=True)
class Suggestion:
    changes: dict[str, Any] = field(default_factory=dict)  # TrainConfig field -> value
    reasons: tuple[str, ...] = ()  # one sentence per change

    def apply(self, config: TrainConfig) -> TrainConfig:
        return config.replace(**self.changes)


def suggest_settings(report: AuditReport, device: str = "cpu", native_input_size: int = 224) -> Suggestion:
    changes: dict[str, Any] = {}
    reasons: list[str] = []
    if report.imbalance_ratio >= IMBALANCE_WARN_RATIO:
        changes["loss"] = "focal"
        reasons.append(f"Focal loss: the classes are imbalanced {report.imbalance_ratio:g}:1, and focal loss "
                       "keeps the large classes from drowning out the small ones.")
    gap = max(abs(a - b) for a, b in zip(report.data_stats.mean, report.model_mean))
    if gap > DOMAIN_GAP:
        changes["freeze_ratio"] = 0.5
        reasons.append(f"Freeze 50% of the layers (not 75%): the images' colours differ from ImageNet's by up "
                       f"to {gap:.2f}, so more of the network should adapt to them.")
    median_side = min(report.sizes.median_width, report.sizes.median_height)
    if device == "cpu" and 0 < median_side < native_input_size:
        size = max(CPU_MIN_SIZE, int(math.ceil(median_side / 32) * 32))
        if size < native_input_size:
            changes["image_size"] = size
            reasons.append(f"Image size {size} px: the images are about {median_side:g} px, so upscaling them to "
                           f"{native_input_size} px adds no detail, and on this CPU costs "
                           f"~{(native_input_size / size) ** 2:.0f}x the time.")
    return Suggestion(changes, tuple(reasons))


def quick_start(device: str = "cpu", demo: bool = False) -> dict[str, Any]:
    """Settings for a first run that finishes in a minute or two (small images on a CPU, few epochs).

    `demo`: for the bundled digits, whose mirror images are other symbols, so no horizontal flips.
    """
    settings = dict(QUICK_CPU if device == "cpu" else QUICK_GPU)
    if demo:
        settings["augment"] = {"hflip": False}
    return settings
