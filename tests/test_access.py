"""core.access and its use: localhost by default, a login when shared, owners, and no server paths when exposed."""
import json
import os

import pytest
import tomllib

from core.access import AccessPolicy, DatasetOwners, NotAllowed, User, check_may_act, is_localhost, may_see
from core.data.ingest import demo_dataset
from core.data.store import load_dataset_dir
from core.data.types import IngestError
from core.runs.jobs import JobManager
from core.workspace import PathNotAllowed, Workspace

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_the_dashboard_listens_on_localhost_and_shows_no_tracebacks_by_default():
    with open(os.path.join(ROOT, ".streamlit", "config.toml"), "rb") as f:
        config = tomllib.load(f)
    assert config["server"]["address"] == "127.0.0.1"
    assert config["client"]["showErrorDetails"] == "none"
    assert is_localhost("127.0.0.1") and is_localhost("localhost") and is_localhost("::1")
    assert not is_localhost("0.0.0.0") and not is_localhost("") and not is_localhost(None)


def test_the_policy_follows_the_environment():
    local = AccessPolicy.from_env("127.0.0.1", False, {})
    assert local.login == "none" and not local.open_to_the_network and not local.training_refusal()
    assert local.user(None) == User("local", True)
    open_ = AccessPolicy.from_env("0.0.0.0", False, {})
    assert open_.open_to_the_network and "Training is turned off" in open_.training_refusal()
    team = AccessPolicy.from_env("0.0.0.0", False, {"TRANSFER_STUDIO_PASSWORD": "s3cret",
                                                   "TRANSFER_STUDIO_ADMINS": "Ada, bob@example.com"})
    assert team.login == "password" and not team.open_to_the_network and not team.training_refusal()
    assert team.check_password("s3cret") and not team.check_password("s3cre") and not team.check_password("")
    assert team.user(None) is None and team.user("  ") is None
    assert team.user("ada") == User("ada", True) and team.user("carol") == User("carol", False)
    assert AccessPolicy.from_env("0.0.0.0", True, {}).login == "oidc"


def test_owners_act_on_their_own_and_admins_on_all():
    ada, carol, admin = User("ada"), User("carol"), User("root", True)
    assert may_see(ada, "ada") and not may_see(carol, "ada") and may_see(admin, "ada")
    assert not may_see(ada, "")  # no recorded owner: admins only
    with pytest.raises(NotAllowed, match="run r1 is ada's; only its owner or an admin"):
        check_may_act(carol, "ada", "run r1")


def test_another_users_run_cannot_be_stopped_or_resumed(tmp_path):
    manager = JobManager(str(tmp_path))
    run_id = manager.store.create_run({"model": "m"}, {"source": "x"}, owner="ada")
    manager.store.update_run(run_id, status="stopped")
    with pytest.raises(NotAllowed):
        manager.stop(run_id, user=User("carol"))
    with pytest.raises(NotAllowed):
        manager.resume(run_id, user=User("carol"))
    assert manager.store.get_run(run_id)["status"] == "stopped"
    assert [r["id"] for r in manager.visible_runs(User("ada"))] == [run_id]
    assert manager.visible_runs(User("carol")) == [] and len(manager.visible_runs(User("x", True))) == 1
    manager.stop(run_id, user=User("ada"))  # its owner may (nothing runs: a no-op)


def test_datasets_are_seen_by_their_owners(tmp_path):
    owners = DatasetOwners(str(tmp_path))
    owners.record("d1", "ada")
    owners.record("d1", "carol")  # the same images uploaded twice: one dataset, two owners
    owners.record("d2", "ada")
    assert owners.visible(User("carol"), ["d1", "d2", "d3"]) == ["d1"]
    assert owners.visible(User("ada"), ["d1", "d2", "d3"]) == ["d1", "d2"]
    assert owners.visible(User("root", True), ["d1", "d2", "d3"]) == ["d1", "d2", "d3"]


def test_server_paths_are_refused_when_exposed_unless_the_administrator_names_folders(tmp_path):
    assert Workspace.from_env({}, exposed=False).server_path(str(tmp_path)) == os.path.realpath(tmp_path)
    with pytest.raises(PathNotAllowed, match="server paths are turned off"):
        Workspace.from_env({}, exposed=True).server_path(str(tmp_path))
    allowed = Workspace.from_env({"TRANSFER_STUDIO_DATA_ROOTS": str(tmp_path)}, exposed=True)
    assert allowed.server_path(str(tmp_path / "x")) == os.path.realpath(tmp_path / "x")


@pytest.mark.parametrize("bad", ["../../../etc/passwd", "/etc/passwd", "a/../../x.png", "link/x.png"])
def test_a_dataset_index_cannot_point_outside_its_folder(tmp_path, bad):
    dataset = demo_dataset(str(tmp_path / "ws"))
    folder = dataset.root
    os.symlink("/etc", os.path.join(folder, "link"))
    index = os.path.join(folder, "dataset.json")
    with open(index, encoding="utf-8") as f:
        d = json.load(f)
    d["samples"][3]["path"] = bad
    with open(index, "w", encoding="utf-8") as f:
        json.dump(d, f)
    with pytest.raises(IngestError, match="points outside the dataset folder"):
        load_dataset_dir(folder)
