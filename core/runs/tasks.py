"""Background tasks other than training: a bake-off, an evaluation report. One daemon thread per task.

Pages submit a function and poll snapshots, as they do for training jobs (core/runs/jobs.py): a task outlives
the page's script run, the browser tab and a rerun, and a second click on the same button finds the task
already running instead of starting another. The function is called as `fn(*args, progress=say, **kwargs)`;
each `say(message)` becomes the snapshot's latest message.

Errors: core's own errors (ValueError, LookupError, RuntimeError, OSError subclasses) carry messages that
say what to do and are shown as they are; anything else is a bug, shown with its type and kept with its
traceback for the server log.
"""
from __future__ import annotations

import itertools
import threading
import time
import traceback
from dataclasses import dataclass, replace
from typing import Any, Callable

from core.errors import StudioError

USER_ERRORS = (StudioError, OSError)  # what the user can act on (its message says how); anything else is a bug
BUGS = (KeyError, IndexError)  # never a user's mistake, whatever they derive from
KEEP_FINISHED = 16  # finished tasks kept (their results can be large: a report holds arrays)


@dataclass(frozen=True)
class TaskSnapshot:
    task_id: str
    kind: str  # what it is, e.g. "bakeoff", "report"
    key: str  # what it is about; one active task per (kind, key)
    label: str  # for people: "Bake-off of 3 models on digits"
    status: str  # running, done, failed
    message: str = ""  # the latest progress message
    messages: int = 0  # how many there were
    result: Any = None
    error: str = ""
    error_traceback: str = ""
    started: float = 0.0
    finished: float | None = None
    owner: str = ""  # who submitted it (core.access); "" when the dashboard has no login

    @property
    def active(self) -> bool:
        return self.status == "running"

    @property
    def seconds(self) -> float:
        return (self.finished or time.time()) - self.started


class TaskManager:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._tasks: dict[str, TaskSnapshot] = {}  # insertion order = submission order
        self._threads: dict[str, threading.Thread] = {}
        self._ids = itertools.count(1)

    def submit(self, kind: str, key: str, label: str, fn: Callable[..., Any], *args: Any, owner: str = "",
               **kwargs: Any) -> str:
        """Run `fn(*args, progress=..., **kwargs)` on a thread for `owner`; returns the task id at once.

        While a task of the same kind, key and owner is running, returns that task's id and starts nothing.
        """
        with self._lock:
            for snap in self._tasks.values():
                if snap.kind == kind and snap.key == key and snap.owner == owner and snap.active:
                    return snap.task_id
            task_id = f"{kind}-{next(self._ids)}"
            self._tasks[task_id] = TaskSnapshot(task_id, kind, key, label, "running", "starting",
                                                started=time.time(), owner=owner)
            self._forget_old()

        def say(message: str) -> None:
            self._update(task_id, lambda s: replace(s, message=str(message), messages=s.messages + 1))

        def work() -> None:
            try:
                result = fn(*args, progress=say, **kwargs)
            except USER_ERRORS as exc:
                if isinstance(exc, BUGS):
                    return self._bug(task_id, exc)
                message, trace = str(exc), traceback.format_exc()
                self._update(task_id, lambda s: replace(s, status="failed", error=message, error_traceback=trace,
                                                        finished=time.time()))
            except Exception as exc:
                self._bug(task_id, exc)
            else:
                self._update(task_id, lambda s: replace(s, status="done", result=result, message="done",
                                                        finished=time.time()))

        thread = threading.Thread(target=work, name=f"task-{task_id}", daemon=True)
        with self._lock:
            self._threads[task_id] = thread
        thread.start()
        return task_id

    def snapshot(self, task_id: str) -> TaskSnapshot | None:
        with self._lock:
            return self._tasks.get(task_id)

    def latest(self, kind: str, key: str | None = None, owner: str | None = None) -> TaskSnapshot | None:
        """The most recently submitted task of this kind (and key, and owner, when given)."""
        with self._lock:
            for snap in reversed(list(self._tasks.values())):
                if snap.kind == kind and (key is None or snap.key == key) and (owner is None or snap.owner == owner):
                    return snap
        return None

    def active(self, owner: str | None = None) -> list[TaskSnapshot]:
        """Running tasks (of `owner`, when given)."""
        with self._lock:
            return [s for s in self._tasks.values() if s.active and (owner is None or s.owner == owner)]

    def wait(self, task_id: str, timeout: float | None = None) -> TaskSnapshot | None:
        with self._lock:
            thread = self._threads.get(task_id)
        if thread is not None:
            thread.join(timeout)
        return self.snapshot(task_id)

    # --- internals
    def _bug(self, task_id: str, exc: BaseException) -> None:
        """Say plainly that it is a bug; keep the traceback (call from the except block)."""
        self._update(task_id, lambda s: replace(
            s, status="failed", error=f"unexpected error ({type(exc).__name__}: {exc}); please report it",
            error_traceback=traceback.format_exc(), finished=time.time()))

    def _update(self, task_id: str, change: Callable[[TaskSnapshot], TaskSnapshot]) -> None:
        with self._lock:
            snap = self._tasks.get(task_id)
            if snap is not None:
                self._tasks[task_id] = change(snap)
            if snap is not None and not self._tasks[task_id].active:
                self._threads.pop(task_id, None)

    def _forget_old(self) -> None:
        finished = [t for t, s in self._tasks.items() if not s.active]
        for task_id in finished[:max(0, len(finished) - KEEP_FINISHED)]:
            del self._tasks[task_id]
