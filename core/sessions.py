"""Each user's working state, kept on the server: the dataset, model, settings and run they were working on.

A browser reload or a second tab is a new dashboard session that starts empty; the dashboard fills it from
`<workspace>/users/<name>-<hash>.json`, one small JSON object per user, and writes back what changes. The
page address wins over the file where it names a dataset or run (a shared link shows what it names). Ids
are checked on the way in: a dataset or run that is gone, or that the user may not see, is dropped.

Two tabs of one user share the file: each writes only the values it changed, so neither undoes the other's
choices (the last change of one value wins).
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import threading
from collections.abc import Iterable, Mapping
from typing import Any

from core.access import DatasetOwners, User, may_see
from core.data.store import DATASET_FILE
from core.files import write_text
from core.runs.store import RunNotFound, RunStore
from core.workspace import Workspace

USERS_DIR = "users"
MAX_STATE_BYTES = 1_000_000  # a state file is a few KB; a larger one is not read (and not written)
_SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$")  # dataset and run ids: no path separators
_lock = threading.Lock()  # one read-modify-write at a time in this process


def state_path(workspace_dir: str, user_name: str) -> str:
    """The user's file: the name's letters, digits, `-` and `_` (for people reading the folder) and a hash
    of the exact name (two names that differ only in other characters never share a file)."""
    readable = re.sub(r"[^A-Za-z0-9_-]+", "_", user_name).strip("_")[:40] or "user"
    digest = hashlib.sha256(user_name.encode("utf-8")).hexdigest()[:12]
    return os.path.join(workspace_dir, USERS_DIR, f"{readable}-{digest}.json")


def load_state(workspace_dir: str, user_name: str) -> dict[str, Any]:
    """The user's saved values ({} when there are none, or the file is unreadable)."""
    path = state_path(workspace_dir, user_name)
    try:
        if os.path.getsize(path) > MAX_STATE_BYTES:
            return {}
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def save_state(workspace_dir: str, user_name: str, changed: Mapping[str, Any],
               removed: Iterable[str] = ()) -> dict[str, Any]:
    """Write `changed` values and drop `removed` keys in the user's file (others stay as they are); returns
    the state now saved. Values must be JSON-serializable (`jsonable` tells)."""
    removed = list(removed)
    with _lock:
        state = load_state(workspace_dir, user_name)
        state.update(changed)
        for key in removed:
            state.pop(key, None)
        text = json.dumps(state, indent=1, sort_keys=True)
        if len(text.encode()) <= MAX_STATE_BYTES:
            write_text(state_path(workspace_dir, user_name), text)
    return state


def jsonable(value: Any) -> bool:
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return False
    return True


def dataset_visible(workspace_dir: str, user: User, dataset_id: Any) -> bool:
    """Whether `dataset_id` names a stored dataset that `user` may see."""
    if not isinstance(dataset_id, str) or not _SAFE_ID.match(dataset_id):
        return False
    datasets_dir = Workspace(workspace_dir).datasets_dir
    if not os.path.isfile(os.path.join(datasets_dir, dataset_id, DATASET_FILE)):
        return False
    return bool(DatasetOwners(datasets_dir).visible(user, [dataset_id]))


def run_visible(store: RunStore, user: User, run_id: Any) -> dict[str, Any] | None:
    """The run `run_id` names when it exists and `user` may see it, else None."""
    if not isinstance(run_id, str) or not _SAFE_ID.match(run_id):
        return None
    try:
        run = store.get_run(run_id)
    except RunNotFound:
        return None
    return run if may_see(user, run.get("owner")) else None
