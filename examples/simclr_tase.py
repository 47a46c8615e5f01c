"""SimCLR with TASE instead of NT-Xent: the training loop to copy.

The only changes from a plain SimCLR loop are marked ``# TASE``: the dataset also
yields indices (``IndexedDataset``), the loss gets ``index=`` (and the backbone
features to estimate frequencies from), and the pseudo-labeler hears about each
epoch's end. Runs on the embedded digits-LT data:

    python examples/simclr_tase.py --epochs 20
"""

from __future__ import annotations

import argparse

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from tase_loss import IndexedDataset, PseudoLabeler, TASEContrastiveLoss
from tase_loss.experiments.augmentations import simclr_augmentation
from tase_loss.experiments.data import load_digits_lt
from tase_loss.experiments.encoders import conv_net


def main(epochs: int = 20, warmup_epochs: int = 5, max_steps: int = 0, seed: int = 0) -> float:
    """Train; returns the last loss. ``max_steps > 0`` stops early (for the tests)."""
    torch.manual_seed(seed)
    data = load_digits_lt(ratio=10.0)
    images = torch.from_numpy(data.x_train)
    dataset = IndexedDataset(TensorDataset(images))  # TASE: items are (image, index)
    loader = DataLoader(dataset, batch_size=128, shuffle=True, drop_last=True)
    backbone = conv_net(in_channels=1, widths=(32, 64))  # (B, 1, 8, 8) -> (B, 64)
    head = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 32))
    augment = simclr_augmentation(image_size=8, channels=1)
    labeler = PseudoLabeler(num_samples=len(dataset), feature_dim=64, warmup_epochs=warmup_epochs)  # TASE
    criterion = TASEContrastiveLoss(temperature=0.2, pseudo_labeler=labeler)  # TASE
    optimizer = torch.optim.AdamW([*backbone.parameters(), *head.parameters()], lr=1e-3)

    step, loss = 0, torch.tensor(float("nan"))
    for epoch in range(epochs):
        for batch, index in loader:
            with torch.no_grad():
                view0, view1 = augment(batch), augment(batch)
            features = backbone(torch.cat([view0, view1]))
            out0, out1 = head(features).chunk(2)
            # TASE: NT-Xent until the warm-up ends; the bank stores the backbone features
            loss = criterion(out0, out1, index=index, features=features[: len(index)])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            step += 1
            if max_steps and step >= max_steps:
                return loss.item()
        labeler.end_epoch(epoch)  # TASE
        print(f"epoch {epoch}: loss {loss.item():.3f}, frequencies estimated: {labeler.is_fitted}")
    return loss.item()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--warmup-epochs", type=int, default=5)
    arguments = parser.parse_args()
    main(arguments.epochs, arguments.warmup_epochs)
