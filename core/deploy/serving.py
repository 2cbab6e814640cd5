"""The prediction server as a background process the dashboard starts, watches and stops.

`start_server(workspace, ref, port)` spawns `python -m core serve REF --workspace ROOT --port PORT` detached (its own
session, so it outlives a dashboard rerun), its output to <workspace>/serving/server.log, and records it in
<workspace>/serving/server.json (pid, port, url, ref, started). `server_status` says whether that process is alive
and whether /health answers; `stop_server` sends SIGTERM (uvicorn finishes the requests in flight), waits, and
falls back to SIGKILL. One server per workspace.
"""
from __future__ import annotations

import datetime as dt
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from typing import Any, Sequence

from core.errors import StudioError
from core.files import write_text

STATE_FILE = "server.json"
LOG_FILE = "server.log"
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback: never through a proxy


class ServingError(StudioError, RuntimeError):
    """The background server could not be started (it exited, or never answered /health), or one is running."""


def serving_dir(workspace: str) -> str:
    return os.path.join(os.path.abspath(workspace), "serving")


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _url(host: str, port: int) -> str:
    shown = "127.0.0.1" if host in ("0.0.0.0", "") else (f"[{host}]" if ":" in host else host)
    return f"http://{shown}:{port}"


def start_server(workspace: str, ref: str, port: int | None = None, host: str = "127.0.0.1",
                 extra_args: Sequence[str] = (), wait_s: float = 60.0, env: dict[str, str] | None = None
                 ) -> dict[str, Any]:
    """Start the server of registry model `ref` in the background; return its state once /health answers
    (wait_s 0: at once). `port` None: a free one. ServingError if one is already running here, or if it exits or
    stays silent (the message holds its log's last lines)."""
    current = server_status(workspace)
    if current["running"]:
        raise ServingError(f"a server is already running for this workspace ({current['url']}, pid {current['pid']},"
                           f" serving {current['ref']}); stop it first")
    folder = serving_dir(workspace)
    os.makedirs(folder, exist_ok=True)
    port = int(port) if port else free_port(host)
    cmd = [sys.executable, "-m", "core", "serve", ref, "--workspace", os.path.abspath(workspace), "--host", host,
           "--port", str(port), *extra_args]
    log_path = os.path.join(folder, LOG_FILE)
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # `core`'s parent
    child_env = {**os.environ, **(env or {})}
    child_env["PYTHONPATH"] = os.pathsep.join(p for p in (root, child_env.get("PYTHONPATH", "")) if p)
    with open(log_path, "ab") as log:
        offset = log.tell()
        log.write(f"\n--- {_now()} {' '.join(cmd)}\n".encode())
        log.flush()
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True, env=child_env, cwd=os.path.abspath(workspace))
    state = {"pid": proc.pid, "port": port, "host": host, "url": _url(host, port), "ref": ref, "started": _now(),
             "log": log_path, "command": cmd}
    write_text(os.path.join(folder, STATE_FILE), json.dumps(state, indent=1))
    if wait_s:
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                _forget(workspace)
                raise ServingError(f"the server exited (status {proc.returncode}) before answering:\n"
                                   f"{_tail(log_path, offset)}")
            if _health(state["url"], timeout=1.0) is not None:
                return {**state, "running": True, "healthy": True}
            time.sleep(0.2)
        stop_server(workspace)
        raise ServingError(f"the server did not answer /health within {wait_s:g} s; stopped it. Its log:\n"
                           f"{_tail(log_path, offset)}")
    return {**state, "running": True, "healthy": False}


def read_state(workspace: str) -> dict[str, Any] | None:
    try:
        with open(os.path.join(serving_dir(workspace), STATE_FILE), encoding="utf-8") as f:
            state = json.load(f)
        return state if isinstance(state, dict) and isinstance(state.get("pid"), int) else None
    except (OSError, ValueError):
        return None


def server_status(workspace: str, timeout: float = 1.0) -> dict[str, Any]:
    """{"running": the recorded process is alive, "healthy": /health answered, "health": its answer, and the
    state's pid, port, url, ref, started, log}; running False (and nothing else known) when none was started."""
    state = read_state(workspace)
    if state is None:
        return {"running": False, "healthy": False, "health": None, "pid": None, "url": None, "ref": None}
    alive = pid_alive(state["pid"])
    health = _health(state["url"], timeout) if alive else None
    return {**state, "running": alive, "healthy": health is not None, "health": health}


def stop_server(workspace: str, timeout: float = 10.0) -> bool:
    """SIGTERM the recorded server, wait up to `timeout`, then SIGKILL; forget it. True if one was running."""
    state = read_state(workspace)
    if state is None:
        return False
    pid, was_alive = state["pid"], pid_alive(state["pid"])
    if was_alive:
        _signal(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while pid_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        if pid_alive(pid):
            _signal(pid, signal.SIGKILL)
            deadline = time.monotonic() + 5
            while pid_alive(pid) and time.monotonic() < deadline:
                time.sleep(0.05)
    _forget(workspace)
    return was_alive


def pid_alive(pid: int) -> bool:
    """Is process `pid` running (a zombie child of ours is reaped and counts as gone), and is it ours to judge (on
    Linux: its command line is a `core serve`, so a recycled pid is not mistaken for the server)?"""
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done == pid:
            return False
    except ChildProcessError:  # not our child: look it up instead
        pass
    except OSError:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmdline = f.read().split(b"\0")
    except OSError:
        return True  # no /proc (macOS): the signal check is all there is
    if not cmdline or not cmdline[0]:
        return False  # a zombie of another parent
    return b"serve" in cmdline and b"core" in cmdline


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def _health(url: str, timeout: float) -> dict[str, Any] | None:
    try:
        with _DIRECT.open(f"{url}/health", timeout=timeout) as r:
            return json.loads(r.read())
    except (urllib.error.URLError, OSError, ValueError):
        return None


def _forget(workspace: str) -> None:
    try:
        os.remove(os.path.join(serving_dir(workspace), STATE_FILE))
    except FileNotFoundError:
        pass


def _tail(path: str, offset: int = 0, lines: int = 20) -> str:
    """The last `lines` lines written to the log since `offset` (this start's own output)."""
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            return "".join(f.read().decode("utf-8", "replace").splitlines(keepends=True)[-lines:])
    except OSError:
        return "(no log)"


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")
