import os

import pytest

from core.workspace import DATA_ROOTS_VAR, ENV_VAR, PathNotAllowed, Workspace


def test_the_workspace_comes_from_the_environment(tmp_path):
    ws = Workspace.from_env({ENV_VAR: str(tmp_path / "ws")})
    assert ws.root == str(tmp_path / "ws") and ws.runs_dir == str(tmp_path / "ws" / "runs")
    assert ws.data_roots is None and ws.server_path(str(tmp_path)) == os.path.realpath(tmp_path)


def test_data_roots_limit_the_server_paths_the_dashboard_reads(tmp_path):
    allowed, other = tmp_path / "data", tmp_path / "data-other"
    (allowed / "cats").mkdir(parents=True)
    other.mkdir()
    (allowed / "escape").symlink_to(other)
    ws = Workspace.from_env({DATA_ROOTS_VAR: str(allowed)})
    assert ws.server_path(f" {allowed}/cats ") == str(allowed / "cats")
    for outside in (other, allowed / ".." / "data-other", allowed / "escape", "/etc"):
        with pytest.raises(PathNotAllowed, match=DATA_ROOTS_VAR):
            ws.server_path(str(outside))
    with pytest.raises(PathNotAllowed, match="turned off"):
        Workspace.from_env({DATA_ROOTS_VAR: ""}).server_path(str(allowed))
