"""Alerts a person can act on: at most one open alert per model and kind, kept in SQLite.

    <workspace>/monitor/monitor.db   (WAL; one connection per thread and process; busy_timeout)

Table `alerts`: id (uuid hex), model, kind (accuracy | drift | confidence | latency), reason (one plain-English
sentence), details (JSON), opened_at, updated_at, closed_at (NULL while open), closed_why. A check that finds the
same problem again updates the open alert (its reason, details, updated_at) instead of opening a second one; a check
that finds it gone closes it with why. The partial unique index makes "one open alert per model and kind" a property
of the database, not only of this code, so two checks racing cannot open two.
"""
from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from core.errors import StudioError
from core.files import jsonable

DB_FILE = "monitor.db"
KINDS = ("accuracy", "drift", "confidence", "latency")
BUSY_TIMEOUT_MS = 10_000

_SCHEMA = """
CREATE TABLE IF NOT EXISTS alerts (
    id TEXT PRIMARY KEY, model TEXT NOT NULL, kind TEXT NOT NULL, reason TEXT NOT NULL, details TEXT NOT NULL,
    opened_at REAL NOT NULL, updated_at REAL NOT NULL, closed_at REAL, closed_why TEXT);
CREATE UNIQUE INDEX IF NOT EXISTS alerts_one_open ON alerts (model, kind) WHERE closed_at IS NULL;
CREATE INDEX IF NOT EXISTS alerts_model_opened ON alerts (model, opened_at);
"""


class AlertError(StudioError, ValueError):
    """An alert of an unknown kind, or without a reason."""


@dataclass(frozen=True)
class Alert:
    id: str
    model: str
    kind: str  # one of KINDS
    reason: str  # one sentence a QC engineer understands
    details: dict[str, Any] = field(default_factory=dict)  # the figures behind the reason
    opened_at: float = 0.0  # unix seconds, UTC
    closed_at: float | None = None  # None while open
    updated_at: float = 0.0  # the last check that found the problem
    closed_why: str | None = None

    @property
    def is_open(self) -> bool:
        return self.closed_at is None

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "model": self.model, "kind": self.kind, "reason": self.reason,
                "details": self.details, "opened_at": self.opened_at, "updated_at": self.updated_at,
                "closed_at": self.closed_at, "closed_why": self.closed_why}


class AlertStore:
    """The workspace's alerts: <root>/monitor/monitor.db. Safe to share between threads and processes."""

    def __init__(self, workspace_root: str):
        folder = os.path.join(os.path.abspath(workspace_root), "monitor")
        os.makedirs(folder, exist_ok=True)
        self.path = os.path.join(folder, DB_FILE)
        self._local = threading.local()
        self._all: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        self._conn().executescript(_SCHEMA)

    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None or getattr(self._local, "pid", None) != os.getpid():
            conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None,
                                   check_same_thread=False)
            conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
            if conn.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
                conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.row_factory = sqlite3.Row
            self._local.conn, self._local.pid = conn, os.getpid()
            with self._lock:
                self._all.append(conn)
        return conn

    def close_connections(self) -> None:
        with self._lock:
            conns, self._all = self._all, []
        for conn in conns:
            try:
                conn.close()
            except sqlite3.Error:
                pass
        self._local = threading.local()

    # ------------------------------------------------------------------------------------------- reading
    def open_alerts(self, model: str) -> list[Alert]:
        """The model's open alerts, oldest first."""
        rows = self._conn().execute("SELECT * FROM alerts WHERE model = ? AND closed_at IS NULL ORDER BY opened_at",
                                    (str(model),)).fetchall()
        return [_alert(r) for r in rows]

    def history(self, model: str, n: int = 50) -> list[Alert]:
        """The model's latest `n` alerts, open and closed, newest first."""
        rows = self._conn().execute("SELECT * FROM alerts WHERE model = ? ORDER BY opened_at DESC, rowid DESC "
                                    "LIMIT ?", (str(model), int(n))).fetchall()
        return [_alert(r) for r in rows]

    # ------------------------------------------------------------------------------------------- writing
    def raise_or_update(self, model: str, kind: str, reason: str, details: dict[str, Any] | None = None) -> Alert:
        """Open an alert of `kind` on `model`, or update the open one (reason, details) if there is one."""
        _check_kind(kind)
        if not str(reason).strip():
            raise AlertError("an alert needs a reason a person can read")
        now = time.time()
        payload = json.dumps(jsonable(dict(details or {})), default=_plain)
        conn = self._conn()
        conn.execute("BEGIN IMMEDIATE")
        try:
            row = conn.execute("SELECT id FROM alerts WHERE model = ? AND kind = ? AND closed_at IS NULL",
                               (str(model), kind)).fetchone()
            if row is None:
                alert_id = uuid.uuid4().hex
                conn.execute("INSERT INTO alerts (id, model, kind, reason, details, opened_at, updated_at) "
                             "VALUES (?, ?, ?, ?, ?, ?, ?)", (alert_id, str(model), kind, str(reason), payload, now,
                                                              now))
            else:
                alert_id = row["id"]
                conn.execute("UPDATE alerts SET reason = ?, details = ?, updated_at = ? WHERE id = ?",
                             (str(reason), payload, now, alert_id))
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        return _alert(conn.execute("SELECT * FROM alerts WHERE id = ?", (alert_id,)).fetchone())

    def close(self, model: str, kind: str, why: str) -> Alert | None:
        """Close the open alert of `kind` on `model` (why: a sentence); returns it, or None when none was open."""
        _check_kind(kind)
        conn = self._conn()
        conn.execute("BEGIN IMMEDIATE")
        try:
            row = conn.execute("SELECT id FROM alerts WHERE model = ? AND kind = ? AND closed_at IS NULL",
                               (str(model), kind)).fetchone()
            if row is not None:
                conn.execute("UPDATE alerts SET closed_at = ?, closed_why = ? WHERE id = ?",
                             (time.time(), str(why), row["id"]))
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        if row is None:
            return None
        return _alert(conn.execute("SELECT * FROM alerts WHERE id = ?", (row["id"],)).fetchone())


def _plain(value: Any) -> Any:
    """numpy scalars and arrays in details, as JSON's numbers and lists."""
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} in alert details is not JSON")


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise AlertError(f"unknown alert kind {kind!r}; choose one of: {', '.join(KINDS)}")


def _alert(row: sqlite3.Row) -> Alert:
    return Alert(id=row["id"], model=row["model"], kind=row["kind"], reason=row["reason"],
                 details=json.loads(row["details"]), opened_at=row["opened_at"], closed_at=row["closed_at"],
                 updated_at=row["updated_at"], closed_why=row["closed_why"])
