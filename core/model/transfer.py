"""The transfer model: a pretrained trunk, an optional adapter, a new head; layer groups and freezing.

Layer groups are the trunk's blocks in forward order (timm's fine group matcher where the model has one,
top-level children otherwise). `freeze_ratio` freezes a forward-order prefix of them, so frozen layers
see inputs that need no gradient and build no autograd graph. Discriminative learning rates give the
head `lr` and the k-th trainable group below it `lr * lr_decay**k`.
"""
from __future__ import annotations

import math
from collections import OrderedDict

import torch
from torch import nn

from core.model.backbones import Backbone

_BN_TYPES = (nn.modules.batchnorm._BatchNorm,)


class TransferModel(nn.Module):
    def __init__(self, backbone: Backbone, num_classes: int, adapter_layers: int = 0, adapter_dim: int = 256,
                 dropout: float = 0.1, bn_stats: str = "trainable"):
        super().__init__()
        self.trunk = backbone.trunk
        layers: list[nn.Module] = []
        width = backbone.num_features
        for _ in range(adapter_layers):
            layers += [nn.Linear(width, adapter_dim), nn.BatchNorm1d(adapter_dim), nn.GELU()]
            width = adapter_dim
        self.adapter = nn.Sequential(*layers)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(width, num_classes)
        self.bn_stats = bn_stats  # which trunk BatchNorm layers update running stats in train mode
        self.groups: list[list[str]] = trunk_layer_groups(self.trunk)  # module names under `trunk`
        self.frozen_groups = 0

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.adapter(self.trunk(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.dropout(self.forward_features(x)))

    # --- freezing
    def group_modules(self, index: int) -> list[nn.Module]:
        return [self.trunk.get_submodule(name) for name in self.groups[index]]

    def freeze_groups(self, count: int) -> None:
        """Freeze the first `count` trunk groups (forward order) and unfreeze the rest."""
        count = max(0, min(count, len(self.groups)))
        for i in range(len(self.groups)):
            for module in self.group_modules(i):
                for p in module.parameters(recurse=True):
                    p.requires_grad_(i >= count)
        self.frozen_groups = count
        self.train(self.training)  # re-apply BN modes

    def freeze_ratio(self, ratio: float) -> int:
        count = frozen_group_count(len(self.groups), ratio)
        self.freeze_groups(count)
        return count

    def train(self, mode: bool = True) -> "TransferModel":
        """Train mode, except trunk BatchNorm layers that keep their pretrained running statistics.

        bn_stats="trainable" (default): BN in trainable groups normalises with batch statistics and updates
        its running statistics to the new data; BN in frozen groups stays in eval mode. "frozen": every
        trunk BN stays in eval mode (for tiny batches). "all": every BN updates, frozen groups' too.
        Measured on digits at 224 px (docs/BENCHMARKS.md): "frozen" collapsed validation accuracy in the
        first epoch, since trained convolutions drift away from statistics nothing re-estimates.
        """
        super().train(mode)
        if not mode or self.bn_stats == "all":
            return self
        keep = range(len(self.groups)) if self.bn_stats == "frozen" else range(self.frozen_groups)
        for i in keep:
            for module in self.group_modules(i):
                for m in module.modules():
                    if isinstance(m, _BN_TYPES):
                        m.eval()
        return self

    # --- optimisation
    def param_groups(self, lr: float, lr_decay: float, trunk_lr_ratio: float | None = None) -> list[dict]:
        """Head and adapter at `lr`; the k-th trainable trunk group below them (k = 0, 1, ...) at
        lr * trunk_lr_ratio * lr_decay**k (trunk_lr_ratio defaults to lr_decay: lr * lr_decay**(k+1))."""
        ratio = lr_decay if trunk_lr_ratio is None else trunk_lr_ratio
        groups = [{"name": "head", "params": list(self.head.parameters()) + list(self.adapter.parameters()),
                   "lr": lr}]
        depth = 0
        for i in reversed(range(self.frozen_groups, len(self.groups))):
            params = [p for m in self.group_modules(i) for p in m.parameters() if p.requires_grad]
            if params:
                groups.append({"name": f"group{i}", "params": params, "lr": lr * ratio * lr_decay ** depth})
            depth += 1
        return groups

    def group_summary(self) -> list[dict]:
        """Per group: name, parameter count, frozen or not (the Configure page draws this)."""
        rows = []
        for i, names in enumerate(self.groups):
            count = sum(p.numel() for m in self.group_modules(i) for p in m.parameters())
            rows.append({"group": i, "modules": names[0] + (f" ... {names[-1]}" if len(names) > 1 else ""),
                         "params": count, "frozen": i < self.frozen_groups})
        head = sum(p.numel() for p in list(self.head.parameters()) + list(self.adapter.parameters()))
        rows.append({"group": len(self.groups), "modules": "adapter + head", "params": head, "frozen": False})
        return rows


def frozen_group_count(num_groups: int, ratio: float) -> int:
    """How many of `num_groups` a ratio freezes: floor, so 0.75 of 18 groups freezes 13."""
    return int(math.floor(ratio * num_groups + 1e-9))


def trunk_layer_groups(trunk: nn.Module) -> list[list[str]]:
    """Module names of the trunk grouped into blocks, in forward order; groups without parameters dropped."""
    groups: list[list[str]] = []
    matcher = getattr(trunk, "group_matcher", None)
    if matcher is not None:
        from timm.models import group_modules

        grouped = group_modules(trunk, matcher(coarse=False))
        groups = [list(names) for _, names in sorted(grouped.items())]
    else:  # torchvision and plain modules: the top-level children, then one level down for Sequentials
        for name, child in trunk.named_children():
            if isinstance(child, nn.Sequential) and len(child) > 1:
                groups += [[f"{name}.{sub}"] for sub, _ in child.named_children()]
            else:
                groups.append([name])
    modules = OrderedDict(trunk.named_modules())
    groups = [[n for n in g if n in modules and any(True for _ in modules[n].parameters())] for g in groups]
    return [g for g in groups if g]
