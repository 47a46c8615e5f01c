"""The training loop's names that docs/plugins.md's recipes assume, on toy data.

``namespace()`` returns them fresh: a lightly-style dataset of ``((view0, view1), label)``
items wrapped by ``IndexedDataset`` (so a batch is ``((view0, view1), label, index)``), a
loader over it, a ``backbone`` with 512 features and a ``head``, ``epochs`` and
``warmup_epochs``, a momentum encoder ``model_ema`` and ``momentum_update``.
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from tase_loss import IndexedDataset


class TwoViews(Dataset):
    """``((view0, view1), label)`` of 64 toy points, as lightly's datasets return them."""

    def __init__(self) -> None:
        generator = torch.Generator().manual_seed(0)
        self.points = torch.randn(64, 10, generator=generator)

    def __len__(self) -> int:
        return len(self.points)

    def __getitem__(self, index: int):
        point = self.points[index]
        return (point + 0.1 * torch.randn_like(point), point + 0.1 * torch.randn_like(point)), 0


@torch.no_grad()
def momentum_update(online: nn.Module, target: nn.Module, momentum: float = 0.99) -> None:
    for online_parameter, target_parameter in zip(online.parameters(), target.parameters()):
        target_parameter.mul_(momentum).add_(online_parameter, alpha=1 - momentum)


def namespace() -> dict:
    torch.manual_seed(0)
    backbone = nn.Sequential(nn.Linear(10, 64), nn.BatchNorm1d(64), nn.ReLU(), nn.Linear(64, 512))
    head = nn.Sequential(nn.Linear(512, 64), nn.ReLU(), nn.Linear(64, 32))
    dataset = IndexedDataset(TwoViews())
    return {
        "__name__": "plugins",
        "torch": torch,
        "dataset": dataset,
        "loader": DataLoader(dataset, batch_size=16, shuffle=True, drop_last=True),
        "backbone": backbone,
        "head": head,
        "model_ema": copy.deepcopy(nn.Sequential(backbone, head)).requires_grad_(False),
        "momentum_update": momentum_update,
        "epochs": 2,
        "warmup_epochs": 1,
    }
