"""MoCo v2 (queue + momentum key encoder) with TASE instead of InfoNCE: the loop to copy.

``TASEContrastiveLoss(queue_size=...)`` owns the queue (a buffer, saved by
``state_dict()``): it reads the queue, then enqueues this batch's keys. Changes from a
plain MoCo v2 loop are marked ``# TASE``:

    python examples/moco_v2_tase.py --epochs 20
"""

from __future__ import annotations

import argparse
import copy

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from tase_loss import IndexedDataset, PseudoLabeler, TASEContrastiveLoss
from tase_loss.experiments.augmentations import simclr_augmentation
from tase_loss.experiments.data import load_digits_lt
from tase_loss.experiments.encoders import conv_net


@torch.no_grad()
def momentum_update(online: nn.Module, target: nn.Module, momentum: float = 0.99) -> None:
    for online_parameter, target_parameter in zip(online.parameters(), target.parameters()):
        target_parameter.mul_(momentum).add_(online_parameter, alpha=1 - momentum)


def main(epochs: int = 20, warmup_epochs: int = 5, max_steps: int = 0, seed: int = 0) -> float:
    """Train; returns the last loss. ``max_steps > 0`` stops early (for the tests)."""
    torch.manual_seed(seed)
    data = load_digits_lt(ratio=10.0)
    images = torch.from_numpy(data.x_train)
    dataset = IndexedDataset(TensorDataset(images))  # TASE: items are (image, index)
    loader = DataLoader(dataset, batch_size=128, shuffle=True, drop_last=True)
    backbone = conv_net(in_channels=1, widths=(32, 64))
    head = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 32))
    query_encoder = nn.Sequential(backbone, head)
    key_encoder = copy.deepcopy(query_encoder).requires_grad_(False)
    augment = simclr_augmentation(image_size=8, channels=1)
    labeler = PseudoLabeler(num_samples=len(dataset), feature_dim=64, warmup_epochs=warmup_epochs)  # TASE
    criterion = TASEContrastiveLoss(temperature=0.2, queue_size=1024, feature_dim=32,
                                    pseudo_labeler=labeler)  # TASE
    optimizer = torch.optim.AdamW(query_encoder.parameters(), lr=1e-3)

    step, loss = 0, torch.tensor(float("nan"))
    for epoch in range(epochs):
        for batch, index in loader:
            with torch.no_grad():
                view0, view1 = augment(batch), augment(batch)
                momentum_update(query_encoder, key_encoder)
                keys = key_encoder(view1)
            features = backbone(view0)
            queries = head(features)
            # reads the queue, enqueues the keys; TASE: the bank stores the backbone features
            loss = criterion(queries, keys, index=index, features=features)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            step += 1
            if max_steps and step >= max_steps:
                return loss.item()
        labeler.end_epoch(epoch)  # TASE
        print(f"epoch {epoch}: loss {loss.item():.3f}, queue {int(criterion.queue.length)}")
    return loss.item()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--warmup-epochs", type=int, default=5)
    arguments = parser.parse_args()
    main(arguments.epochs, arguments.warmup_epochs)
