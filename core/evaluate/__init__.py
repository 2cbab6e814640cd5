"""Evaluation: predictions, metrics, baselines, corruptions and drift, latency, the cost of errors, the report.

Its public names, imported on first use (so `import core.evaluate.<module>` stays light):
  corruptions: CORRUPTIONS, CorruptionError, SEVERITIES
  costs: CostError, cost_model, error_costs
  evaluation: EvaluationError, cell_images, compare_evaluations, evaluate_run
  figures: bakeoff_figure, plot_text, titled
  report: EvaluationOptions, EvaluationReport, FINE_TUNED, build_report, default_report_dir, deployment_rows, model_rows, progress_steps, stored_name, summary_dict, with_costs, write_report
"""
from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {  # name -> the module of this package that defines it
    'CORRUPTIONS': 'corruptions',
    'CorruptionError': 'corruptions',
    'CostError': 'costs',
    'EvaluationError': 'evaluation',
    'EvaluationOptions': 'report',
    'EvaluationReport': 'report',
    'FINE_TUNED': 'report',
    'SEVERITIES': 'corruptions',
    'bakeoff_figure': 'figures',
    'build_report': 'report',
    'cell_images': 'evaluation',
    'compare_evaluations': 'evaluation',
    'cost_model': 'costs',
    'default_report_dir': 'report',
    'deployment_rows': 'report',
    'error_costs': 'costs',
    'evaluate_run': 'evaluation',
    'model_rows': 'report',
    'plot_text': 'figures',
    'progress_steps': 'report',
    'stored_name': 'report',
    'summary_dict': 'report',
    'titled': 'figures',
    'with_costs': 'report',
    'write_report': 'report',
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
