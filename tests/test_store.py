import sqlite3
import threading

import pytest

from core.store import RunNotFound, RunStore


def test_store_uses_wal_and_round_trips_runs_and_metrics(tmp_path):
    store = RunStore(str(tmp_path))
    run_id = store.create_run({"model": "m", "lr": 0.1}, {"source": "/data", "dataset_id": "abc"})
    store.update_run(run_id, status="running")
    store.log_metrics(run_id, "epoch", 1, 10, {"val_accuracy": 0.5})
    store.log_metrics(run_id, "step", 1, 11, {"loss": 1.0})
    store.truncate_metrics(run_id, after_step=10)
    run = store.get_run(run_id)
    assert run["status"] == "running" and run["config"]["lr"] == 0.1 and run["dataset_id"] == "abc"
    assert store.metrics(run_id, "epoch")[0]["val_accuracy"] == 0.5
    assert store.metrics(run_id, "step") == []
    mode = sqlite3.connect(store.db_path).execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "wal"
    with pytest.raises(RunNotFound):
        store.get_run("nope")


def test_concurrent_writers_lose_nothing(tmp_path):
    store = RunStore(str(tmp_path))
    run_id = store.create_run({}, {})

    def write(offset):
        other = RunStore(str(tmp_path))  # another handle, as another thread or process would have
        for i in range(50):
            other.log_metrics(run_id, "step", 0, offset + i, {"loss": float(i)})

    threads = [threading.Thread(target=write, args=(k * 1000,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(store.metrics(run_id, "step")) == 200
