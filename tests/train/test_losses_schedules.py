import pytest
import torch

from core.train.losses import FocalLoss, class_weights, make_loss
from core.train.schedules import lr_multiplier


def test_focal_with_gamma_zero_is_cross_entropy_and_down_weights_easy_examples():
    logits = torch.tensor([[4.0, 0.0], [0.2, 0.0]])
    target = torch.tensor([0, 0])
    ce = torch.nn.functional.cross_entropy(logits, target)
    assert FocalLoss(gamma=0.0)(logits, target) == pytest.approx(float(ce))
    per = torch.nn.functional.cross_entropy(logits, target, reduction="none")
    focal_easy = FocalLoss(gamma=2.0)(logits[:1], target[:1])
    assert focal_easy < per[0] * 0.01  # confident, correct example nearly ignored


def test_class_weights_are_inverse_frequency():
    w = class_weights([90, 10])
    assert w[1] / w[0] == pytest.approx(9.0)
    assert make_loss("weighted_cross_entropy", [90, 10]).weight[1] == pytest.approx(float(w[1]))


def test_cosine_warms_up_then_decays_to_zero_and_step_divides_by_ten():
    m = [lr_multiplier(s, 100, 10, "cosine", warmup_epochs=1) for s in range(100)]
    assert m[0] < m[5] < m[9] <= 1.0
    assert m[10] == pytest.approx(1.0) and m[99] < 0.01
    assert lr_multiplier(29, 100, 10, "step", step_epochs=3) == 1.0
    assert lr_multiplier(30, 100, 10, "step", step_epochs=3) == pytest.approx(0.1)
