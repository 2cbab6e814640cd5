"""Runs side by side: one row per run with its key metrics, configs compared field by field, and the
epoch curves of several runs in one table for overlaying.
"""
from __future__ import annotations

import json
import os
import time
from collections.abc import Iterable, Mapping
from typing import Any

import pandas as pd

from core.config import TrainConfig
from core.data.ingest import DATASET_FILE
from core.data.store import list_datasets
from core.runs.runlock import is_trained_now
from core.runs.store import ACTIVE, RunStore

RESUMABLE = ("stopped", "failed", "interrupted")  # statuses a run can be resumed from
FINISHED = ("completed", "early_stopped")


def status_of(run: dict[str, Any], active_ids: Iterable[str], run_dir: str | None = None) -> str:
    """The stored status, except that a queued/running run was interrupted when no live job of this process
    owns it and (given its `run_dir`) no other process holds its trainer lock."""
    if run["status"] not in ACTIVE or run["id"] in set(active_ids):
        return run["status"]
    if run_dir is not None:
        if is_trained_now(run_dir):
            return run["status"]
    return "interrupted"


def dataset_names(workspace_dir: str) -> dict[str, str]:
    """Stored dataset id -> the name it was ingested from ("sklearn-digits", "flowers.zip", ...)."""

    names = {}
    for dataset_id in list_datasets(workspace_dir):
        try:
            with open(os.path.join(workspace_dir, "datasets", dataset_id, DATASET_FILE), encoding="utf-8") as f:
                names[dataset_id] = json.load(f).get("source") or dataset_id
        except (OSError, ValueError):
            continue
    return names


def run_table(store: RunStore, active_ids: Iterable[str] = (), names: Mapping[str, str] | None = None
              ) -> pd.DataFrame:
    """Every run, newest first: status, model, data, size, epochs, best validation and test scores.

    `names` maps dataset ids to readable names (see `dataset_names`).
    """
    active, names = set(active_ids), names or {}
    rows = []
    for run in store.list_runs():
        config, summary, data = run["config"], run["summary"] or {}, run["data"] or {}
        epochs = store.metrics(run["id"], "epoch")
        val_acc = [r["val_accuracy"] for r in epochs if isinstance(r.get("val_accuracy"), (int, float))]
        metrics = summary.get("metrics", {})
        rows.append({
            "run": run["id"], "name": run["name"], "tags": list(run.get("tags") or []),
            "status": status_of(run, active, store.run_dir(run["id"])), "model": run["model"],
            "data": names.get(run["dataset_id"] or "") or data.get("source") or run["data_source"], "classes": len(data.get("classes", [])),
            "image_size": config.get("image_size") or "model",
            "epochs": f"{max((r['epoch'] for r in epochs), default=0)}/{config.get('epochs', '?')}",
            "best_val_accuracy": max(val_acc) if val_acc else None,
            "test_accuracy": metrics.get("test_accuracy"),
            "test_macro_f1": metrics.get("test_macro_f1"),
            "baseline_test_accuracy": (summary.get("baseline") or {}).get("test_accuracy"),
            "seconds": summary.get("seconds"),
            "created": time.strftime("%Y-%m-%d %H:%M", time.localtime(run["created"])),
            "error": run["error"] or "",
        })
    return pd.DataFrame(rows, columns=["run", "name", "tags", "status", "model", "data", "classes", "image_size",
                                       "epochs", "best_val_accuracy", "test_accuracy", "test_macro_f1",
                                       "baseline_test_accuracy", "seconds", "created", "error"])


def flat_config(config: dict[str, Any]) -> dict[str, Any]:
    """A config dict with the augmentation fields as `augment.<field>`."""
    flat = {k: v for k, v in config.items() if k != "augment"}
    flat.update({f"augment.{k}": v for k, v in (config.get("augment") or {}).items()})
    return flat


def config_table(store: RunStore, run_ids: Iterable[str], only_differences: bool = True) -> pd.DataFrame:
    """Settings as rows, runs as columns; by default only the settings that differ between the runs."""
    columns = {run_id: flat_config({**TrainConfig().to_dict(), **store.get_run(run_id)["config"]})
               for run_id in run_ids}
    frame = pd.DataFrame(columns)
    frame = frame.map(lambda v: "default" if v is None else str(v)) if not frame.empty else frame
    if only_differences and len(columns) > 1:
        frame = frame[frame.nunique(axis=1) > 1]
    frame.index.name = "setting"
    return frame


def epoch_curves(store: RunStore, run_ids: Iterable[str],
                 metrics: Iterable[str] = ("val_loss", "val_accuracy", "val_macro_f1", "train_loss")
                 ) -> pd.DataFrame:
    """Long table (run, epoch, metric, value) of the runs' per-epoch metrics."""
    rows = []
    for run_id in run_ids:
        for row in store.metrics(run_id, "epoch"):
            for metric in metrics:
                if isinstance(row.get(metric), (int, float)):
                    rows.append((run_id, row["epoch"], metric, float(row[metric])))
    return pd.DataFrame(rows, columns=["run", "epoch", "metric", "value"])
