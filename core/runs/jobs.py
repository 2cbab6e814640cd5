"""The process-wide job manager: background training threads, and snapshots of them that pages poll.

One named daemon thread per job. The manager is the only consumer of a job's events; it folds them into
a lock-protected state and hands out immutable snapshots, safe to read from any thread. A job's state
also goes to the run store (through the trainer's store tracker), so a restart loses nothing committed.
"""
from __future__ import annotations

import threading
import time
import traceback
from dataclasses import dataclass, field, replace
from typing import Any

from core.access import User, check_may_act, may_see
from core.config import TrainConfig
from core.data.split_data import SplitData
from core.runs.launch import check_not_trained, execute_run, new_run, run_inputs
from core.runs.runlock import RunLocked
from core.runs.store import RunBusy, RunStore
from core.runs.tasks import TaskManager
from core.train.events import (
    BaselineDone,
    BatchEnd,
    EpochEnd,
    Event,
    Failed,
    Finished,
    GradientStats,
    Note,
    RunStarted,
    StageChanged,
    Validated,
)


@dataclass(frozen=True)
class JobSnapshot:
    run_id: str
    status: str  # queued, running, stopping, completed, early_stopped, stopped, failed
    epoch: int = 0
    total_epochs: int = 0
    step: int = 0
    total_steps: int = 0
    progress: float = 0.0  # 0..1
    eta_seconds: float | None = None
    stage: int = 0
    stage_message: str = ""
    note: str = ""  # what the run does between epochs (a cross-validated check, ...)
    images_per_s: float = 0.0
    device: str = ""
    baseline: dict[str, float] = field(default_factory=dict)
    epochs: tuple[dict[str, Any], ...] = ()  # per-epoch metrics
    steps: tuple[dict[str, Any], ...] = ()  # per-step loss and lrs (thinned for long runs)
    gradients: tuple[dict[str, Any], ...] = ()  # per-group gradient norm and update ratio (core.train.gradients)
    frozen_groups: int = 0
    layer_groups: int = 0
    summary: dict[str, Any] = field(default_factory=dict)
    error: str = ""
    error_traceback: str = ""
    started: float = 0.0

    @property
    def active(self) -> bool:
        return self.status in ("queued", "running", "stopping")


class _Job:
    def __init__(self, run_id: str):
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.snapshot = JobSnapshot(run_id, "queued", started=time.time())
        self.thread: threading.Thread | None = None
        self.first_step: tuple[float, int] | None = None  # (time, step) of the first BatchEnd seen, for the ETA


MAX_STEP_POINTS = 2000


class JobManager:
    def __init__(self, runs_dir: str, workspace_dir: str | None = None):
        self.store = RunStore(runs_dir)
        self.workspace_dir = workspace_dir or runs_dir  # where uploaded datasets are stored
        self._jobs: dict[str, _Job] = {}
        self._lock = threading.Lock()
        self.tasks = TaskManager()  # bake-offs, evaluation reports: background work that is not training
        # timings of a training step for the Configure page's estimate: many small tasks, one per setup, kept
        # apart so that they never push a bake-off's or a report's result out of `tasks`
        self.estimates = TaskManager()

    # --- control
    def start(self, config: TrainConfig, data: SplitData | str, owner: str = "") -> str:
        """Record a run (owned by `owner`) and train it on a background thread; returns the run id at once."""
        run_id, data = new_run(self.store, config, data, self.workspace_dir, owner)
        self._launch(run_id, config.validate(), data, resume=False)
        return run_id

    def resume(self, run_id: str, user: User | None = None) -> str:
        """Resume a run from its last checkpoint (`user`, when given, must own it or be an admin)."""
        self._check_owner(run_id, user, "resume")
        if self.is_active(run_id):
            raise RuntimeError(f"run {run_id} is already running")
        check_not_trained(self.store, run_id)
        config, data = run_inputs(self.store, run_id)
        self._launch(run_id, config, data, resume=True)
        return run_id

    def stop(self, run_id: str, timeout: float | None = None, user: User | None = None) -> None:
        """Ask a run to stop at its next batch (`user`, when given, must own it or be an admin)."""
        self._check_owner(run_id, user, "stop")
        job = self._jobs.get(run_id)
        if job is None:
            return
        job.stop.set()
        with job.lock:
            if job.snapshot.active:
                job.snapshot = replace(job.snapshot, status="stopping")
        if timeout is not None and job.thread is not None:
            job.thread.join(timeout)

    def wait(self, run_id: str, timeout: float | None = None) -> JobSnapshot:
        job = self._jobs[run_id]
        if job.thread is not None:
            job.thread.join(timeout)
        return self.snapshot(run_id)

    def rename(self, run_id: str, name: str, user: User | None = None) -> str:
        """Name the run (`user`, when given, must own it or be an admin); returns the name stored."""
        self._check_owner(run_id, user, "rename")
        return self.store.rename_run(run_id, name)

    def set_tags(self, run_id: str, tags, user: User | None = None) -> list[str]:
        """Replace the run's tags (owner or admin); returns them as stored."""
        self._check_owner(run_id, user, "tag")
        return self.store.set_tags(run_id, tags)

    def delete(self, run_id: str, user: User | None = None) -> str:
        """Delete a run that is not training, with its checkpoints and metrics (owner or admin)."""
        self._check_owner(run_id, user, "delete")
        if self.is_active(run_id):
            raise RunBusy(f"run {run_id} is {self.snapshot(run_id).status}; stop it before deleting it")
        self.store.delete_run(run_id)
        with self._lock:
            self._jobs.pop(run_id, None)
        return run_id

    def _check_owner(self, run_id: str, user: User | None, action: str) -> None:
        if user is not None:
            check_may_act(user, self.store.get_run(run_id).get("owner"), f"run {run_id}")

    def visible_runs(self, user: User | None) -> list[dict[str, Any]]:
        """The store's runs `user` may see (all of them for an admin or when `user` is None), newest first."""
        runs = self.store.list_runs()
        return runs if user is None else [r for r in runs if may_see(user, r.get("owner"))]

    # --- reading
    def snapshot(self, run_id: str) -> JobSnapshot:
        job = self._jobs.get(run_id)
        if job is not None:
            with job.lock:
                return job.snapshot
        return self._from_store(run_id)

    def is_active(self, run_id: str) -> bool:
        job = self._jobs.get(run_id)
        return job is not None and job.snapshot.active

    def active_jobs(self) -> list[JobSnapshot]:
        with self._lock:
            jobs = list(self._jobs.values())
        snaps = []
        for job in jobs:
            with job.lock:
                if job.snapshot.active:
                    snaps.append(job.snapshot)
        return snaps

    # --- internals
    def _launch(self, run_id: str, config: TrainConfig, data: SplitData, resume: bool) -> None:
        job = _Job(run_id)
        if resume:
            previous = self._from_store(run_id)
            job.snapshot = replace(previous, status="queued", error="", error_traceback="", summary={})
        with self._lock:
            self._jobs[run_id] = job

        def work() -> None:
            try:
                execute_run(self.store, run_id, config, data, [lambda e: self._on_event(job, e)],
                            job.stop.is_set, resume=resume)
            except RunLocked as exc:  # another process trains it (it took the lock in between): change nothing
                with job.lock:
                    job.snapshot = replace(self._from_store(run_id), error=str(exc))
                with self._lock:
                    self._jobs.pop(run_id, None)
            except Exception as exc:  # the trainer already emitted Failed; this catches failures before it
                with job.lock:
                    if job.snapshot.status != "failed":
                        job.snapshot = replace(job.snapshot, status="failed", error=str(exc),
                                               error_traceback=traceback.format_exc())
                        self.store.update_run(run_id, status="failed", error=str(exc))

        job.thread = threading.Thread(target=work, name=f"train-{run_id}", daemon=True)
        job.thread.start()

    def _on_event(self, job: _Job, event: Event) -> None:
        with job.lock:
            s = job.snapshot
            if isinstance(event, RunStarted):
                s = replace(s, status="stopping" if job.stop.is_set() else "running", device=event.device,
                            total_epochs=event.total_epochs, frozen_groups=event.frozen_groups,
                            layer_groups=event.layer_groups,
                            total_steps=event.total_epochs * event.steps_per_epoch, started=time.time())
            elif isinstance(event, BaselineDone):
                s = replace(s, baseline=dict(event.metrics))
            elif isinstance(event, BatchEnd):
                steps = s.steps + ({"step": event.step, "epoch": event.epoch, "loss": event.loss,
                                    **{f"lr_{k}": v for k, v in event.lrs.items()}},)
                if len(steps) > MAX_STEP_POINTS:  # keep every other point: bounded memory, whole curve
                    steps = steps[::2]
                progress = min(1.0, event.step / s.total_steps) if s.total_steps else 0.0
                # the rate is measured from the first step this process saw: setup and the baseline probe
                # happen once and would make the remaining time look far longer than it is
                now = time.time()
                if job.first_step is None:
                    job.first_step = (now, event.step)
                t0, step0 = job.first_step
                eta = (now - t0) / (event.step - step0) * max(0, s.total_steps - event.step) \
                    if event.step > step0 else None
                s = replace(s, step=event.step, epoch=event.epoch, steps=steps, progress=progress,
                            eta_seconds=eta, images_per_s=event.images_per_s)
            elif isinstance(event, Validated):
                s = replace(s, steps=s.steps + ({"step": event.step, "epoch": event.epoch, **event.metrics},))
            elif isinstance(event, GradientStats):
                gradients = s.gradients + ({"step": event.step, "epoch": event.epoch, **event.stats},)
                s = replace(s, gradients=gradients[::2] if len(gradients) > MAX_STEP_POINTS else gradients)
            elif isinstance(event, EpochEnd):
                s = replace(s, epoch=event.epoch, epochs=s.epochs + ({"epoch": event.epoch, **event.metrics},))
            elif isinstance(event, StageChanged):
                s = replace(s, stage=event.stage, stage_message=event.message)
            elif isinstance(event, Note):
                s = replace(s, note=event.message)
            elif isinstance(event, Finished):
                s = replace(s, status=event.status, summary=dict(event.summary), progress=1.0, eta_seconds=0.0)
            elif isinstance(event, Failed):
                s = replace(s, status="failed", error=event.message, error_traceback=event.traceback)
            job.snapshot = s

    def _from_store(self, run_id: str) -> JobSnapshot:
        """A snapshot rebuilt from the run store: for runs of an earlier process, or before any event."""
        run = self.store.get_run(run_id)
        epochs = tuple(self.store.metrics(run_id, "epoch"))
        # per-step losses and mid-epoch validations, in step order, as a live snapshot holds them
        steps = tuple(sorted(self.store.metrics(run_id, "step") + self.store.metrics(run_id, "val"),
                             key=lambda row: (row["step"], "val_loss" in row)))
        baseline = self.store.metrics(run_id, "baseline")
        gradients = tuple(self.store.metrics(run_id, "grad"))
        setup = (self.store.metrics(run_id, "setup") or [{}])[-1]
        stages = self.store.metrics(run_id, "stage")
        status = run["status"]
        if run_id not in self._jobs:  # trained by another process, or its process is gone: interrupted
            status = self.store.live_status(run)
        return JobSnapshot(run_id, status, epoch=epochs[-1]["epoch"] if epochs else 0,
                           step=steps[-1]["step"] if steps else 0,
                           epochs=epochs, steps=steps, gradients=gradients, summary=run["summary"],
                           error=run["error"] or "",
                           frozen_groups=int(stages[-1]["frozen_groups"] if stages else setup.get("frozen_groups", 0)),
                           layer_groups=int(setup.get("layer_groups", 0)),
                           total_epochs=int(setup.get("total_epochs", 0)),
                           baseline={k: v for k, v in (baseline[0] if baseline else {}).items()
                                     if k not in ("epoch", "step", "time")},
                           progress=1.0 if status in ("completed", "early_stopped") else 0.0)
