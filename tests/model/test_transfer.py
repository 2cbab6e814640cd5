import pytest
import torch
from torch import nn

from core.model.backbones import load_backbone
from core.model.transfer import TransferModel, frozen_group_count


@pytest.fixture(scope="module")
def backbone_factory():
    return lambda: load_backbone("efficientnet_lite0")


def test_freeze_ratio_freezes_a_forward_order_prefix(backbone_factory):
    model = TransferModel(backbone_factory(), num_classes=3)
    n = len(model.groups)
    assert n >= 10
    frozen = model.freeze_ratio(0.75)
    assert frozen == frozen_group_count(n, 0.75) == int(0.75 * n)
    for i in range(n):
        grads = {p.requires_grad for m in model.group_modules(i) for p in m.parameters()}
        assert grads == {i >= frozen}
    assert all(p.requires_grad for p in model.head.parameters())
    assert model.freeze_ratio(0.0) == 0 and all(p.requires_grad for p in model.trunk.parameters())
    assert model.freeze_ratio(1.0) == n and not any(p.requires_grad for p in model.trunk.parameters())


@pytest.mark.parametrize("bn_stats, frozen_train, trainable_train", [
    ("frozen", False, False), ("trainable", False, True), ("all", True, True)])
def test_batchnorm_modes(backbone_factory, bn_stats, frozen_train, trainable_train):
    model = TransferModel(backbone_factory(), num_classes=3, bn_stats=bn_stats)
    frozen = model.freeze_ratio(0.5)
    model.train()
    bn = lambda i: [m for mod in model.group_modules(i) for m in mod.modules() if isinstance(m, nn.BatchNorm2d)]
    assert all(m.training == frozen_train for m in bn(0))
    assert all(m.training == trainable_train for m in bn(len(model.groups) - 1))
    # frozen BN running statistics are untouched by a training forward pass
    before = bn(0)[0].running_mean.clone()
    model(torch.randn(4, 3, 32, 32))
    assert torch.equal(bn(0)[0].running_mean, before) != frozen_train
    assert model.head.training and frozen > 0


def test_frozen_layers_build_no_autograd_graph(backbone_factory):
    model = TransferModel(backbone_factory(), num_classes=3)
    frozen = model.freeze_ratio(0.75)
    seen: dict[int, bool] = {}

    def hook(index):
        def record(module, inputs, output):
            seen.setdefault(index, output.requires_grad)
        return record

    for i in range(len(model.groups)):
        model.group_modules(i)[-1].register_forward_hook(hook(i))
    model.train()
    model(torch.randn(2, 3, 32, 32)).sum().backward()
    assert all(not seen[i] for i in range(frozen)), "a frozen group's output carried a graph"
    assert all(seen[i] for i in range(frozen, len(model.groups)))


def test_discriminative_learning_rates(backbone_factory):
    model = TransferModel(backbone_factory(), num_classes=3)
    frozen = model.freeze_ratio(0.75)
    groups = model.param_groups(lr=1e-3, lr_decay=0.5)
    assert groups[0]["name"] == "head" and groups[0]["lr"] == 1e-3
    trunk_groups = groups[1:]
    assert len(trunk_groups) == len(model.groups) - frozen
    for k, g in enumerate(trunk_groups, start=1):  # the k-th group below the head: lr * decay**k
        assert g["lr"] == pytest.approx(1e-3 * 0.5 ** k)
    # top-most trunk group first, and no frozen parameter is handed to the optimizer
    assert trunk_groups[0]["name"] == f"group{len(model.groups) - 1}"
    assert all(p.requires_grad for g in groups for p in g["params"])


def test_adapter_layers_sit_between_trunk_and_head(backbone_factory):
    model = TransferModel(backbone_factory(), num_classes=4, adapter_layers=2, adapter_dim=16)
    assert model.head.in_features == 16
    assert model.eval()(torch.randn(2, 3, 32, 32)).shape == (2, 4)
    assert model.group_summary()[-1]["modules"] == "adapter + head"
