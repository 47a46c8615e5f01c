"""Two-stage OOD recipe vs NT-Xent vs TASE on long-tailed scikit-learn digits.

A stand-alone pilot of issue 8 (the experiment runner's "ood-guided" method runs the same recipe).
ID data: scikit-learn's digits, 50 test images per class held out (balanced test set),
the rest made long-tailed with an exponential profile (imbalance ratio 10, digit 0 the
most frequent). OOD data: digit-like 8x8 patches of scikit-learn's sample photographs
(:func:`tase_loss.ood.sample_image_patches`). Evaluation: a logistic-regression probe
on backbone features of a balanced 10-shot labelled subset of the training pool,
accuracy on the balanced test set; Many = digits 0-2, Medium = 3-6, Few = 7-9.

Every method gets the same MLP, augmentations, optimizer (Adam), batch size and
number of epochs over the ID data ("ood-stage1-only" spends all of them in stage 1;
"pixels" is the probe on raw pixels, for scale).

Run from the repository root:
``PYTHONPATH=. python examples/ood_two_stage_digits.py --seeds 0 1 2``
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression
from torch import Tensor, nn

from tase_loss import PseudoLabeler, TASEContrastiveLoss, nt_xent_loss
from tase_loss.ood import TwoStageConfig, TwoStageOOD, sample_image_patches

GROUPS = {"many": [0, 1, 2], "medium": [3, 4, 5, 6], "few": [7, 8, 9]}


def long_tailed_digits(seed: int, ratio: float = 10.0, test_per_class: int = 50):
    digits = load_digits()
    rng = np.random.default_rng(seed)
    train, test = [], []
    for label in range(10):
        members = rng.permutation(np.flatnonzero(digits.target == label))
        test += members[:test_per_class].tolist()
        pool = members[test_per_class:]
        keep = round(len(pool) * ratio ** (-label / 9))
        train += pool[:keep].tolist()
    x = torch.tensor(digits.data, dtype=torch.float32) / 16.0
    y = torch.tensor(digits.target)
    return x[train], y[train], x[test], y[test]


def augment(x: Tensor) -> Tensor:
    """Random 1-pixel shift, contrast jitter, pixel dropout and noise on (B, 64) images."""
    images = x.view(-1, 1, 8, 8)
    padded = nn.functional.pad(images, (1, 1, 1, 1))
    dy, dx = torch.randint(0, 3, (2,)).tolist()
    images = padded[:, :, dy : dy + 8, dx : dx + 8]
    images = images * (0.7 + 0.6 * torch.rand(images.shape[0], 1, 1, 1))
    images = images * (torch.rand_like(images) > 0.15)
    return (images + 0.1 * torch.randn_like(images)).reshape(-1, 64)


class Network(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.backbone = nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 128), nn.ReLU())
        self.head = nn.Sequential(nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, 64))

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.backbone(x))


def batches(num_samples: int, batch_size: int, generator: torch.Generator):
    order = torch.randperm(num_samples, generator=generator)
    return [index for index in order.split(batch_size) if len(index) == batch_size]


def train_baseline(method: str, x: Tensor, epochs: int, batch_size: int, seed: int) -> Network:
    torch.manual_seed(seed)
    model = Network()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    labeler = PseudoLabeler(len(x), 64, warmup_epochs=max(1, epochs // 5), seed=seed)
    criterion = TASEContrastiveLoss(temperature=0.2, pseudo_labeler=labeler)
    generator = torch.Generator().manual_seed(seed)
    for epoch in range(epochs):
        for index in batches(len(x), batch_size, generator):
            out0, out1 = model(augment(x[index])), model(augment(x[index]))
            if method == "nt-xent":
                loss = nt_xent_loss(out0, out1, 0.2)
            else:
                loss = criterion(out0, out1, index=index)  # also stores out0 in the bank
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        if method == "tase":
            labeler.end_epoch(epoch)
    return model


def train_ood_guided(
    x: Tensor, ood: Tensor, epochs: int, batch_size: int, seed: int, stage1_only: bool = False
) -> Network:
    torch.manual_seed(seed)
    model = Network()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    stage1_epochs = epochs if stage1_only else epochs // 2
    config = TwoStageConfig(stage1_epochs=stage1_epochs, stage2_epochs=epochs - stage1_epochs,
                            warmup_epochs=max(1, epochs // 10), num_clusters=20,
                            ood_batch_size=batch_size // 2, seed=seed)
    method = TwoStageOOD(ood, len(x), 64, augment, config)
    generator = torch.Generator().manual_seed(seed)
    for epoch in range(epochs):
        for index in batches(len(x), batch_size, generator):
            method.training_step((index, augment(x[index]), augment(x[index])), model, optimizer)
        method.on_epoch_end(epoch)
    return model


def probe(model: Network, x, y, x_test, y_test, seed: int) -> dict[str, float]:
    rng = np.random.default_rng(seed)
    shots = np.concatenate([rng.choice(np.flatnonzero(y.numpy() == c), 10, replace=False)
                            for c in range(10)])
    with torch.no_grad():
        features, test_features = model.backbone(x[shots]).numpy(), model.backbone(x_test).numpy()
    classifier = LogisticRegression(max_iter=2000).fit(features, y.numpy()[shots])
    correct = classifier.predict(test_features) == y_test.numpy()
    result = {"all": 100 * correct.mean()}
    for group, classes in GROUPS.items():
        result[group] = 100 * correct[np.isin(y_test.numpy(), classes)].mean()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--ood-size", type=int, default=2000)
    parser.add_argument("--methods", nargs="+",
                        default=["pixels", "nt-xent", "tase", "ood-guided", "ood-stage1-only"])
    args = parser.parse_args()
    torch.set_num_threads(1)
    ood = sample_image_patches(args.ood_size, seed=0) / 16.0
    results: dict[str, list[dict[str, float]]] = {method: [] for method in args.methods}
    for seed in args.seeds:
        x, y, x_test, y_test = long_tailed_digits(seed)
        for method in args.methods:
            start = time.perf_counter()
            if method == "pixels":  # reference: the probe on raw pixels, no training
                model = Network()
                model.backbone = nn.Identity()
            elif method in ("ood-guided", "ood-stage1-only"):
                model = train_ood_guided(x, ood, args.epochs, args.batch_size, seed,
                                         stage1_only=method == "ood-stage1-only")
            else:
                model = train_baseline(method, x, args.epochs, args.batch_size, seed)
            result = probe(model, x, y, x_test, y_test, seed)
            results[method].append(result)
            print(f"seed {seed} {method:10s} {time.perf_counter() - start:5.1f}s "
                  + " ".join(f"{k} {v:5.1f}" for k, v in result.items()), flush=True)
    print(f"\n{len(x)} long-tailed training images, {len(x_test)} test images, "
          f"{args.epochs} epochs, seeds {args.seeds}")
    print("| method | all | many | medium | few | std(many, medium, few) |")
    print("|---|---|---|---|---|---|")
    for method, runs in results.items():
        cells = []
        for key in ("all", "many", "medium", "few"):
            values = [run[key] for run in runs]
            spread = statistics.stdev(values) if len(values) > 1 else 0.0
            cells.append(f"{statistics.mean(values):.1f} +-{spread:.1f}")
        group_std = statistics.mean(
            statistics.pstdev([run["many"], run["medium"], run["few"]]) for run in runs
        )
        print(f"| {method} | " + " | ".join(cells) + f" | {group_std:.1f} |")


if __name__ == "__main__":
    main()
