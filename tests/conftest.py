"""Shared fixtures: scikit-learn's digits exported as small PNG class folders, and a tiny, fast config."""
from __future__ import annotations

import os

import numpy as np
import pytest
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

from core.config import AugmentSpec, TrainConfig


def export_digits(root: str, per_class: int | None = None, size: int = 24) -> str:
    from sklearn.datasets import load_digits

    digits = load_digits()
    counts: dict[int, int] = {}
    for i, (img, y) in enumerate(zip(digits.images, digits.target)):
        if per_class is not None and counts.get(int(y), 0) >= per_class:
            continue
        counts[int(y)] = counts.get(int(y), 0) + 1
        folder = os.path.join(root, str(y))
        os.makedirs(folder, exist_ok=True)
        pixels = (img / 16 * 255).astype(np.uint8)
        Image.fromarray(pixels).resize((size, size), Image.Resampling.NEAREST).convert("RGB").save(
            os.path.join(folder, f"{i:04d}.png"))
    return root


@pytest.fixture(scope="session")
def digits_dir(tmp_path_factory) -> str:
    """All 1,797 digits (10 classes) as 24 px PNGs."""
    return export_digits(str(tmp_path_factory.mktemp("digits")))


@pytest.fixture(scope="session")
def small_digits_dir(tmp_path_factory) -> str:
    """30 digits per class: for runs that only need to work, not to learn much."""
    return export_digits(str(tmp_path_factory.mktemp("digits_small")), per_class=30)


@pytest.fixture
def tiny_config() -> TrainConfig:
    """Small images and a short run: seconds on two CPU cores. Related images from file names only (no
    embedding pass) and no cross-validated check: the tests of those turn them on themselves."""
    return TrainConfig(image_size=32, epochs=2, batch_size=32, augment=AugmentSpec(hflip=False),
                       early_stopping_patience=0, group_by="names", crossval_folds=0)


# --- deployment (tests/deploy and the Deploy / Predict pages' tests): one tiny run and one ONNX export per session
@pytest.fixture(scope="session")
def deploy_run(tmp_path_factory, small_digits_dir) -> tuple[str, str]:
    """(runs_dir, run_id) of a one-epoch run on 30 digits per class at 32 px."""
    from core.runs.launch import start_run

    runs_dir = str(tmp_path_factory.mktemp("deploy_runs"))
    config = TrainConfig(image_size=32, epochs=1, batch_size=32, augment=AugmentSpec(hflip=False),
                         early_stopping_patience=0, group_by="names", crossval_folds=0)
    summary = start_run(config, small_digits_dir, runs_dir)
    return runs_dir, summary["run_id"]


@pytest.fixture(scope="session")
def onnx_export(deploy_run):
    """The run's kept model exported to ONNX (core.deploy.export.ExportResult); never modify its folder."""
    from core.deploy.export import export_run

    runs_dir, run_id = deploy_run
    return export_run(runs_dir, run_id, "onnx")

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


# serving (tests/deploy/test_server.py): a workspace whose registry holds the export twice
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
