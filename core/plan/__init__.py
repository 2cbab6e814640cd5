"""Planning, before training: the backbone bake-off, cost estimates, suggested settings, the dataset overview.

Its public names, imported on first use (so `import core.plan.<module>` stays light):
  bakeoff: BakeoffError, BakeoffOptions, DEFAULT_MAX_IMAGES, parameters_text, result_rows, task_key, with_random_floor
  estimate: estimate_run, format_bytes, format_seconds, preprocess_for, setup_key, sharing_note
  overview: augmentation_preview, dataset_overview
  suggest: Suggestion, quick_start, suggest_settings
"""
from __future__ import annotations

from core.lazy import lazy_getattr

_EXPORTS = {  # name -> the module of this package that defines it
    'BakeoffError': '.bakeoff',
    'BakeoffOptions': '.bakeoff',
    'DEFAULT_MAX_IMAGES': '.bakeoff',
    'Suggestion': '.suggest',
    'augmentation_preview': '.overview',
    'dataset_overview': '.overview',
    'estimate_run': '.estimate',
    'format_bytes': '.estimate',
    'format_seconds': '.estimate',
    'parameters_text': '.bakeoff',
    'preprocess_for': '.estimate',
    'quick_start': '.suggest',
    'result_rows': '.bakeoff',
    'setup_key': '.estimate',
    'sharing_note': '.estimate',
    'suggest_settings': '.suggest',
    'task_key': '.bakeoff',
    'with_random_floor': '.bakeoff',
}
__all__ = sorted(_EXPORTS)

__getattr__ = lazy_getattr(__name__, _EXPORTS)
