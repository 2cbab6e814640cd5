"""core.runs.runlock: one trainer per run, and a run whose trainer is gone is called interrupted, not running."""
import os
import subprocess
import sys

import pytest

from core.runs.compare import status_of
from core.runs.jobs import JobManager
from core.runs.runlock import RunLock, RunLocked, is_trained_now
from core.runs.launch import resume_run
from core.runs.store import RunStore


def _running_run(tmp_path) -> tuple[RunStore, str]:
    store = RunStore(str(tmp_path))
    run_id = store.create_run({"model": "m"}, {"source": "x"})
    store.update_run(run_id, status="running")
    return store, run_id


def test_the_lock_is_exclusive_and_names_its_holder(tmp_path):
    with RunLock(str(tmp_path)):
        assert is_trained_now(str(tmp_path))
        with pytest.raises(RunLocked, match=rf"process {os.getpid()}"):
            RunLock(str(tmp_path)).acquire()
    assert not is_trained_now(str(tmp_path))
    RunLock(str(tmp_path)).acquire().release()  # free again once released


def test_a_dead_process_leaves_the_lock_free(tmp_path):
    code = f"from core.runs.runlock import RunLock; import os; RunLock({str(tmp_path)!r}).acquire(); os._exit(9)"
    assert subprocess.run([sys.executable, "-c", code], cwd=os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))).returncode == 9
    assert not is_trained_now(str(tmp_path))  # the kernel dropped it with the process


def test_running_with_the_lock_held_is_running_and_without_it_interrupted(tmp_path):
    store, run_id = _running_run(tmp_path)
    assert store.live_status(store.get_run(run_id)) == "interrupted"
    assert status_of(store.get_run(run_id), (), store.run_dir(run_id)) == "interrupted"
    assert JobManager(str(tmp_path)).snapshot(run_id).status == "interrupted"
    with RunLock(store.run_dir(run_id)):  # as a trainer in another process holds it
        assert store.live_status(store.get_run(run_id)) == "running"
        assert status_of(store.get_run(run_id), (), store.run_dir(run_id)) == "running"
        assert JobManager(str(tmp_path)).snapshot(run_id).status == "running"


def test_resuming_a_run_another_process_trains_is_refused_and_changes_nothing(tmp_path):
    store, run_id = _running_run(tmp_path)
    with RunLock(store.run_dir(run_id)):
        with pytest.raises(RunLocked, match="being trained by process"):
            resume_run(run_id, str(tmp_path))
        with pytest.raises(RunLocked, match="being trained by process"):
            JobManager(str(tmp_path)).resume(run_id)
    run = store.get_run(run_id)
    assert run["status"] == "running" and not run["error"]
    assert store.metrics(run_id, "setup") == []  # no second trainer got as far as starting


def test_the_cli_lists_a_dead_run_as_interrupted_and_refuses_a_live_one(tmp_path):
    store, run_id = _running_run(tmp_path)
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    listed = subprocess.run([sys.executable, "-m", "core", "runs", "--runs-dir", str(tmp_path)], cwd=root,
                            capture_output=True, text=True, timeout=60)
    assert "interrupted" in listed.stdout
    with RunLock(store.run_dir(run_id)):
        out = subprocess.run([sys.executable, "-m", "core", "train", "--resume", run_id, "--runs-dir", str(tmp_path)],
                             cwd=root, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "being trained by process" in out.stderr and "Traceback" not in out.stderr
