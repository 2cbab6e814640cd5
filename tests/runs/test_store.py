import sqlite3
import threading

import pytest

from core.runs.store import RunNotFound, RunStore


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


def test_runs_are_named_tagged_and_deleted_with_their_folder_and_metrics(tmp_path):
    import os

    from core.runs.store import RunBusy
    from core.runs.runlock import RunLock

    store = RunStore(str(tmp_path))
    run_id = store.create_run({"model": "m"}, {})
    other = store.create_run({"model": "m"}, {})
    assert store.get_run(run_id)["name"] == run_id and store.get_run(run_id)["tags"] == []
    assert store.rename_run(run_id, "  lite0\n at 128 px ") == "lite0 at 128 px"
    assert store.rename_run(other, "") == other, "an empty name is the id again"
    assert store.set_tags(run_id, [" baseline", "128px", "Baseline", ""]) == ["baseline", "128px"]
    assert store.get_run(run_id)["tags"] == ["baseline", "128px"]
    with pytest.raises(ValueError, match="at most"):
        store.rename_run(run_id, "x" * 500)
    with pytest.raises(ValueError, match="at most"):
        store.set_tags(run_id, [str(i) for i in range(50)])

    store.update_run(run_id, status="running")
    with RunLock(store.run_dir(run_id)):  # a trainer holds it
        with pytest.raises(RunBusy, match="stop it"):
            store.delete_run(run_id)
    store.update_run(run_id, status="stopped")
    store.log_metrics(run_id, "epoch", 1, 10, {"val_accuracy": 0.5})
    with open(os.path.join(store.run_dir(run_id), "best.pt"), "wb") as f:
        f.write(b"weights")
    store.delete_run(run_id)
    assert not os.path.exists(store.run_dir(run_id))
    assert [r["id"] for r in store.list_runs()] == [other] and store.metrics(run_id, "epoch") == []
    with pytest.raises(RunNotFound):
        store.get_run(run_id)
    with pytest.raises(RunNotFound):
        store.delete_run(run_id)


def test_a_delete_cut_short_leaves_the_run_gone_and_the_next_purge_finishes_it(tmp_path, monkeypatch):
    import os

    store = RunStore(str(tmp_path))
    run_id = store.create_run({"model": "m"}, {})
    store.update_run(run_id, status="completed")
    monkeypatch.setattr("core.runs.store.shutil.rmtree", lambda *a, **k: None)  # the files could not be removed
    with pytest.raises(OSError, match="remove it by hand"):
        store.delete_run(run_id)
    assert store.list_runs() == [] and os.path.isdir(store.run_dir(run_id)), "marked deleted first"
    monkeypatch.undo()
    assert store.purge_deleted() == 1 and not os.path.exists(store.run_dir(run_id))
    assert sqlite3.connect(store.db_path).execute("SELECT COUNT(*) FROM runs").fetchone()[0] == 0


def test_an_older_runs_db_gets_the_tags_and_deleted_columns(tmp_path):
    db = sqlite3.connect(str(tmp_path / "runs.db"))
    db.execute("CREATE TABLE runs (id TEXT PRIMARY KEY, created REAL, updated REAL, status TEXT, name TEXT, "
               "model TEXT, data_source TEXT, dataset_id TEXT, config TEXT, data TEXT, summary TEXT, error TEXT, "
               "best_checkpoint TEXT)")
    db.execute("INSERT INTO runs (id, created, status, name) VALUES ('old', 1.0, 'completed', 'old')")
    db.commit()
    db.close()
    store = RunStore(str(tmp_path))
    assert store.get_run("old")["tags"] == [] and store.set_tags("old", ["kept"]) == ["kept"]
