"""Training: the loop, batches, augmentation, losses, schedules, the linear probe, events and the trackers on them.

Its public names, imported on first use (so `import core.train.<module>` stays light):
  advisor: advise_run, advise_setup
  gradients: adaptation_summary
  failures: TrainingFailed
  loop: Trainer, stage_frozen_counts
  trackers: ConsoleProgress
"""
from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {  # name -> the module of this package that defines it
    'ConsoleProgress': 'trackers',
    'Trainer': 'loop',
    'TrainingFailed': 'failures',
    'adaptation_summary': 'gradients',
    'advise_run': 'advisor',
    'advise_setup': 'advisor',
    'stage_frozen_counts': 'loop',
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
