"""The model registry: named models, immutable numbered versions of exported bundles, and aliases that move
(MLflow's model-registry semantics), plus the history of every alias move that MLflow does not keep.

    <root>/registry.db        SQLite (WAL): models, versions, aliases, alias_history
    <root>/<name>/<version>/  a read-only copy of the bundle; every file's sha256 recorded when registered

Versions never change: `register` copies a bundle into a temporary folder inside root (hashing every byte it
writes, fsynced; core.deploy.registry_files) and renames it into place under the write lock, never over an
existing folder (a leftover of a register killed before its commit is moved aside to <root>/.orphaned/);
triggers refuse updates and deletes of versions and history; `verify` re-hashes a stored copy. The same
bundle content registered twice makes a new version, as in MLflow; the new one names the first in
`same_content_as`.
`set_alias` moves (or creates) an alias and appends a history row (from, to, when, why, who) in the same
transaction; a move to the version it already names records nothing. `rollback` undoes the alias's latest move
and is itself a history row, so a second rollback goes forward again (an undo that can be undone).
Refs: "name" (its champion if set, else its latest version), "name@alias", "name@latest", "name:3", "name/3".
Every write is one `BEGIN IMMEDIATE` transaction with a 30 s busy timeout: writers in several processes queue,
version numbers never collide and no alias move is lost.
"""
from __future__ import annotations

import contextlib
import getpass
import hashlib
import json
import os
import re
import shutil
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from core.deploy import registry_files
from core.deploy.bundle import Bundle
from core.errors import StudioError

DB_FILE = "registry.db"
DEFAULT_ALIAS = "champion"
LATEST = "latest"  # "name@latest": the newest version; reserved, never an alias
BUSY_TIMEOUT_S = 30.0
SCHEMA_VERSION = 1
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_ALIAS = re.compile(r"[A-Za-z][A-Za-z0-9_-]{0,63}")
SUMMARY_KEYS = ("run_id", "model_format", "model_file", "classes", "metrics", "parity", "architecture_name",
                "embedding_dim", "exported_at", "preprocessing")


class RegistryError(StudioError, ValueError):
    """A refused registry action: a bad model or alias name, a bad ref, nothing to roll back to."""


class NotInRegistry(StudioError, LookupError):
    """An unknown model, version or alias; the message lists what exists."""


class VersionChanged(RegistryError):
    """A stored version's files differ from the sha256s recorded when it was registered."""


_SCHEMA = """
CREATE TABLE IF NOT EXISTS models (name TEXT PRIMARY KEY, created TEXT NOT NULL, description TEXT DEFAULT '');
CREATE TABLE IF NOT EXISTS versions (name TEXT NOT NULL REFERENCES models(name), version INTEGER NOT NULL,
    run_id TEXT, source TEXT NOT NULL, path TEXT NOT NULL, files TEXT NOT NULL, content_sha256 TEXT NOT NULL,
    info TEXT NOT NULL, created TEXT NOT NULL, created_by TEXT NOT NULL DEFAULT '', note TEXT NOT NULL DEFAULT '',
    same_content_as INTEGER, PRIMARY KEY (name, version));
CREATE TABLE IF NOT EXISTS aliases (name TEXT NOT NULL, alias TEXT NOT NULL, version INTEGER NOT NULL,
    updated TEXT NOT NULL, PRIMARY KEY (name, alias), FOREIGN KEY (name, version) REFERENCES versions);
CREATE TABLE IF NOT EXISTS alias_history (id INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT NOT NULL,
    alias TEXT NOT NULL, from_version INTEGER, to_version INTEGER NOT NULL, at TEXT NOT NULL,
    reason TEXT NOT NULL DEFAULT '', actor TEXT NOT NULL DEFAULT '', kind TEXT NOT NULL DEFAULT 'move');
CREATE INDEX IF NOT EXISTS alias_history_by_alias ON alias_history (name, alias, id);
""" + "".join(f"CREATE TRIGGER IF NOT EXISTS {table}_no_{op.lower()} BEFORE {op} ON {table} "
              f"BEGIN SELECT RAISE(ABORT, '{table}: {why}'); END;\n"
              for table, why in (("versions", "registered versions are immutable"),
                                 ("alias_history", "the alias history is append-only"))
              for op in ("UPDATE", "DELETE"))


@dataclass(frozen=True)
class ModelVersion:
    name: str
    version: int
    path: str                      # the stored read-only copy, absolute
    run_id: str | None
    info: dict[str, Any]           # bundle.json's summary: metrics, classes, model_format, parity, ...
    created: str                   # ISO UTC
    aliases: tuple[str, ...] = ()  # the aliases naming this version now
    files: dict[str, str] = field(default_factory=dict)  # relative name -> sha256 (bundle.json included)
    note: str = ""
    created_by: str = ""
    source: str = ""               # the bundle folder it was copied from
    same_content_as: int | None = None  # the earliest version of this model with identical files

    @property
    def ref(self) -> str:
        return f"{self.name}:{self.version}"

    def bundle(self) -> Bundle:
        return Bundle.load(self.path)

    def verify(self) -> ModelVersion:
        """Re-hash the stored files: VersionChanged naming each file changed, missing or added."""
        problems = registry_files.problems(self.path, self.files)
        if problems:
            raise VersionChanged(f"{self.ref} at {self.path} is not what was registered ({'; '.join(problems)}); "
                                 "do not serve it: register the bundle again as a new version")
        return self

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ref": self.ref, "aliases": list(self.aliases)}


def check_name(name: str) -> str:
    if not isinstance(name, str) or not _NAME.fullmatch(name) or name.lower().startswith(DB_FILE):
        raise RegistryError(f"model name {name!r} is not allowed: 1-64 letters, digits, '.', '_' or '-', starting "
                            f"with a letter or digit (no '/', ':', '@' or spaces; not {DB_FILE}*)")
    return name


def check_alias(alias: str) -> str:
    if not isinstance(alias, str) or not _ALIAS.fullmatch(alias) or alias.lower() == LATEST:
        raise RegistryError(f"alias {alias!r} is not allowed: 1-64 letters, digits, '_' or '-', starting with a "
                            f"letter; '{LATEST}' is reserved (name@latest is the newest version)")
    return alias


def parse_ref(ref: str) -> tuple[str, str | None, int | None]:
    """"name" | "name@alias" | "name:3" | "name/3" (a "models:/" prefix allowed) -> (name, alias, version)."""
    text = str(ref).strip().removeprefix("models:/")
    alias = version = None
    if "@" in text:
        text, alias = text.rsplit("@", 1)
        if alias.lower() != LATEST:
            check_alias(alias)
    elif ":" in text or "/" in text:
        text, number = re.split(r"[:/]", text, maxsplit=1)
        version = _as_version(number)
    return check_name(text), alias, version


def _as_version(value: Any) -> int:
    text = str(value).strip().lstrip("v")
    if not text.isdigit() or int(text) < 1:
        raise RegistryError(f"version {value!r} is not a version number (1, 2, 3, ...)")
    return int(text)


class Registry:
    """The registry under `root` (usually <workspace>/registry). Cheap to create; safe across processes."""

    def __init__(self, root: str):
        self.root = os.path.abspath(root)
        self.db_path = os.path.join(self.root, DB_FILE)
        os.makedirs(self.root, exist_ok=True)
        self._init_db()
        registry_files.clean_leftovers(self.root)

    # --- the database
    def _connect(self) -> sqlite3.Connection:
        con = sqlite3.connect(self.db_path, timeout=BUSY_TIMEOUT_S, isolation_level=None)
        con.row_factory = sqlite3.Row
        con.execute("PRAGMA foreign_keys=ON")
        return con

    def _init_db(self) -> None:
        con = self._connect()
        try:
            deadline = time.monotonic() + BUSY_TIMEOUT_S
            while not _wal(con):  # switching a new file to WAL needs it alone; another process may be at it too
                if time.monotonic() > deadline:
                    raise RegistryError(f"{self.db_path}: cannot put the registry database in WAL mode")
                time.sleep(0.05)
            if con.execute("PRAGMA user_version").fetchone()[0] < SCHEMA_VERSION:  # else no write lock needed
                con.executescript(f"BEGIN IMMEDIATE;{_SCHEMA}PRAGMA user_version = {SCHEMA_VERSION};COMMIT;")
        finally:
            con.close()

    @contextlib.contextmanager
    def _tx(self, write: bool = False) -> Iterator[sqlite3.Connection]:
        """One transaction. A write takes the write lock at its start (BEGIN IMMEDIATE: no read lock to upgrade,
        so it waits its turn instead of failing); a read is one consistent WAL snapshot."""
        con = self._connect()
        try:
            con.execute("BEGIN IMMEDIATE" if write else "BEGIN")
            yield con
            if write and con.in_transaction:  # a caller may have committed itself
                con.execute("COMMIT")
        finally:
            con.close()  # rolls back whatever was not committed

    # --- registering
    def register(self, bundle_dir: str, name: str, note: str = "", actor: str = "") -> ModelVersion:
        """Copy an exported bundle in as the next version of `name` (created on first use); BundleError for a
        failed export, a missing file or one changed since export."""
        check_name(name)
        bundle = Bundle.load(bundle_dir)  # refuses failed exports and missing files
        tmp, files = registry_files.copy_bundle(bundle, self.root)  # outside the lock: copying may take a while
        try:
            content = hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()
            info = {k: bundle.info.get(k) for k in SUMMARY_KEYS}
            with self._tx(write=True) as con:
                other = con.execute("SELECT name FROM models WHERE lower(name) = lower(?) AND name != ?",
                                    (name, name)).fetchone()
                if other:  # they would share a folder on a case-insensitive disk
                    raise RegistryError(f"model {other[0]!r} exists: use it, or a name that differs in more than case")
                version = con.execute("SELECT COALESCE(MAX(version), 0) + 1 FROM versions WHERE name = ?",
                                      (name,)).fetchone()[0]
                same = con.execute("SELECT MIN(version) FROM versions WHERE name = ? AND content_sha256 = ?",
                                   (name, content)).fetchone()[0]
                now = _now()
                con.execute("INSERT OR IGNORE INTO models (name, created) VALUES (?, ?)", (name, now))
                final = os.path.join(self.root, name, str(version))
                inode = registry_files.place(tmp, final, self.root, f"{name}-{version}")
                try:
                    con.execute("INSERT INTO versions (name, version, run_id, source, path, files, content_sha256, "
                                "info, created, created_by, note, same_content_as) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                                (name, version, info.get("run_id"), bundle.path, f"{name}/{version}",
                                 json.dumps(files, sort_keys=True), content, json.dumps(info), now, _actor(actor),
                                 note, same))
                    con.execute("COMMIT")  # here, not on leaving the block: a failed commit takes the folder back
                except BaseException:  # no row: take our folder back out (only ours), so no folder lacks a row
                    if os.stat(final).st_ino == inode:
                        os.rename(final, tmp)
                    raise
        finally:
            if os.path.isdir(tmp):
                shutil.rmtree(tmp, ignore_errors=True)
        os.chmod(final, 0o555)
        return self.get_version(name, version)

    # --- aliases
    def set_alias(self, name: str, alias: str, version: int, reason: str = "", actor: str = "") -> dict[str, Any]:
        """Move (or create) `alias` to `version`; the history row as a dict ("changed": False and no row when it
        already named that version)."""
        check_alias(alias)
        version = _as_version(version)
        with self._tx(write=True) as con:
            return self._move(con, name, alias, version, reason, actor, "move")

    def rollback(self, name: str, alias: str = DEFAULT_ALIAS, reason: str = "", actor: str = "") -> dict[str, Any]:
        """Undo the alias's latest move (a rollback included, so twice goes forward again); the new history row."""
        check_alias(alias)
        with self._tx(write=True) as con:
            self._require_model(con, name)
            last = con.execute("SELECT * FROM alias_history WHERE name = ? AND alias = ? ORDER BY id DESC LIMIT 1",
                               (name, alias)).fetchone()
            if last is None:
                raise NotInRegistry(f"model {name!r} has no alias {alias!r} to roll back; "
                                    f"its aliases: {_listing(self._aliases(con, name))}")
            if last["from_version"] is None:
                raise RegistryError(f"nothing to roll back to: {name}@{alias} has named version "
                                    f"{last['to_version']} since it was first set ({last['at']}); move it to another "
                                    "version instead")
            why = reason or f"rollback of {last['from_version']} -> {last['to_version']} ({last['at']})"
            return self._move(con, name, alias, last["from_version"], why, actor, "rollback")

    def _move(self, con, name: str, alias: str, version: int, reason: str, actor: str, kind: str) -> dict:
        self._require_version(con, name, version)
        row = con.execute("SELECT version FROM aliases WHERE name = ? AND alias = ?", (name, alias)).fetchone()
        before = row[0] if row else None
        now, actor = _now(), _actor(actor)
        move = {"name": name, "alias": alias, "from_version": before, "to_version": version, "at": now,
                "reason": reason, "actor": actor, "kind": kind, "changed": before != version}
        if before == version:
            return {**move, "id": None}
        con.execute("INSERT INTO aliases (name, alias, version, updated) VALUES (?, ?, ?, ?) ON CONFLICT (name, "
                    "alias) DO UPDATE SET version = excluded.version, updated = excluded.updated",
                    (name, alias, version, now))
        cur = con.execute("INSERT INTO alias_history (name, alias, from_version, to_version, at, reason, actor, "
                          "kind) VALUES (?, ?, ?, ?, ?, ?, ?, ?)", (name, alias, before, version, now, reason,
                                                                     actor, kind))
        return {**move, "id": cur.lastrowid}

    def alias_version(self, name: str, alias: str | None = DEFAULT_ALIAS) -> int | None:
        """The version an alias names now (alias None: what plain "name" resolves to; "latest": the newest), or
        None. One connection, one SELECT: cheap enough to poll every second."""
        latest, named = "(SELECT MAX(version) FROM versions WHERE name = ?)", \
            "(SELECT version FROM aliases WHERE name = ? AND alias = ?)"
        sql, args = ((f"SELECT COALESCE({named}, {latest})", (name, DEFAULT_ALIAS, name)) if alias is None else
                     (f"SELECT {latest}", (name,)) if alias.lower() == LATEST else (f"SELECT {named}", (name, alias)))
        with contextlib.closing(sqlite3.connect(self.db_path, timeout=BUSY_TIMEOUT_S)) as con:
            return con.execute(sql, args).fetchone()[0]

    # --- reading
    def resolve(self, ref: str) -> ModelVersion:
        """"name" (champion, else latest), "name@alias", "name@latest", "name:3" or "name/3" -> the version."""
        name, alias, version = parse_ref(ref)
        with self._tx() as con:
            self._require_model(con, name)
            if version is None:
                aliases = self._aliases(con, name)
                if alias is not None and alias.lower() != LATEST and alias not in aliases:
                    raise NotInRegistry(f"model {name!r} has no alias {alias!r}; its aliases: {_listing(aliases)}")
                version = aliases.get(alias or DEFAULT_ALIAS) or self._numbers(con, name)[-1]  # latest: no alias
            return self._version(con, name, version)

    def get_version(self, name: str, version: int) -> ModelVersion:
        with self._tx() as con:
            self._require_model(con, name)
            return self._version(con, name, _as_version(version))

    def verify(self, name: str, version: int) -> ModelVersion:
        """Re-hash a stored version; VersionChanged when any file differs from what was registered."""
        return self.get_version(name, version).verify()

    def list_models(self) -> list[dict[str, Any]]:
        with self._tx() as con:
            rows = con.execute("SELECT m.name, m.created, m.description, COUNT(v.version) AS versions, "
                               "MAX(v.version) AS latest_version FROM models m LEFT JOIN versions v "
                               "ON v.name = m.name GROUP BY m.name ORDER BY m.name").fetchall()
            aliases: dict[str, dict[str, int]] = {}
            for a in con.execute("SELECT name, alias, version FROM aliases ORDER BY alias"):
                aliases.setdefault(a["name"], {})[a["alias"]] = a["version"]
        return [{**dict(r), "aliases": aliases.get(r["name"], {})} for r in rows]

    def versions(self, name: str) -> list[dict[str, Any]]:
        with self._tx() as con:
            self._require_model(con, name)
            return [self._version(con, name, v).to_dict() for v in self._numbers(con, name)]

    def aliases(self, name: str) -> dict[str, int]:
        with self._tx() as con:
            self._require_model(con, name)
            return self._aliases(con, name)

    def history(self, name: str, alias: str | None = None) -> list[dict[str, Any]]:
        """Every alias move of a model (or of one alias), newest first."""
        with self._tx() as con:
            self._require_model(con, name)
            where, args = ("name = ? AND alias = ?", (name, alias)) if alias else ("name = ?", (name,))
            return [dict(r) for r in con.execute(f"SELECT * FROM alias_history WHERE {where} ORDER BY id DESC",
                                                 args)]

    def show(self, name: str) -> dict[str, Any]:
        """A model at a glance: versions with their metrics side by side, aliases, the alias history."""
        with self._tx() as con:
            model = self._require_model(con, name)
            alias_rows = [dict(r) for r in con.execute(
                "SELECT alias, version, updated FROM aliases WHERE name = ? ORDER BY alias", (name,))]
            history = [dict(r) for r in con.execute(
                "SELECT * FROM alias_history WHERE name = ? ORDER BY id DESC", (name,))]
            versions = [self._version(con, name, v) for v in self._numbers(con, name)]
        keep = ("version", "created", "created_by", "run_id", "note", "aliases", "same_content_as")
        versions = [{**{k: v.to_dict()[k] for k in keep}, "metrics": v.info.get("metrics") or {},
                     **{k: v.info.get(k) for k in ("model_format", "architecture_name", "classes", "parity")}}
                    for v in versions]
        metrics = sorted({k for v in versions for k in v["metrics"]})
        return {"name": name, "created": model["created"], "description": model["description"], "root": self.root,
                "metric_names": metrics, "versions": versions, "aliases": alias_rows, "history": history}

    # --- helpers on an open connection
    def _require_model(self, con, name: str) -> sqlite3.Row:
        row = con.execute("SELECT * FROM models WHERE name = ?", (name,)).fetchone()
        if row is None:
            names = [r[0] for r in con.execute("SELECT name FROM models ORDER BY name")]
            where = f"models: {_listing(names)}" if names else \
                "it is empty: `python -m core registry register BUNDLE_DIR --name NAME`"
            raise NotInRegistry(f"no model {name!r} in the registry at {self.root}; {where}")
        return row

    def _numbers(self, con, name: str) -> list[int]:
        return [r[0] for r in con.execute("SELECT version FROM versions WHERE name = ? ORDER BY version", (name,))]

    def _require_version(self, con, name: str, version: int) -> sqlite3.Row:
        self._require_model(con, name)
        row = con.execute("SELECT * FROM versions WHERE name = ? AND version = ?", (name, version)).fetchone()
        if row is None:
            raise NotInRegistry(f"model {name!r} has no version {version}; its versions: "
                                f"{_listing(self._numbers(con, name))}")
        return row

    def _aliases(self, con, name: str) -> dict[str, int]:
        return {r[0]: r[1] for r in con.execute("SELECT alias, version FROM aliases WHERE name = ? ORDER BY alias",
                                                (name,))}

    def _version(self, con, name: str, version: int) -> ModelVersion:
        r = self._require_version(con, name, version)
        aliases = tuple(a[0] for a in con.execute("SELECT alias FROM aliases WHERE name = ? AND version = ? "
                                                  "ORDER BY alias", (name, version)))
        return ModelVersion(r["name"], r["version"], os.path.join(self.root, *r["path"].split("/")), r["run_id"],
                            json.loads(r["info"]), r["created"], aliases, json.loads(r["files"]), r["note"],
                            r["created_by"], r["source"], r["same_content_as"])


def _wal(con: sqlite3.Connection) -> bool:
    try:
        return con.execute("PRAGMA journal_mode=WAL").fetchone()[0].lower() == "wal"
    except sqlite3.OperationalError:  # locked
        return False


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _actor(actor: str) -> str:
    try:
        return actor or getpass.getuser()
    except (KeyError, OSError, ImportError):  # no user name (a container without a passwd entry)
        return ""


def _listing(items: Any) -> str:
    items = [f"{k} -> {v}" for k, v in items.items()] if isinstance(items, dict) else [str(i) for i in items]
    return (", ".join(items[:20]) + (f", ... ({len(items)} in all)" if len(items) > 20 else "")) or "none"
