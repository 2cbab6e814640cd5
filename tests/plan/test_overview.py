import os
import shutil

from core.config import TrainConfig
from core.data.ingest import resolve_dataset
from core.plan.overview import augmentation_preview, dataset_overview
from core.runs.launch import prepare_data


def test_the_overview_splits_like_a_run_and_shows_examples_and_leaks(small_digits_dir, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(small_digits_dir, data)
    first = min(os.listdir(data / "3"))
    shutil.copy(data / "3" / first, data / "8" / "copy-of-a-three.png")  # the same image under two labels
    config = TrainConfig(image_size=64)
    overview = dataset_overview(resolve_dataset(str(data), str(tmp_path / "ws")), str(tmp_path / "ws"), config)
    assert overview.manifest.rows == prepare_data(str(data), config, str(tmp_path / "ws")).rows
    assert sum(overview.split_sizes().values()) == overview.report.num_images == 301
    assert overview.report.min_size == 64  # audited against the size the run will use
    assert set(overview.examples) == {str(d) for d in range(10)}
    assert all(len(paths) == 8 and all(os.path.isfile(p) for p in paths) for paths in overview.examples.values())
    conflict = [p for p in overview.pairs if p.code == "conflicting_labels"]
    assert len(conflict) == 1 and {conflict[0].label_a, conflict[0].label_b} == {"3", "8"}
    assert os.path.isfile(conflict[0].a) and os.path.isfile(conflict[0].b)
    assert overview.report.blocks_training


def test_the_augmentation_preview_is_one_row_per_image(small_digits_dir, tmp_path):
    dataset = resolve_dataset(small_digits_dir, str(tmp_path))
    grid = augmentation_preview(dataset, TrainConfig(image_size=32), images=3, per_image=4)
    assert grid.shape == (3 * 32, 5 * 32, 3) and grid.dtype.name == "uint8"
