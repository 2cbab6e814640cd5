import dataclasses

import pytest

from core.data.audit import audit_dataset
from core.config import TrainConfig
from core.model.licenses import license_warning
from core.plan.suggest import quick_start, suggest_settings


@pytest.fixture(scope="module")
def report(small_digits_dir, tmp_path_factory):
    return audit_dataset(small_digits_dir, workspace_dir=str(tmp_path_factory.mktemp("ws")))


def test_small_dark_images_on_a_cpu_get_a_small_size_and_more_trainable_layers(report):
    suggestion = suggest_settings(report, "cpu", 224)
    assert suggestion.changes == {"freeze_ratio": 0.5, "image_size": 64}  # 24 px digits, far from ImageNet
    assert len(suggestion.reasons) == 2
    config = suggestion.apply(TrainConfig())
    assert config.image_size == 64 and config.validate()
    assert "image_size" not in suggest_settings(report, "cuda", 224).changes  # a GPU can afford the model's size


def test_imbalanced_classes_get_focal_loss(report):
    imbalanced = dataclasses.replace(report, imbalance_ratio=12.0)
    suggestion = suggest_settings(imbalanced, "cuda")
    assert suggestion.changes["loss"] == "focal" and "12:1" in suggestion.reasons[0]


def test_a_quick_start_is_short():
    assert quick_start("cpu") == {"image_size": 64, "epochs": 5}
    assert TrainConfig(**quick_start("cuda")).validate().epochs == 5
    demo = TrainConfig.from_dict(quick_start("cpu", demo=True)).validate()
    assert not demo.augment.hflip and demo.augment.scale_min == TrainConfig().augment.scale_min


def test_restrictive_licenses_are_flagged():
    assert license_warning("Apache-2.0") is None and license_warning("BSD-3-Clause") is None
    assert "non-commercial" in license_warning("CC-BY-NC-4.0")
    assert "non-commercial" in license_warning("research only")
    assert "copyleft" in license_warning("GPL-3.0")
    assert "not recorded" in license_warning("see timm")
