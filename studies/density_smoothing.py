"""What does smoothing buy the kNN density on weak features? A sweep on encoder checkpoints.

``knn-density`` (and ``stable-count`` where its groups are unstable, as on every
CIFAR-10-LT CPU encoder) averages the log density over the mutual-kNN graph. More rounds
over more neighbours make the estimate smoother: its per-sample Spearman with the true
class frequency can rise while its scale, the log Few/Many gap it recovers, shrinks
towards zero, and with it every TASE temperature difference. This sweeps the neighbours
``k``, the rounds and the graph's neighbours on the backbone features and projections of
runner checkpoints and prints per-sample Spearman, class-level Spearman, gap recovered and
floor (``tase_loss.experiments.evaluation.frequency_quality``).

Run it on development encoders only (the estimator study's held-out CIFAR encoders are
seed 0 of the learning check)::

    python -m tase_loss.experiments --data ../shared/data/cifar10_lt_r100.npz \\
        --probe ../shared/data/cifar10_probe_100shot.npz --encoder small-cnn --image-size 16 \\
        --epochs 60 --warmup-epochs 10 --threads 2 --methods ntxent --seeds 10 \\
        --output runs/cifar_dev --no-progress                                  # about 4 minutes
    python studies/density_smoothing.py --data ../shared/data/cifar10_lt_r100.npz --image-size 16 \\
        --encoder small-cnn --checkpoints runs/cifar_dev/checkpoints/ntxent_seed10.pt   # the docs' table
    python studies/density_smoothing.py --checkpoints <a digits checkpoint> --rounds 0,3 --graph 20   # tiny
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys

import numpy as np
import torch

from tase_loss import KNNDensityEstimator, StableCountEstimator
from tase_loss.estimators import FrequencyEstimator
from tase_loss.experiments.data import group_classes, load_digits_lt, load_npz, resize_images
from tase_loss.experiments.evaluation import frequency_quality

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from frequency_estimators import _encoder_features


def _integers(text: str) -> list[int]:
    return [int(value) for value in text.split(",")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="digits", help="'digits' or a long-tailed .npz")
    parser.add_argument("--image-size", type=int, default=None, help="resize the .npz images (the run's size)")
    parser.add_argument("--encoder", default="digits-cnn")
    parser.add_argument("--checkpoints", nargs="+", required=True, help="runner checkpoints (development seeds)")
    parser.add_argument("--neighbors", default="10,30", help="k of the density")
    parser.add_argument("--rounds", default="0,3,10,30,100", help="smoothing rounds")
    parser.add_argument("--graph", default="20,50,100", help="neighbours listed for the smoothing graph")
    arguments = parser.parse_args()
    torch.set_num_threads(min(2, torch.get_num_threads()))
    data = load_digits_lt() if arguments.data == "digits" else load_npz(arguments.data)
    if arguments.image_size is not None:
        data = resize_images(data, arguments.image_size)
    labels = data.y_train
    groups = group_classes(np.bincount(labels))
    print(
        "| checkpoint | features | estimator | k | rounds | graph "
        "| per sample | class-level | gap recovered | floor |\n" + "|---" * 10 + "|"
    )

    def row(name: str, kind: str, estimator: FrequencyEstimator, points: np.ndarray, options: str) -> None:
        unit = torch.nn.functional.normalize(torch.as_tensor(points, dtype=torch.float32), dim=1)
        estimate = estimator.estimate(unit, seed=0)
        quality = frequency_quality(estimate.log_frequency.numpy(), labels, groups)
        print(
            f"| {name} | {kind} | {options} | {quality['spearman']:.3f} | {quality['class_spearman']:.3f} "
            f"| {quality['gap_recovered']:.3f} | {quality['floor']:.2f} |",
            flush=True,
        )

    graphs = _integers(arguments.graph)
    settings = [
        (k, rounds, graph)
        for k, rounds, graph in itertools.product(_integers(arguments.neighbors), _integers(arguments.rounds), graphs)
        if rounds or graph == graphs[0]  # no smoothing: the graph plays no part
    ]
    for checkpoint in arguments.checkpoints:
        name = checkpoint.rsplit("/", 1)[-1]
        for kind, points in zip(("backbone", "projection"), _encoder_features(data, arguments.encoder, checkpoint)):
            row(name, kind, StableCountEstimator(), points, "stable-count (default) | 10 | 10 | 20")
            for k, rounds, graph in settings:
                estimator = KNNDensityEstimator(k, smoothing_rounds=rounds, graph_neighbors=graph)
                row(name, kind, estimator, points, f"knn-density | {k} | {rounds} | {graph}")


if __name__ == "__main__":
    main()
