"""Starting and resuming runs: the one call a page, the CLI or a script makes to train.

`prepare_data` turns what the user points at (a folder, an archive, a CSV, a stored dataset id, a split
manifest, or "demo") into a stored dataset and a leak-free split manifest. `start_run` records the run
in the store with that manifest, attaches the trackers the config asks for, and trains. `resume_run`
picks a run up from its last checkpoint with the config and manifest it was started with.
"""
from __future__ import annotations

import os
from typing import Any, Callable, Iterable

from core.config import TrainConfig
from core.data.duplicates import find_duplicate_groups
from core.data.ingest import load_dataset_dir, resolve_dataset
from core.data.related import EMBEDDING_MODEL, EMBEDDING_SIZE, find_related
from core.data.split_data import SplitData, from_manifest
from core.data.splits import read_manifest, split_dataset, unit_ids, write_manifest
from core.files import clean_leftovers
from core.model.embeddings import cached_embeddings
from core.runs.recorder import StoreTracker
from core.runs.runlock import RunLock, is_trained_now
from core.runs.store import RunStore
from core.runtime import resolve_device
from core.train.crossval import crossval_check
from core.train.events import Dispatcher, Listener, Note
from core.train.loop import Trainer
from core.train.trackers import TensorBoardTracker, WandbTracker

MANIFEST_FILE = "manifest.json"


def prepare_data(source: str, config: TrainConfig, workspace_dir: str):
    """Ingest `source` into the workspace's dataset store and split it; returns a split Manifest.

    `source` may be a folder, .zip/.tar.gz, CSV, a stored dataset id, a manifest (.json/.csv written by
    core.data.splits), or "demo" (scikit-learn's digits). Given train/val/test splits are used as they are; a
    missing val is carved from train (stratified), a missing test stays missing.
    """

    if os.path.isfile(source) and is_manifest(source):
        return read_manifest(source)
    dataset = resolve_dataset(source, workspace_dir)
    test = config.test_fraction
    if dataset.has_given_splits and not any(s.split == "test" for s in dataset.samples):
        test = 0.0
    ratios = (1.0 - config.val_fraction - test, config.val_fraction, test)
    return split_dataset(dataset, ratios, seed=config.seed, related=related_images(dataset, config.group_by))


def related_images(dataset, group_by: str = "auto", device: str = "auto"):
    """Related images in a stored dataset (core.data.related), embeddings cached beside its files."""

    samples = dataset.samples
    paths = [s.path for s in samples]

    def embed():
        return cached_embeddings(dataset.root, [s.sha256 for s in samples],
                                 [str(dataset.path_of(s)) for s in samples], EMBEDDING_MODEL, EMBEDDING_SIZE, device)

    return find_related(paths, [s.label for s in samples], any(s.group for s in samples), group_by, embed,
                        resolve_device(device).type == "cuda")


def load_data(source: str, config: TrainConfig, workspace_dir: str) -> SplitData:
    return from_manifest(prepare_data(source, config, workspace_dir), source)


def is_manifest(path: str) -> bool:
    """Whether a .json / .csv file is a split manifest (core.data.splits) rather than a CSV of images."""
    if not path.lower().endswith((".json", ".csv")):
        return False
    with open(path, encoding="utf-8", errors="replace") as f:
        head = f.read(4096)
    return '"dataset_id"' in head and '"rows"' in head or head.startswith("# {")


def create_run(store: RunStore, config: TrainConfig, data: SplitData, manifest=None, owner: str = "") -> str:
    """Record a run; its split manifest is written into the run's folder, so a resume sees the same files."""

    run_id = store.create_run(config.validate().to_dict(), data.describe(), config.run_name, owner)
    if manifest is not None:
        write_manifest(manifest, os.path.join(store.run_dir(run_id), MANIFEST_FILE))
    return run_id


def execute_run(store: RunStore, run_id: str, config: TrainConfig, data: SplitData,
                listeners: Iterable[Listener] = (), should_stop: Callable[[], bool] = lambda: False,
                resume: bool = False) -> dict[str, Any]:
    """Train a run recorded in the store; trackers per the config. Raises TrainingFailed on failure, and
    RunLocked (before touching anything) when another process is training this run."""
    run_dir = store.run_dir(run_id)
    with RunLock(run_dir):  # held until training ends; the kernel drops it if this process dies
        for folder in (run_dir, os.path.join(run_dir, "checkpoints")):
            clean_leftovers(folder)  # half-written files of a trainer killed mid-write
        dispatcher = Dispatcher([StoreTracker(store), *listeners])
        if config.wandb:
            # a W&B server that cannot be reached: the tracker goes offline and the run's record says so
            dispatcher.add(WandbTracker(config.wandb_project, run_dir,
                                        notify=lambda message: dispatcher.emit(Note(run_id, message))))
        if config.tensorboard:
            dispatcher.add(TensorBoardTracker(os.path.join(run_dir, "tensorboard")))
        return Trainer(run_id, config, data, run_dir, dispatcher, should_stop,
                       second_opinion(run_dir, config, data, should_stop)).run(resume=resume)


def check_not_trained(store: RunStore, run_id: str) -> None:
    """Raise RunLocked when another process holds the run's trainer lock (before a resume starts)."""
    store.get_run(run_id)  # RunNotFound first
    if is_trained_now(store.run_dir(run_id)):
        RunLock(store.run_dir(run_id)).acquire().release()  # raises RunLocked, naming the holder



def second_opinion(run_dir: str, config: TrainConfig, data: SplitData, should_stop: Callable[[], bool] = lambda: False):
    """The Trainer's `second_opinion`: a K-fold check (core.train.crossval) over the run's own split units."""
    def check(epochs: int, progress: Callable[[str], None]):
        return crossval_check(config, data, epochs, os.path.join(run_dir, "crossval"), _unit_of(run_dir, config, data),
                              config.crossval_folds, should_stop, progress)

    return check


def _unit_of(run_dir: str, config: TrainConfig, data: SplitData) -> Callable[[str], int]:
    """Image path -> the unit the run's split kept together (duplicates, related images), so folds keep them
    together too; every image its own unit when the run has no manifest."""

    path = os.path.join(run_dir, MANIFEST_FILE)
    if not os.path.exists(path):
        return lambda p: hash(p)
    manifest = read_manifest(path)
    dataset = load_dataset_dir(manifest.root)
    groups = [*find_duplicate_groups(dataset), *(g for r in related_images(dataset, config.group_by) for g in r.groups)]
    units = unit_ids(dataset.samples, groups)
    ids = {str(manifest.path_of(r)): units.get(r.path, -1 - i) for i, r in enumerate(manifest.rows)}
    return lambda p: ids.get(p, hash(p))


def new_run(store: RunStore, config: TrainConfig, data: str | SplitData, workspace_dir: str | None = None,
            owner: str = "") -> tuple[str, SplitData]:
    """Validate, prepare the data and record the run (owned by `owner`); returns (run_id, data)."""
    config = config.validate()
    manifest = None
    if isinstance(data, str):
        manifest = prepare_data(data, config, workspace_dir or store.runs_dir)
        data = from_manifest(manifest, data)
    return create_run(store, config, data, manifest, owner), data


def start_run(config: TrainConfig, data: SplitData | str, runs_dir: str, listeners: Iterable[Listener] = (),
              should_stop: Callable[[], bool] = lambda: False, workspace_dir: str | None = None) -> dict[str, Any]:
    """Train to the end in this thread. Datasets are stored under `workspace_dir` (default: runs_dir)."""
    store = RunStore(runs_dir)
    run_id, data = new_run(store, config, data, workspace_dir)
    return execute_run(store, run_id, config.validate(), data, listeners, should_stop)


def run_inputs(store: RunStore, run_id: str) -> tuple[TrainConfig, SplitData]:
    """The exact config and split manifest a run was started with."""

    run = store.get_run(run_id)
    path = os.path.join(store.run_dir(run_id), MANIFEST_FILE)
    if not os.path.exists(path):
        raise FileNotFoundError(f"run {run_id} has no recorded split manifest ({path}); it cannot be resumed")
    return TrainConfig.from_dict(run["config"]), from_manifest(read_manifest(path), run["data_source"])


def resume_run(run_id: str, runs_dir: str, listeners: Iterable[Listener] = (),
               should_stop: Callable[[], bool] = lambda: False) -> dict[str, Any]:
    store = RunStore(runs_dir)
    check_not_trained(store, run_id)
    config, data = run_inputs(store, run_id)
    return execute_run(store, run_id, config, data, listeners, should_stop, resume=True)
