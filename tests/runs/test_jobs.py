import os
import threading
import time

from core.runs.jobs import JobManager


def test_job_runs_in_background_and_two_threads_read_consistent_snapshots(small_digits_dir, tiny_config, tmp_path):
    manager = JobManager(str(tmp_path))
    run_id = manager.start(tiny_config.replace(epochs=2, val_every_batches=3), small_digits_dir)
    seen: dict[str, list] = {"a": [], "b": []}
    seen_eta: list = []
    errors = []

    def poll(name: str) -> None:
        try:
            while True:
                snap = manager.snapshot(run_id)
                seen[name].append((snap.step, len(snap.epochs), snap.status))
                if snap.status == "running" and snap.step:
                    seen_eta.append(snap.eta_seconds)
                if not snap.active:
                    return
                time.sleep(0.01)
        except Exception as exc:  # surfaces in the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=poll, args=(n,)) for n in seen]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=240)
    assert not errors
    for trace in seen.values():
        steps = [s for s, _, _ in trace]
        assert steps == sorted(steps), "a snapshot went backwards"
        assert trace[-1][2] == "completed" and trace[-1][1] == 3  # epochs 0, 1, 2
    final = manager.snapshot(run_id)
    etas = [e for e in seen_eta if e is not None]
    assert etas and all(e >= 0 for e in etas) and etas[-1] <= etas[0] + 1e-6  # counts down, never negative
    assert final.progress == 1.0 and final.summary["run_id"] == run_id
    assert final.baseline and final.epochs[-1]["val_accuracy"] > 0
    assert any("val_accuracy" in s for s in final.steps)  # mid-epoch validation points
    # a second manager (a restarted process) sees the same run from the store
    again = JobManager(str(tmp_path)).snapshot(run_id)
    assert again.status == "completed" and len(again.epochs) == 3 and again.epoch == 2
    live_val = [s["step"] for s in final.steps if "val_accuracy" in s]
    assert [s["step"] for s in again.steps if "val_accuracy" in s] == live_val  # mid-epoch validations too
    assert [s["step"] for s in again.steps] == sorted(s["step"] for s in again.steps)


def test_stop_is_cooperative_and_the_run_can_be_resumed(small_digits_dir, tiny_config, tmp_path):
    manager = JobManager(str(tmp_path))
    run_id = manager.start(tiny_config.replace(epochs=20), small_digits_dir)
    deadline = time.time() + 120
    while len(manager.snapshot(run_id).epochs) < 2 and time.time() < deadline:
        time.sleep(0.05)
    manager.stop(run_id, timeout=60)
    snap = manager.snapshot(run_id)
    assert snap.status == "stopped" and 1 <= len(snap.epochs) < 20
    manager.resume(run_id)
    while len(manager.snapshot(run_id).epochs) <= len(snap.epochs) and time.time() < deadline + 60:
        time.sleep(0.05)
    manager.stop(run_id, timeout=60)
    assert len(manager.snapshot(run_id).epochs) > len(snap.epochs)


def test_a_crashing_job_shows_its_error(small_digits_dir, tiny_config, tmp_path):
    """A file that vanishes from the dataset store after the run was set up fails the worker, clearly."""
    from core.runs.launch import prepare_data

    manifest = prepare_data(small_digits_dir, tiny_config, str(tmp_path))
    victim = manifest.path_of(manifest.rows_for("val")[0])
    os.remove(victim)
    manager = JobManager(str(tmp_path))
    run_id = manager.start(tiny_config, small_digits_dir)
    snap = manager.wait(run_id, timeout=120)
    assert snap.status == "failed"
    assert victim.name in snap.error and "Traceback" in snap.error_traceback
    assert manager.store.get_run(run_id)["status"] == "failed"


def test_only_the_owner_or_an_admin_names_tags_and_deletes_a_run_and_never_a_training_one(
        small_digits_dir, tiny_config, tmp_path):
    import pytest

    from core.access import NotAllowed, User
    from core.runs.store import RunBusy, RunNotFound

    manager = JobManager(str(tmp_path))
    ann, bob, admin = User("ann"), User("bob"), User("root", True)
    run_id = manager.start(tiny_config.replace(epochs=30), small_digits_dir, owner="ann")
    try:
        with pytest.raises(RunBusy, match="stop it"):
            manager.delete(run_id, user=ann)
        with pytest.raises(NotAllowed, match="ann's"):
            manager.rename(run_id, "mine now", user=bob)
        assert manager.rename(run_id, "first try", user=ann) == "first try"
        assert manager.set_tags(run_id, ["lite0"], user=admin) == ["lite0"]
    finally:
        manager.stop(run_id, timeout=120)
    with pytest.raises(NotAllowed):
        manager.delete(run_id, user=bob)
    assert manager.delete(run_id, user=ann) == run_id
    assert not os.path.exists(manager.store.run_dir(run_id)) and manager.visible_runs(admin) == []
    with pytest.raises(RunNotFound):
        manager.snapshot(run_id)
