"""Costs of the rwSAM plug-ins on CPU, and what kNN density weights do on CIFAR-10-LT pixels.

    python benchmarks/bench_plugins.py [--data /work/shared/data/cifar10_lt_r100.npz]

Prints, for the CIFAR-10-LT training-set size (N = 12406):
- KNNDensityWeights.refresh() wall time for random features of D = 128 and 512;
- wall time of one rwSAM step (two forward-backward passes) vs one SGD step on a small CNN;
- with --data: the mean kNN-density weight per class on 8x8 RGB thumbnails (no encoder),
  next to the class sizes, as a sanity check of the direction only.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from torch import nn

from tase_loss import KNNDensityWeights, RwSAM, TASEContrastiveLoss, rwsam_step

NUM_SAMPLES = 12406


def _best_of(function, repeats):
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return min(times)


def bench_refresh(repeats: int) -> None:
    for dim in (128, 512):
        weights = KNNDensityWeights(NUM_SAMPLES, dim, k=10)
        weights.update(torch.arange(NUM_SAMPLES), torch.randn(NUM_SAMPLES, dim))
        seconds = _best_of(weights.refresh, repeats)
        print(f"refresh  N={NUM_SAMPLES} D={dim:4d} k=10: {seconds:.2f} s (best of {repeats})")


def bench_step(repeats: int) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
        nn.Flatten(), nn.Linear(64, 128),
    )
    view0, view1 = torch.randn(128, 3, 32, 32), torch.randn(128, 3, 32, 32)
    weight = torch.rand(128) + 0.5
    criterion = TASEContrastiveLoss(temperature=0.2)
    sgd = torch.optim.SGD(model.parameters(), lr=0.01)

    def plain_step():
        sgd.zero_grad()
        criterion(model(view0), model(view1)).backward()
        sgd.step()

    rwsam = RwSAM(model.parameters(), torch.optim.SGD, rho=0.5, adaptive=True, lr=0.01)

    def rwsam_one_step():
        rwsam_step(rwsam, lambda w: criterion(model(view0), model(view1), weight=w), weight,
                   freeze=[model, criterion])

    # Interleaved so that load from other processes hits both alike.
    plain, two_pass = float("inf"), float("inf")
    for _ in range(repeats):
        plain = min(plain, _best_of(plain_step, 1))
        two_pass = min(two_pass, _best_of(rwsam_one_step, 1))
    print(f"step     batch 128, small CNN: SGD {plain * 1e3:.0f} ms, rwSAM {two_pass * 1e3:.0f} ms "
          f"(best of {repeats}) "
          f"(x{two_pass / plain:.2f})")


def pixel_density_by_class(path: str) -> None:
    data = np.load(path)
    images = torch.from_numpy(data["x"]).float().permute(0, 3, 1, 2) / 255.0
    thumbnails = nn.functional.avg_pool2d(images, 4).flatten(1)  # 8x8x3 = 192
    thumbnails = thumbnails - thumbnails.mean(dim=0)
    labels = torch.from_numpy(data["y"])
    weights = KNNDensityWeights(len(labels), thumbnails.shape[1], k=10)
    weights.update(torch.arange(len(labels)), thumbnails)
    weights.refresh()
    batch = weights(torch.arange(len(labels)))
    sizes = torch.bincount(labels)
    print("class  size  mean weight  (8x8 thumbnails, k=10, h=0.1, beta=1)")
    for label in torch.argsort(sizes, descending=True).tolist():
        print(f"{label:5d} {int(sizes[label]):5d}  {float(batch[labels == label].mean()):.3f}")
    rank_size = torch.argsort(torch.argsort(sizes.double())).double()
    rank_weight = torch.argsort(torch.argsort(torch.stack(
        [batch[labels == c].mean() for c in range(len(sizes))]).double())).double()
    spearman = torch.corrcoef(torch.stack([rank_size, rank_weight]))[0, 1]
    print(f"Spearman(class size, mean weight) = {float(spearman):.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=None, help="cifar10_lt_r100.npz for the pixel check")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    bench_refresh(args.repeats)
    bench_step(args.repeats)
    if args.data:
        pixel_density_by_class(args.data)


if __name__ == "__main__":
    main()
