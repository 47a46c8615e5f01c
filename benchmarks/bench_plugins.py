"""Costs of the rwSAM plug-ins on CPU, and what kNN density weights do on CIFAR-10-LT pixels.

    python benchmarks/bench_plugins.py [--pixels] [--data PATH] [--samples N] [--repeats R]

rwSAM's weights are :class:`tase_loss.FrequencyWeights` over a
:class:`tase_loss.PseudoLabeler` with ``KNNDensityEstimator(kernel="exponential")``, at
the runner's rwSAM settings (``RwSAMSettings``). Prints, for ``--samples`` (default the
CIFAR-10-LT training-set size, N = 12406):

- one density estimate (``PseudoLabeler.estimate()``) for random features of D = 128 and 512;
- wall time of one rwSAM step (two forward-backward passes) vs one SGD step on a small CNN;
- with ``--pixels``: the mean weight per class on CIFAR-10-LT's 8x8 RGB thumbnails (no
  encoder), next to the class sizes, as a sanity check of the direction only. The file is
  ``--data``, else cifar10_lt_r100.npz in ``$TASE_LOSS_DATA``, else in ../shared/data
  beside the repository.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks.datasets import CIFAR10_LT, find_data_file  # noqa: E402
from tase_loss import (  # noqa: E402
    FrequencyWeights,
    KNNDensityEstimator,
    PseudoLabeler,
    RwSAM,
    SampleReweighter,
    TASEContrastiveLoss,
    rwsam_step,
)
from tase_loss.experiments.methods.rwsam import RwSAMSettings  # noqa: E402

CIFAR10_LT_SAMPLES = 12406


def rwsam_weights(features: torch.Tensor) -> FrequencyWeights:
    """rwSAM's inverse-density weights of ``(N, D)`` features, estimated once."""
    settings = RwSAMSettings()
    labeler = PseudoLabeler(
        features.shape[0],
        features.shape[1],
        KNNDensityEstimator(kernel="exponential", bandwidth=settings.bandwidth, smoothing_rounds=0),
        warmup_epochs=1,
        momentum=0.0,
    )
    labeler.update(torch.arange(features.shape[0]), features)
    labeler.estimate()
    return FrequencyWeights(labeler, SampleReweighter(settings.alpha, settings.max_weight))


def _best_of(function, repeats):
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return min(times)


def bench_estimate(samples: int, repeats: int) -> None:
    for dim in (128, 512):
        labeler = rwsam_weights(torch.randn(samples, dim)).pseudo_labeler
        seconds = _best_of(labeler.estimate, repeats)
        print(f"estimate N={samples} D={dim:4d} k={labeler.estimator.num_neighbors}: {seconds:.2f} s "
              f"(best of {repeats})")


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


def pixel_density_by_class(path: Path) -> None:
    with np.load(path) as data:
        images = torch.from_numpy(data["x"]).float().permute(0, 3, 1, 2) / 255.0
        labels = torch.from_numpy(data["y"])
    thumbnails = nn.functional.avg_pool2d(images, 4).flatten(1)  # 8x8x3 = 192
    thumbnails = thumbnails - thumbnails.mean(dim=0)
    weights = rwsam_weights(thumbnails)
    batch = weights(torch.arange(len(labels)))
    sizes = torch.bincount(labels)
    settings = RwSAMSettings()
    print(f"class  size  mean weight  (8x8 thumbnails, k={weights.pseudo_labeler.estimator.num_neighbors}, "
          f"h={settings.bandwidth:g}, alpha={settings.alpha:g})")
    for label in torch.argsort(sizes, descending=True).tolist():
        print(f"{label:5d} {int(sizes[label]):5d}  {float(batch[labels == label].mean()):.3f}")
    rank_size = torch.argsort(torch.argsort(sizes.double())).double()
    rank_weight = torch.argsort(torch.argsort(torch.stack(
        [batch[labels == c].mean() for c in range(len(sizes))]).double())).double()
    spearman = torch.corrcoef(torch.stack([rank_size, rank_weight]))[0, 1]
    print(f"Spearman(class size, mean weight) = {float(spearman):.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pixels", action="store_true", help="also the per-class weights of CIFAR-10-LT pixels")
    parser.add_argument(
        "--data", default=None, help=f"{CIFAR10_LT} for --pixels (default: in $TASE_LOSS_DATA or ../shared/data)"
    )
    parser.add_argument("--samples", type=int, default=CIFAR10_LT_SAMPLES, help="N of the estimate timing")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    if args.samples < 32 or args.repeats < 1:
        parser.error(f"--samples must be >= 32 and --repeats >= 1, got {args.samples} and {args.repeats}")
    data = None
    if args.pixels or args.data is not None:
        try:
            data = find_data_file(CIFAR10_LT, args.data, "--data")
        except FileNotFoundError as error:
            parser.error(str(error))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    bench_estimate(args.samples, args.repeats)
    bench_step(args.repeats)
    if data is not None:
        pixel_density_by_class(data)


if __name__ == "__main__":
    main()
