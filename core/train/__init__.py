"""Training: the loop, batches, augmentation, losses, schedules, the linear probe, events and the trackers on them.

Its public names, imported on first use (so `import core.train.<module>` stays light):
  advisor: advise_run, advise_setup
  gradients: adaptation_summary
  failures: TrainingFailed
  loop: Trainer, stage_frozen_counts
  trackers: ConsoleProgress
"""
from __future__ import annotations

from core.lazy import lazy_getattr

_EXPORTS = {  # name -> the module of this package that defines it
    'ConsoleProgress': '.trackers',
    'Trainer': '.loop',
    'TrainingFailed': '.failures',
    'adaptation_summary': '.gradients',
    'advise_run': '.advisor',
    'advise_setup': '.advisor',
    'stage_frozen_counts': '.loop',
}
__all__ = sorted(_EXPORTS)

__getattr__ = lazy_getattr(__name__, _EXPORTS)
