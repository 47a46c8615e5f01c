"""BYOL or SimSiam with TASE's per-sample weights: the loop to copy.

BYOL and SimSiam have no softmax and no temperature, so TASE enters as the weighted
mean of their per-sample loss (``TASECosineLoss``). Changes from a plain loop are
marked ``# TASE``:

    python examples/byol_simsiam_tase.py --variant byol --epochs 20
    python examples/byol_simsiam_tase.py --variant simsiam --epochs 20
"""

from __future__ import annotations

import argparse
import copy

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from tase_loss import IndexedDataset, PseudoLabeler, TASECosineLoss
from tase_loss.experiments.augmentations import simclr_augmentation
from tase_loss.experiments.data import load_digits_lt
from tase_loss.experiments.encoders import conv_net


def mlp(width_in: int, width_out: int) -> nn.Module:
    return nn.Sequential(nn.Linear(width_in, 64), nn.BatchNorm1d(64), nn.ReLU(), nn.Linear(64, width_out))


@torch.no_grad()
def momentum_update(online: nn.Module, target: nn.Module, momentum: float = 0.99) -> None:
    for online_parameter, target_parameter in zip(online.parameters(), target.parameters()):
        target_parameter.mul_(momentum).add_(online_parameter, alpha=1 - momentum)


def main(variant: str = "byol", epochs: int = 20, warmup_epochs: int = 5, max_steps: int = 0, seed: int = 0) -> float:
    """Train; returns the last loss. ``max_steps > 0`` stops early (for the tests)."""
    torch.manual_seed(seed)
    data = load_digits_lt(ratio=10.0)
    images = torch.from_numpy(data.x_train)
    dataset = IndexedDataset(TensorDataset(images))  # TASE: items are (image, index)
    loader = DataLoader(dataset, batch_size=128, shuffle=True, drop_last=True)
    backbone = conv_net(in_channels=1, widths=(32, 64))
    online = nn.Sequential(backbone, mlp(64, 32))
    predictor = mlp(32, 32)
    target = copy.deepcopy(online).requires_grad_(False) if variant == "byol" else online
    augment = simclr_augmentation(image_size=8, channels=1)
    labeler = PseudoLabeler(num_samples=len(dataset), feature_dim=64, warmup_epochs=warmup_epochs)  # TASE
    criterion = TASECosineLoss(variant, pseudo_labeler=labeler)  # TASE: weighted mean
    optimizer = torch.optim.AdamW([*online.parameters(), *predictor.parameters()], lr=1e-3)

    step, loss = 0, torch.tensor(float("nan"))
    for epoch in range(epochs):
        for batch, index in loader:
            with torch.no_grad():
                view0, view1 = augment(batch), augment(batch)
            features = backbone(view0)
            projection0, projection1 = online[1](features), online(view1)
            prediction0, prediction1 = predictor(projection0), predictor(projection1)
            with torch.no_grad():
                if variant == "byol":
                    momentum_update(online, target)
                target0, target1 = target(view0).detach(), target(view1).detach()
            # TASE: both halves of the symmetric loss take index=; the bank stores the features
            loss = 0.5 * (criterion(prediction0, target1, index=index, features=features)
                          + criterion(prediction1, target0, index=index, features=features))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            step += 1
            if max_steps and step >= max_steps:
                return loss.item()
        labeler.end_epoch(epoch)  # TASE
        print(f"epoch {epoch}: loss {loss.item():.3f}")
    return loss.item()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", choices=("byol", "simsiam"), default="byol")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--warmup-epochs", type=int, default=5)
    arguments = parser.parse_args()
    main(arguments.variant, arguments.epochs, arguments.warmup_epochs)
