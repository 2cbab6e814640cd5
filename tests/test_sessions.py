import json
import os

from core import sessions
from core.access import DatasetOwners, User
from core.runs.store import RunStore


def test_each_user_has_one_file_inside_the_users_folder_whatever_the_name(tmp_path):
    root = str(tmp_path)
    paths = {name: sessions.state_path(root, name) for name in ("ann", "Ann", "a/b", "a_b", "../../etc/passwd", "")}
    assert len(set(paths.values())) == len(paths), "names that differ never share a file"
    for path in paths.values():
        assert os.path.dirname(path) == os.path.join(root, sessions.USERS_DIR)
        assert os.path.basename(path).endswith(".json") and "/" not in os.path.basename(path)
    assert os.path.basename(paths["ann"]).startswith("ann-")


def test_two_tabs_each_write_only_what_they_changed(tmp_path):
    root = str(tmp_path)
    assert sessions.load_state(root, "ann") == {}
    sessions.save_state(root, "ann", {"dataset_id": "d1", "model": "m1"})
    sessions.save_state(root, "ann", {"model": "m2"})  # another tab changes the model only
    sessions.save_state(root, "ann", {}, removed=["missing"])
    assert sessions.load_state(root, "ann") == {"dataset_id": "d1", "model": "m2"}
    assert sessions.load_state(root, "bob") == {}
    sessions.save_state(root, "ann", {}, removed=["model"])
    assert sessions.load_state(root, "ann") == {"dataset_id": "d1"}
    with open(sessions.state_path(root, "ann"), "w") as f:
        f.write("{half a file")
    assert sessions.load_state(root, "ann") == {}, "an unreadable file is no state, not an error"
    assert sessions.jsonable({"a": [1, 2.0, None]}) and not sessions.jsonable({"a": object()})


def test_restored_ids_must_exist_and_be_visible_to_the_user(tmp_path):
    root = str(tmp_path)
    store = RunStore(os.path.join(root, "runs"))
    ann_run = store.create_run({"model": "m"}, {}, owner="ann")
    ann, bob, admin = User("ann"), User("bob"), User("root", True)
    assert sessions.run_visible(store, ann, ann_run)["id"] == ann_run
    assert sessions.run_visible(store, bob, ann_run) is None
    assert sessions.run_visible(store, admin, ann_run) is not None
    assert sessions.run_visible(store, ann, "no-such-run") is None
    assert sessions.run_visible(store, ann, "../runs.db") is None

    folder = os.path.join(root, "datasets", "abc123")
    os.makedirs(folder)
    with open(os.path.join(folder, "dataset.json"), "w") as f:
        json.dump({"source": "x"}, f)
    DatasetOwners(os.path.join(root, "datasets")).record("abc123", "ann")
    assert sessions.dataset_visible(root, ann, "abc123")
    assert not sessions.dataset_visible(root, bob, "abc123")
    assert sessions.dataset_visible(root, admin, "abc123")
    assert not sessions.dataset_visible(root, admin, "gone")
    assert not sessions.dataset_visible(root, admin, "../datasets/abc123")
    assert not sessions.dataset_visible(root, admin, None)
