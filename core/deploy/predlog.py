"""The prediction log: every prediction a served model made, and the feedback users gave on it, in SQLite.

    <workspace>/serving/predictions.db   (WAL; one connection per thread and process; busy_timeout)

Table `predictions`: id (uuid hex), at (unix seconds, UTC), model, version, input_sha256, width, height,
predicted, confidence, top_k (JSON [[class, probability], ...]), latency_ms, embedding (float16 bytes, the
penultimate layer: the next stage measures drift on it), embedding_dim, image (the input's bytes, only when image
logging is on and the file is under the cap; else NULL), role ("served": the answer the client got; "shadow": a
challenger's prediction on the same request, logged only) and request_id (shared by a request's served and shadow
rows), brightness (the input's mean grey level, 0-255) and colour_mode (RGB, L, RGBA or other, as the file was):
the monitor compares both with the training images' without keeping the images. Table `feedback`: id,
prediction_id, label, comment, at.
Table `model_classes`: each served (model, version)'s class names, so feedback can be checked against them.

A batch of predictions is written in one transaction, so a killed server leaves whole rows or none.
"""
from __future__ import annotations

import datetime as dt
import json
import os
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from core.errors import StudioError

DB_FILE = "predictions.db"
DEFAULT_IMAGE_CAP_BYTES = 2 * 1024**2
BUSY_TIMEOUT_MS = 10_000

_SCHEMA = """
CREATE TABLE IF NOT EXISTS predictions (
    id TEXT PRIMARY KEY, at REAL NOT NULL, model TEXT NOT NULL, version INTEGER NOT NULL,
    input_sha256 TEXT NOT NULL, width INTEGER NOT NULL, height INTEGER NOT NULL, predicted TEXT NOT NULL,
    confidence REAL NOT NULL, top_k TEXT NOT NULL, latency_ms REAL NOT NULL, embedding BLOB NOT NULL,
    embedding_dim INTEGER NOT NULL, image BLOB, role TEXT NOT NULL DEFAULT 'served', request_id TEXT,
    brightness REAL, colour_mode TEXT);
CREATE INDEX IF NOT EXISTS predictions_model_at ON predictions (model, version, at);
CREATE INDEX IF NOT EXISTS predictions_at ON predictions (at);
CREATE TABLE IF NOT EXISTS feedback (
    id TEXT PRIMARY KEY, prediction_id TEXT NOT NULL REFERENCES predictions (id), label TEXT NOT NULL,
    comment TEXT NOT NULL DEFAULT '', at REAL NOT NULL);
CREATE INDEX IF NOT EXISTS feedback_prediction ON feedback (prediction_id, at);
CREATE TABLE IF NOT EXISTS model_classes (
    model TEXT NOT NULL, version INTEGER NOT NULL, classes TEXT NOT NULL, PRIMARY KEY (model, version));
"""
_COLUMNS = ("id", "at", "model", "version", "input_sha256", "width", "height", "predicted", "confidence",
            "top_k", "latency_ms", "embedding", "embedding_dim", "image", "role", "request_id", "brightness",
            "colour_mode")
ROLES = ("served", "shadow")
_ADDED = (("role", "TEXT NOT NULL DEFAULT 'served'"), ("request_id", "TEXT"), ("brightness", "REAL"),
          ("colour_mode", "TEXT"))  # columns a log from before has not
_LIGHT = ", ".join(f"p.{c}" for c in _COLUMNS if c not in ("embedding", "image"))


class PredictionLogError(StudioError, ValueError):
    """A prediction row that cannot be logged (a field missing or of the wrong kind)."""


class UnknownPrediction(StudioError, KeyError):
    """Feedback for a prediction id the log does not hold."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class LabelNotInClasses(StudioError, ValueError):
    """Feedback whose label is not one of the classes of the model that made the prediction."""

    def __init__(self, message: str, classes: Sequence[str]):
        super().__init__(message)
        self.classes = tuple(classes)


def iso(at: float) -> str:
    return dt.datetime.fromtimestamp(at, dt.timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def encode_embedding(embedding: Any) -> tuple[bytes, int]:
    """A 1-D embedding as little-endian float16 bytes (half the size of float32; drift needs no more) and its
    length."""
    arr = np.asarray(embedding, dtype=np.float32).ravel()
    return np.clip(arr, -65504, 65504).astype("<f2").tobytes(), int(arr.size)


def decode_embedding(blob: bytes, dim: int) -> np.ndarray:
    arr = np.frombuffer(blob, dtype="<f2")
    if arr.size != dim:
        raise PredictionLogError(f"an embedding of {arr.size} values where {dim} were recorded")
    return arr.astype(np.float32)


class PredictionLog:
    """The prediction log at `path` (a .db file, or a folder that gets predictions.db). Safe to share between
    threads (each gets its own connection) and processes (SQLite WAL; writers wait up to busy_timeout)."""

    def __init__(self, path: str, image_cap_bytes: int = DEFAULT_IMAGE_CAP_BYTES):
        path = os.path.abspath(path)
        if os.path.isdir(path) or not path.endswith(".db"):
            path = os.path.join(path, DB_FILE)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        self.path = path
        self.image_cap_bytes = int(image_cap_bytes)
        self._local = threading.local()
        self._all: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        self._classes: dict[tuple[str, int], tuple[str, ...]] = {}
        with self._conn() as conn:
            conn.executescript(_SCHEMA)
            have = {r["name"] for r in conn.execute("PRAGMA table_info(predictions)")}
            for name, decl in _ADDED:
                if name not in have:
                    conn.execute(f"ALTER TABLE predictions ADD COLUMN {name} {decl}")
            conn.execute("CREATE INDEX IF NOT EXISTS predictions_request ON predictions (request_id)")

    @classmethod
    def for_workspace(cls, root: str, **kwargs: Any) -> "PredictionLog":
        """The workspace's log: <root>/serving/predictions.db."""
        return cls(os.path.join(root, "serving", DB_FILE), **kwargs)

    # --------------------------------------------------------------------------------------- connections
    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None or getattr(self._local, "pid", None) != os.getpid():
            conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None,
                                   check_same_thread=False)
            conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
            if conn.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
                conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")  # with WAL: a killed process loses no committed row
            conn.execute("PRAGMA foreign_keys=ON")
            conn.row_factory = sqlite3.Row
            self._local.conn, self._local.pid = conn, os.getpid()
            with self._lock:
                self._all.append(conn)
        return conn

    def close(self) -> None:
        """Close every connection this object opened (in any thread)."""
        with self._lock:
            conns, self._all = self._all, []
        for conn in conns:
            try:
                conn.close()
            except sqlite3.Error:
                pass
        self._local = threading.local()

    def _write(self, sql_rows: Iterable[tuple[str, Sequence[Any]]]) -> None:
        conn = self._conn()
        conn.execute("BEGIN IMMEDIATE")
        try:
            for sql, params in sql_rows:
                conn.execute(sql, params)
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    # --------------------------------------------------------------------------------------- writing
    def set_classes(self, model: str, version: int, classes: Sequence[str]) -> None:
        """Record the class names of a served model version (feedback labels are checked against them)."""
        classes = tuple(str(c) for c in classes)
        self._write([("INSERT OR REPLACE INTO model_classes (model, version, classes) VALUES (?, ?, ?)",
                      (model, int(version), json.dumps(list(classes))))])
        self._classes[(model, int(version))] = classes

    def classes(self, model: str, version: int) -> tuple[str, ...] | None:
        key = (model, int(version))
        if key not in self._classes:
            row = self._conn().execute("SELECT classes FROM model_classes WHERE model = ? AND version = ?",
                                       key).fetchone()
            if row is None:
                return None
            self._classes[key] = tuple(json.loads(row["classes"]))
        return self._classes[key]

    def log_many(self, rows: Iterable[Mapping[str, Any]]) -> list[str]:
        """Write predictions in ONE transaction; each row a mapping with the table's fields (`id` and `at`
        optional; `embedding` an array; `top_k` [[class, probability], ...] or [{"class", "probability"}];
        `image` bytes or absent). Images over the cap are not kept. Returns the ids."""
        prepared = [self._row(row) for row in rows]
        if prepared:
            marks = ", ".join("?" * len(_COLUMNS))
            self._write((f"INSERT INTO predictions ({', '.join(_COLUMNS)}) VALUES ({marks})", r) for r in prepared)
        return [r[0] for r in prepared]

    def log(self, row: Mapping[str, Any]) -> str:
        return self.log_many([row])[0]

    def _row(self, row: Mapping[str, Any]) -> tuple:
        try:
            blob, dim = encode_embedding(row["embedding"])
            top_k = [[str(t["class"]), float(t["probability"])] if isinstance(t, Mapping) else
                     [str(t[0]), float(t[1])] for t in row["top_k"]]
            image = row.get("image")
            if image is not None and (not isinstance(image, (bytes, bytearray, memoryview))
                                      or len(image) > self.image_cap_bytes):
                image = None
            role = str(row.get("role") or "served")
            if role not in ROLES:
                raise ValueError(f"role {role!r} is not one of {', '.join(ROLES)}")
            request_id, bright, mode = row.get("request_id"), row.get("brightness"), row.get("colour_mode")
            return (str(row.get("id") or uuid.uuid4().hex), float(row.get("at") or time.time()), str(row["model"]),
                    int(row["version"]), str(row["input_sha256"]), int(row["width"]), int(row["height"]),
                    str(row["predicted"]), float(row["confidence"]), json.dumps(top_k), float(row["latency_ms"]),
                    blob, dim, None if image is None else bytes(image), role,
                    None if request_id is None else str(request_id), None if bright is None else float(bright),
                    None if mode is None else str(mode))
        except KeyError as exc:
            raise PredictionLogError(f"a prediction row without its {exc.args[0]!r} field") from None
        except (TypeError, ValueError, IndexError) as exc:
            raise PredictionLogError(f"a prediction row with a malformed field ({exc})") from None

    def add_feedback(self, prediction_id: str, label: str, comment: str = "") -> dict[str, Any]:
        """Record that prediction `prediction_id`'s true label is `label`. UnknownPrediction (a KeyError) for an id
        the log does not hold; LabelNotInClasses (a ValueError) for a label the model does not know."""
        row = self._conn().execute("SELECT model, version FROM predictions WHERE id = ?",
                                   (str(prediction_id),)).fetchone()
        if row is None:
            raise UnknownPrediction(f"no prediction with id {prediction_id!r} in the log; use an id a /predict "
                                    "response returned")
        classes = self.classes(row["model"], row["version"])
        if classes is not None and label not in classes:
            raise LabelNotInClasses(f"label {label!r} is not a class of {row['model']} version {row['version']}; "
                                    f"choose one of: {', '.join(classes)}", classes)
        fb = {"id": uuid.uuid4().hex, "prediction_id": str(prediction_id), "label": str(label),
              "comment": str(comment or ""), "at": time.time()}
        self._write([("INSERT INTO feedback (id, prediction_id, label, comment, at) VALUES (?, ?, ?, ?, ?)",
                      (fb["id"], fb["prediction_id"], fb["label"], fb["comment"], fb["at"]))])
        return {**fb, "at_iso": iso(fb["at"])}

    # --------------------------------------------------------------------------------------- reading
    def query(self, sql: str, params: Sequence[Any] = ()) -> list[sqlite3.Row]:
        """A read-only SELECT on the log (the monitor's aggregations); anything else is refused."""
        if not sql.lstrip().upper().startswith("SELECT") or ";" in sql.strip().rstrip(";"):
            raise PredictionLogError("the prediction log answers single SELECT statements only")
        return self._conn().execute(sql, tuple(params)).fetchall()

    def count(self, model: str | None = None) -> int:
        if model is None:
            return int(self._conn().execute("SELECT COUNT(*) FROM predictions").fetchone()[0])
        return int(self._conn().execute("SELECT COUNT(*) FROM predictions WHERE model = ?", (model,)).fetchone()[0])

    def get(self, prediction_id: str) -> dict[str, Any] | None:
        """One prediction with its embedding (float32 array), its image (bytes or None) and its feedback (list,
        oldest first); None for an unknown id."""
        row = self._conn().execute("SELECT * FROM predictions WHERE id = ?", (str(prediction_id),)).fetchone()
        if row is None:
            return None
        out = _light(row)
        out["embedding"] = decode_embedding(row["embedding"], row["embedding_dim"])
        out["image"] = row["image"]
        out["feedback"] = [_feedback(r) for r in self._conn().execute(
            "SELECT * FROM feedback WHERE prediction_id = ? ORDER BY at", (str(prediction_id),))]
        return out

    def recent(self, n: int = 50, with_feedback: bool = True, model: str | None = None,
               role: str | None = "served") -> list[dict[str, Any]]:
        """The latest `n` predictions, newest first (no embeddings or images); with_feedback adds "feedback": the
        latest feedback on each (a dict) or None. `role`: "served" (what clients got), "shadow", or None (both)."""
        clauses = [(c, v) for c, v in (("p.model = ?", model), ("p.role = ?", role)) if v]
        where = f"WHERE {' AND '.join(c for c, _ in clauses)}" if clauses else ""
        params = [v for _, v in clauses]
        if with_feedback:
            sql = (f"SELECT {_LIGHT}, p.image IS NOT NULL AS has_image, f.id AS f_id, f.label AS f_label, "
                   f"f.comment AS f_comment, f.at AS f_at FROM predictions p LEFT JOIN feedback f ON f.id = "
                   "(SELECT id FROM feedback WHERE prediction_id = p.id ORDER BY at DESC LIMIT 1) "
                   f"{where} ORDER BY p.at DESC LIMIT ?")
        else:
            sql = (f"SELECT {_LIGHT}, p.image IS NOT NULL AS has_image FROM predictions p {where} "
                   "ORDER BY p.at DESC LIMIT ?")
        out = []
        for row in self._conn().execute(sql, (*params, int(n))):
            item = _light(row)
            item["has_image"] = bool(row["has_image"])
            if with_feedback:
                item["feedback"] = None if row["f_id"] is None else {
                    "id": row["f_id"], "prediction_id": row["id"], "label": row["f_label"],
                    "comment": row["f_comment"], "at": row["f_at"], "at_iso": iso(row["f_at"])}
            out.append(item)
        return out

    def embeddings(self, model: str | None = None, since: float | None = None, version: int | None = None,
                   until: float | None = None, role: str | None = "served") -> np.ndarray:
        """The logged embeddings (n, dim) float32, oldest first, of one model (and version) and time window (unix
        seconds). Rows of another dimension than the first are left out (a different architecture)."""
        clauses, params = [], []
        for sql, value in (("model = ?", model), ("version = ?", version), ("at >= ?", since), ("at < ?", until),
                           ("role = ?", role)):
            if value is not None:
                clauses.append(sql)
                params.append(value)
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        rows = self._conn().execute(f"SELECT embedding, embedding_dim FROM predictions {where} ORDER BY at",
                                    params).fetchall()
        if not rows:
            return np.zeros((0, 0), dtype=np.float32)
        dim = rows[0]["embedding_dim"]
        return np.stack([decode_embedding(r["embedding"], dim) for r in rows if r["embedding_dim"] == dim])


def _light(row: sqlite3.Row) -> dict[str, Any]:
    out = {c: row[c] for c in _COLUMNS if c not in ("embedding", "image")}
    out["top_k"] = [{"class": c, "probability": p} for c, p in json.loads(out["top_k"])]
    out["at_iso"] = iso(out["at"])
    return out


def _feedback(row: sqlite3.Row) -> dict[str, Any]:
    return {"id": row["id"], "prediction_id": row["prediction_id"], "label": row["label"],
            "comment": row["comment"], "at": row["at"], "at_iso": iso(row["at"])}
