"""The run store: one SQLite database (WAL, busy timeout) and one folder per run under a runs directory.

runs.db holds runs (config, status, summary, error, a name and tags people give them), per-step and per-epoch
metrics. Each run's folder holds its checkpoints. A connection is opened per call, so any thread may use the store.

Deleting a run marks it deleted first (from then on no listing or lookup finds it), removes its folder, then its
rows: a delete cut short leaves a run that is gone for everyone, whose leftovers the next delete or
`purge_deleted` removes.
"""
from __future__ import annotations

import json
import os
import shutil
import sqlite3
import threading
import time
import uuid
from contextlib import contextmanager
from typing import Any, Iterator

from core.errors import StudioError
from core.runs.runlock import RunLock, RunLocked, is_trained_now

_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    id TEXT PRIMARY KEY, created REAL, updated REAL, status TEXT, name TEXT, model TEXT,
    data_source TEXT, dataset_id TEXT, config TEXT, data TEXT, summary TEXT, error TEXT,
    best_checkpoint TEXT, owner TEXT, pid INTEGER, heartbeat REAL, tags TEXT, deleted REAL);
CREATE TABLE IF NOT EXISTS metrics (
    run_id TEXT, scope TEXT, epoch INTEGER, step INTEGER, time REAL, values_json TEXT);
CREATE INDEX IF NOT EXISTS metrics_run ON metrics (run_id, scope, step);
"""

ACTIVE = ("queued", "running")
# columns added after the first release: ALTERed into an older runs.db when it is opened
_ADDED_COLUMNS = {"owner": "TEXT", "pid": "INTEGER", "heartbeat": "REAL", "tags": "TEXT", "deleted": "REAL"}
QUEUED_GRACE_S = 120.0  # a queued run another process created but has not locked yet is not called interrupted
MAX_NAME = 120  # characters of a run's name
MAX_TAGS, MAX_TAG = 20, 40  # tags per run, characters per tag


class RunNotFound(StudioError, LookupError):
    pass


class RunBusy(StudioError, RuntimeError):
    """The run is training (here or in another process): it cannot be deleted now."""


def clean_name(name: str) -> str:
    """A run's name as stored: one line, trimmed, at most MAX_NAME characters ("" keeps the id as its name)."""
    text = " ".join(str(name).split())
    if len(text) > MAX_NAME:
        raise ValueError(f"a run's name has at most {MAX_NAME} characters (this one has {len(text)}); shorten it")
    return text


def clean_tags(tags) -> list[str]:
    """Tags as stored: each one line and trimmed, empty ones and repeats (ignoring case) dropped, in the order given."""
    kept: dict[str, str] = {}
    for tag in tags:
        text = " ".join(str(tag).split())
        if len(text) > MAX_TAG:
            raise ValueError(f"a tag has at most {MAX_TAG} characters ({text[:MAX_TAG]}… has {len(text)}); "
                             "shorten it")
        if text:
            kept.setdefault(text.lower(), text)
    if len(kept) > MAX_TAGS:
        raise ValueError(f"a run has at most {MAX_TAGS} tags ({len(kept)} given); drop some")
    return list(kept.values())


class RunStore:
    def __init__(self, runs_dir: str):
        self.runs_dir = os.path.abspath(runs_dir)
        os.makedirs(self.runs_dir, exist_ok=True)
        self.db_path = os.path.join(self.runs_dir, "runs.db")
        self._lock = threading.Lock()
        with self._connect() as db:
            db.executescript(_SCHEMA)
            have = {row["name"] for row in db.execute("PRAGMA table_info(runs)")}
            for column, kind in _ADDED_COLUMNS.items():
                if column not in have:
                    db.execute(f"ALTER TABLE runs ADD COLUMN {column} {kind}")

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        db = sqlite3.connect(self.db_path, timeout=30)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA busy_timeout=30000")
            db.row_factory = sqlite3.Row
            with db:
                yield db
        finally:
            db.close()

    def run_dir(self, run_id: str) -> str:
        return os.path.join(self.runs_dir, run_id)

    # --- runs
    def create_run(self, config: dict[str, Any], data: dict[str, Any], name: str = "", owner: str = "") -> str:
        run_id = time.strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:6]
        os.makedirs(self.run_dir(run_id), exist_ok=True)
        now = time.time()
        with self._lock, self._connect() as db:
            db.execute("INSERT INTO runs (id, created, updated, status, name, model, data_source, dataset_id, config,"
                       " data, owner) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                       (run_id, now, now, "queued", name or run_id, config.get("model", ""), data.get("source", ""),
                        data.get("dataset_id", ""), json.dumps(config), json.dumps(data), owner))
        return run_id

    def update_run(self, run_id: str, **fields: Any) -> None:
        allowed = {"status", "summary", "error", "best_checkpoint", "data", "dataset_id", "pid", "heartbeat"}
        bad = set(fields) - allowed
        if bad:
            raise ValueError(f"cannot update {bad}")
        values = {k: json.dumps(v) if k in ("summary", "data") else v for k, v in fields.items()}
        values["updated"] = time.time()
        cols = ", ".join(f"{k}=?" for k in values)
        with self._lock, self._connect() as db:
            db.execute(f"UPDATE runs SET {cols} WHERE id=?", (*values.values(), run_id))

    def get_run(self, run_id: str) -> dict[str, Any]:
        with self._connect() as db:
            row = db.execute("SELECT * FROM runs WHERE id=? AND deleted IS NULL", (run_id,)).fetchone()
        if row is None:
            raise RunNotFound(f"no run {run_id!r} in {self.runs_dir}; `python -m core runs` lists them")
        return _row(row)

    def live_status(self, run: dict[str, Any]) -> str:
        """The stored status, except that a queued or running run no process holds the lock of
        (core.runs.runlock: the kernel drops it when its trainer dies, however it dies) was interrupted."""
        status = run["status"]
        if status not in ACTIVE:
            return status

        if is_trained_now(self.run_dir(run["id"])):
            return status
        if status == "queued" and time.time() - (run.get("updated") or 0) < QUEUED_GRACE_S:
            return status  # created a moment ago; its trainer is still loading
        return "interrupted"

    def list_runs(self) -> list[dict[str, Any]]:
        with self._connect() as db:
            rows = db.execute("SELECT * FROM runs WHERE deleted IS NULL ORDER BY created DESC").fetchall()
        return [_row(r) for r in rows]

    # --- what people call a run, and deleting it
    def rename_run(self, run_id: str, name: str) -> str:
        """Give the run a name (an empty one: its id again); returns the name stored."""
        self.get_run(run_id)  # RunNotFound first
        name = clean_name(name) or run_id
        with self._lock, self._connect() as db:
            db.execute("UPDATE runs SET name=?, updated=? WHERE id=?", (name, time.time(), run_id))
        return name

    def set_tags(self, run_id: str, tags) -> list[str]:
        """Replace the run's tags; returns them as stored (see `clean_tags`)."""
        self.get_run(run_id)
        tags = clean_tags(tags)
        with self._lock, self._connect() as db:
            db.execute("UPDATE runs SET tags=?, updated=? WHERE id=?", (json.dumps(tags), time.time(), run_id))
        return tags

    def delete_run(self, run_id: str) -> None:
        """Delete the run: its rows, metrics and folder (checkpoints and all). RunBusy while anyone trains it.

        The run's trainer lock is held throughout, so no trainer can start on it meanwhile."""

        run = self.get_run(run_id)
        if run["status"] in ACTIVE and self.live_status(run) in ACTIVE:  # queued a moment ago, or training
            raise RunBusy(f"run {run_id} is {run['status']}; stop it before deleting it")
        try:
            lock = RunLock(self.run_dir(run_id)).acquire()
        except RunLocked as exc:
            raise RunBusy(f"run {run_id} cannot be deleted now: {exc}") from None
        try:
            with self._lock, self._connect() as db:  # gone for every reader from here on
                db.execute("UPDATE runs SET deleted=? WHERE id=?", (time.time(), run_id))
            self._remove(run_id)
        finally:
            lock.release()

    def purge_deleted(self) -> int:
        """Finish deletes that were cut short (folder or rows left); returns how many runs were purged."""
        with self._connect() as db:
            ids = [r["id"] for r in db.execute("SELECT id FROM runs WHERE deleted IS NOT NULL")]
        for run_id in ids:
            self._remove(run_id)
        return len(ids)

    def _remove(self, run_id: str) -> None:
        folder = self.run_dir(run_id)
        if os.path.dirname(folder) != self.runs_dir or not run_id or run_id.startswith("."):
            raise ValueError(f"not a run folder: {folder}")  # never anything but a folder directly under runs/
        shutil.rmtree(folder, ignore_errors=True)
        if os.path.exists(folder):
            raise OSError(f"could not remove {folder}; remove it by hand (the run is already gone from the list)")
        with self._lock, self._connect() as db:
            db.execute("DELETE FROM metrics WHERE run_id=?", (run_id,))
            db.execute("DELETE FROM runs WHERE id=?", (run_id,))

    # --- metrics
    def log_metrics(self, run_id: str, scope: str, epoch: int, step: int, values: dict[str, Any]) -> None:
        with self._lock, self._connect() as db:
            db.execute("INSERT INTO metrics VALUES (?,?,?,?,?,?)",
                       (run_id, scope, epoch, step, time.time(), json.dumps(values)))

    def truncate_metrics(self, run_id: str, after_step: int) -> None:
        """Drop metrics logged after a checkpoint, before a resume repeats those steps (all of them, the
        baseline's too, when `after_step` < 0: a resume that starts over)."""
        with self._lock, self._connect() as db:
            db.execute("DELETE FROM metrics WHERE run_id=? AND step>? AND (scope!='baseline' OR ?<0)",
                       (run_id, after_step, after_step))

    def metrics(self, run_id: str, scope: str) -> list[dict[str, Any]]:
        with self._connect() as db:
            rows = db.execute("SELECT epoch, step, time, values_json FROM metrics WHERE run_id=? AND scope=? "
                              "ORDER BY step, time", (run_id, scope)).fetchall()
        return [{"epoch": r["epoch"], "step": r["step"], "time": r["time"], **json.loads(r["values_json"])}
                for r in rows]


def _row(row: sqlite3.Row) -> dict[str, Any]:
    d = dict(row)
    for key in ("config", "data", "summary"):
        d[key] = json.loads(d[key]) if d.get(key) else {}
    d["tags"] = json.loads(d["tags"]) if d.get("tags") else []
    return d
