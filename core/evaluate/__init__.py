"""Evaluation: predictions, metrics, baselines, corruptions and drift, latency, the cost of errors, the report.

Its public names, imported on first use (so `import core.evaluate.<module>` stays light):
  corruptions: CORRUPTIONS, CorruptionError, SEVERITIES
  costs: CostError, cost_model, error_costs
  evaluation: EvaluationError, cell_images, compare_evaluations, evaluate_run
  figures: bakeoff_figure, plot_text, titled
  report: EvaluationOptions, EvaluationReport, FINE_TUNED, build_report, progress_steps, stored_name, with_costs
  report_files: default_report_dir, summary_dict, write_report
  tables: deployment_rows, model_rows
"""
from __future__ import annotations

from core.lazy import lazy_getattr

_EXPORTS = {  # name -> the module of this package that defines it
    'CORRUPTIONS': '.corruptions',
    'CorruptionError': '.corruptions',
    'CostError': '.costs',
    'EvaluationError': '.evaluation',
    'EvaluationOptions': '.report',
    'EvaluationReport': '.report',
    'FINE_TUNED': '.report',
    'SEVERITIES': '.corruptions',
    'bakeoff_figure': '.figures',
    'build_report': '.report',
    'cell_images': '.evaluation',
    'compare_evaluations': '.evaluation',
    'cost_model': '.costs',
    'default_report_dir': '.report_files',
    'deployment_rows': '.tables',
    'error_costs': '.costs',
    'evaluate_run': '.evaluation',
    'model_rows': '.tables',
    'plot_text': '.figures',
    'progress_steps': '.report',
    'stored_name': '.report',
    'summary_dict': '.report_files',
    'titled': '.figures',
    'with_costs': '.report',
    'write_report': '.report_files',
}
__all__ = sorted(_EXPORTS)

__getattr__ = lazy_getattr(__name__, _EXPORTS)
