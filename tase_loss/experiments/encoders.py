"""Encoders for the experiments: a digits CNN, a small CIFAR CNN, a CIFAR ResNet-18.

:class:`ContrastiveModel` wraps a backbone with SimCLR's projection head and returns
both the backbone features (probed, clustered by the pseudo-labeler) and the
projections (fed to the loss).
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor, nn

__all__ = ["ENCODERS", "ContrastiveModel", "ResNet18Cifar", "build_model", "conv_net"]


def _conv_block(in_channels: int, out_channels: int) -> list[nn.Module]:
    return [
        nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    ]


def conv_net(in_channels: int, widths: tuple[int, ...]) -> nn.Sequential:
    """VGG-style CNN: two 3x3 conv blocks per width, 2x2 max-pool between widths, global pool.

    Output: ``(B, widths[-1])`` features.

    Example:
        >>> conv_net(3, (16, 32, 64))(torch.zeros(2, 3, 32, 32)).shape
        torch.Size([2, 64])
    """
    layers: list[nn.Module] = []
    channels = in_channels
    for position, width in enumerate(widths):
        if position:
            layers.append(nn.MaxPool2d(2))
        layers += _conv_block(channels, width) + _conv_block(width, width)
        channels = width
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
    return nn.Sequential(*layers)


class _BasicBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
        )
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )

    def forward(self, inputs: Tensor) -> Tensor:
        return torch.relu(self.body(inputs) + self.shortcut(inputs))


class ResNet18Cifar(nn.Module):
    """ResNet-18 for 32x32 images: 3x3 stem, no max-pool, stages of 64/128/256/512.

    Output: ``(B, 512)`` features (global average pool).

    Example:
        >>> ResNet18Cifar(3)(torch.zeros(2, 3, 32, 32)).shape
        torch.Size([2, 512])
    """

    def __init__(self, in_channels: int = 3) -> None:
        super().__init__()
        layers: list[nn.Module] = _conv_block(in_channels, 64)
        channels = 64
        for width, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
            layers += [_BasicBlock(channels, width, stride), _BasicBlock(width, width, 1)]
            channels = width
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
        self.layers = nn.Sequential(*layers)

    def forward(self, images: Tensor) -> Tensor:
        return self.layers(images)


ENCODERS: dict[str, tuple[Callable[[int], nn.Module], int]] = {
    "digits-cnn": (lambda channels: conv_net(channels, (32, 64)), 64),
    "tiny-cnn": (lambda channels: conv_net(channels, (8, 16, 32)), 32),
    "small-cnn": (lambda channels: conv_net(channels, (16, 32, 64)), 64),
    "resnet18": (ResNet18Cifar, 512),
}
"""Encoder name -> (constructor taking the input channels, feature size)."""


class ContrastiveModel(nn.Module):
    """Backbone + projection head (Linear-BN-ReLU-Linear), as in SimCLR.

    Args:
        backbone: images ``(B, C, H, W)`` -> features ``(B, F)``.
        feature_dim: ``F``.
        projection_dim: size of the projections the loss sees.

    Example:
        >>> model = build_model("small-cnn", in_channels=3)
        >>> features, projections = model(torch.zeros(2, 3, 32, 32))
        >>> features.shape, projections.shape
        (torch.Size([2, 64]), torch.Size([2, 128]))
    """

    def __init__(self, backbone: nn.Module, feature_dim: int, projection_dim: int = 128) -> None:
        super().__init__()
        self.backbone = backbone
        self.feature_dim = feature_dim
        self.projection_dim = projection_dim
        self.projector = nn.Sequential(
            nn.Linear(feature_dim, feature_dim, bias=False),
            nn.BatchNorm1d(feature_dim),
            nn.ReLU(inplace=True),
            nn.Linear(feature_dim, projection_dim),
        )

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        features = self.backbone(images)
        return features, self.projector(features)


def build_model(encoder: str, in_channels: int, projection_dim: int = 128) -> ContrastiveModel:
    """A :class:`ContrastiveModel` with the named backbone from :data:`ENCODERS`."""
    if encoder not in ENCODERS:
        raise ValueError(f"unknown encoder {encoder!r}; choose from {sorted(ENCODERS)}")
    constructor, feature_dim = ENCODERS[encoder]
    return ContrastiveModel(constructor(in_channels), feature_dim, projection_dim)
