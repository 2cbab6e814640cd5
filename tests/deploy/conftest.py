"""Shared fixtures of the deployment tests: a registry holding the session's ONNX export (the tiny trained run and
its export, `deploy_run` and `onnx_export`, are in tests/conftest.py: the dashboard's tests share them). Tests
that change a bundle copy it first."""
from __future__ import annotations

import os

import pytest


@pytest.fixture(scope="session")
def bundle_dir(onnx_export) -> str:
    assert onnx_export.passed, onnx_export.parity
    return onnx_export.bundle_dir


@pytest.fixture(scope="session")
def test_image(deploy_run) -> str:
    """A test-split image of the run (a PNG path)."""
    from core.runs.launch import run_inputs
    from core.runs.store import RunStore

    runs_dir, run_id = deploy_run
    _, data = run_inputs(RunStore(runs_dir), run_id)
    path = data.test.paths[0]
    assert os.path.isfile(path)
    return path


# --- serving (tests/deploy/test_server.py): a workspace whose registry holds the export twice
@pytest.fixture(scope="session")
def serve_workspace(tmp_path_factory, bundle_dir) -> str:
    """A workspace root whose registry (<root>/registry) holds model "digits" versions 1 and 2 (the same bundle
    registered twice: two versions a hot switch can move between), alias champion -> 1. Tests that move aliases
    use their own alias names."""
    from core.deploy.registry import Registry

    root = str(tmp_path_factory.mktemp("serve_ws"))
    registry = Registry(os.path.join(root, "registry"))
    assert [registry.register(bundle_dir, "digits").version for _ in range(2)] == [1, 2]
    registry.set_alias("digits", "champion", 1)
    return root
