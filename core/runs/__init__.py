"""Runs: the run store, starting and resuming runs, the job manager pages poll, background tasks, curves, comparison.

Its public names, imported on first use (so `import core.runs.<module>` stays light):
  compare: FINISHED, RESUMABLE, config_table, dataset_names, epoch_curves, run_table
  curves: gradient_frame, snapshot_curves, steps_per_epoch
  jobs: JobManager
  launch: load_data, new_run, resume_run, run_inputs, start_run
  runlock: RunLocked
  store: ACTIVE, MAX_NAME, RunNotFound, RunStore
  tasks: BUGS, TaskSnapshot, USER_ERRORS
"""
from __future__ import annotations

from core.lazy import lazy_getattr

_EXPORTS = {  # name -> the module of this package that defines it
    'ACTIVE': '.store',
    'BUGS': '.tasks',
    'FINISHED': '.compare',
    'JobManager': '.jobs',
    'MAX_NAME': '.store',
    'RESUMABLE': '.compare',
    'RunLocked': '.runlock',
    'RunNotFound': '.store',
    'RunStore': '.store',
    'TaskSnapshot': '.tasks',
    'USER_ERRORS': '.tasks',
    'config_table': '.compare',
    'dataset_names': '.compare',
    'epoch_curves': '.compare',
    'gradient_frame': '.curves',
    'load_data': '.launch',
    'new_run': '.launch',
    'resume_run': '.launch',
    'run_inputs': '.launch',
    'run_table': '.compare',
    'snapshot_curves': '.curves',
    'start_run': '.launch',
    'steps_per_epoch': '.curves',
}
__all__ = sorted(_EXPORTS)

__getattr__ = lazy_getattr(__name__, _EXPORTS)
