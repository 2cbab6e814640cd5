"""Starting and resuming runs: the one call a page, the CLI or a script makes to train.

`start_run` records the run in the store, attaches the trackers the config asks for, and trains.
`resume_run` picks a run up from its last checkpoint with the config and data it was started with.
"""
from __future__ import annotations

import os
from typing import Any, Callable, Iterable

from .config import TrainConfig
from .data import SplitData, from_rows, load_folder
from .events import Dispatcher, Listener
from .store import RunStore
from .trackers import StoreTracker, TensorBoardTracker, WandbTracker
from .train import Trainer


def load_data(source: str, config: TrainConfig) -> SplitData:
    """The data a run trains on, from a folder (class subfolders, or train/ val/ test/)."""
    return load_folder(source, config.val_fraction, config.test_fraction, config.seed)


def create_run(store: RunStore, config: TrainConfig, data: SplitData) -> str:
    return store.create_run(config.validate().to_dict(), {**data.describe(), "rows": _rows(data)}, config.run_name)


def execute_run(store: RunStore, run_id: str, config: TrainConfig, data: SplitData,
                listeners: Iterable[Listener] = (), should_stop: Callable[[], bool] = lambda: False,
                resume: bool = False) -> dict[str, Any]:
    """Train a run recorded in the store; trackers per the config. Raises TrainingFailed on failure."""
    run_dir = store.run_dir(run_id)
    dispatcher = Dispatcher([StoreTracker(store), *listeners])
    if config.wandb:
        dispatcher.add(WandbTracker(config.wandb_project, run_dir))
    if config.tensorboard:
        dispatcher.add(TensorBoardTracker(os.path.join(run_dir, "tensorboard")))
    return Trainer(run_id, config, data, run_dir, dispatcher, should_stop).run(resume=resume)


def start_run(config: TrainConfig, data: SplitData | str, runs_dir: str, listeners: Iterable[Listener] = (),
              should_stop: Callable[[], bool] = lambda: False) -> dict[str, Any]:
    config = config.validate()
    data = load_data(data, config) if isinstance(data, str) else data
    store = RunStore(runs_dir)
    run_id = create_run(store, config, data)
    return execute_run(store, run_id, config, data, listeners, should_stop)


def run_inputs(store: RunStore, run_id: str) -> tuple[TrainConfig, SplitData]:
    """The exact config and file list a run was started with (so a resume sees the same split)."""
    run = store.get_run(run_id)
    rows = run["data"].get("rows")
    if not rows:
        raise ValueError(f"run {run_id} has no recorded file list to resume from")
    data = from_rows([tuple(r) for r in rows], run["data"].get("source", ""), run["data"].get("dataset_id", ""))
    return TrainConfig.from_dict(run["config"]), data


def resume_run(run_id: str, runs_dir: str, listeners: Iterable[Listener] = (),
               should_stop: Callable[[], bool] = lambda: False) -> dict[str, Any]:
    store = RunStore(runs_dir)
    config, data = run_inputs(store, run_id)
    return execute_run(store, run_id, config, data, listeners, should_stop, resume=True)


def _rows(data: SplitData) -> list[tuple[str, str, str]]:
    return [(path, data.classes[y], name) for name in ("train", "val", "test")
            for path, y in zip(getattr(data, name).paths, getattr(data, name).labels)]
