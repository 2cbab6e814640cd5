"""Transfer Studio's engine: everything the dashboard does, usable from Python and `python -m core`.

No module in this package imports streamlit. Stages, in the order data flows (docs/ARCHITECTURE.md):
data -> model -> train -> runs -> evaluate, with plan (before training) and cli on top. The names below are
the public API; each is imported on first use, so `import core.config` does not load torch.

    from core import TrainConfig, start_run, evaluate_run
    summary = start_run(TrainConfig(epochs=3), "demo", "runs")
    print(evaluate_run("runs", summary["run_id"]).metrics["accuracy"])
"""
from __future__ import annotations

from core.lazy import lazy_getattr

_EXPORTS = {  # name -> the module that defines it
    "AugmentSpec": "core.config",
    "TrainConfig": "core.config",
    "StudioError": "core.errors",
    "ingest": "core.data.ingest",
    "demo_dataset": "core.data.ingest",
    "resolve_dataset": "core.data.ingest",
    "audit_dataset": "core.data.audit",
    "split_dataset": "core.data.splits",
    "list_catalog": "core.model.catalog",
    "load_model": "core.model.checkpoint",
    "start_run": "core.runs.launch",
    "resume_run": "core.runs.launch",
    "RunStore": "core.runs.store",
    "JobManager": "core.runs.jobs",
    "evaluate_run": "core.evaluate.evaluation",
    "build_report": "core.evaluate.report",
    "bakeoff": "core.plan.bakeoff",
    "estimate_run": "core.plan.estimate",
}
__all__ = sorted(_EXPORTS)

__getattr__ = lazy_getattr(__name__, _EXPORTS)
