"""Which weight for stable-count's within-group density term? A sweep on development mixtures.

``StableCountEstimator(within=w)`` orders the samples of a group by their kNN density with
weight ``w`` (``log f_i = max(log s_i + w (d_i - mean_g d), min_j log s_j)``, ``s_i`` the
sample's share, where it trusts its groups). A larger ``w`` pulls the samples a group holds
but does not fit (a rare class the fine k-means gave no cluster of its own) further down, which helps the class-level
ranking, and spreads every group's samples over more nats, which hurts the per-sample
ranking. This measures the trade on the **development** mixtures (planted seeds 100-103,
low overlap, every D and shape of ``studies/frequency_estimators.py``): for each ``w``, in
how many mixtures each of the four separable targets of issue 22 holds (that study's
``TARGETS``), and how many targets hold in every mixture (its rule). The held-out seeds
0-2 are not used.

    python studies/stable_count_within.py            # the figures in docs/results.md
    python studies/stable_count_within.py --values 0.5 --max-count 100 --dims 32 --seeds 100   # tiny
"""

from __future__ import annotations

import argparse
import os
import sys

import torch

from tase_loss import StableCountEstimator

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from frequency_estimators import (
    DEVELOPMENT_SEEDS,
    PLANTED_DIMS,
    TARGET_COLUMNS,
    planted_mixtures,
    sweep_quality,
    target_cells,
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--values", default="0.25,0.5,0.6,0.75,0.9,1.0", help="within weights to measure")
    parser.add_argument("--seeds", default=DEVELOPMENT_SEEDS, help="planted seeds (development: 100-103)")
    parser.add_argument("--dims", default=",".join(map(str, PLANTED_DIMS)))
    parser.add_argument("--max-count", type=int, default=2000, help="largest planted class (a size knob)")
    arguments = parser.parse_args()
    torch.set_num_threads(min(2, torch.get_num_threads()))
    seeds = [int(seed) for seed in arguments.seeds.split(",")]
    mixtures = planted_mixtures("low", seeds, [int(dim) for dim in arguments.dims.split(",")], arguments.max_count)
    print(
        f"{len(mixtures)} separable mixtures (seeds {arguments.seeds})\n\n"
        f"| within | {TARGET_COLUMNS} |\n" + "|---" * (TARGET_COLUMNS.count("|") + 2) + "|"
    )
    for within in map(float, arguments.values.split(",")):
        estimator = StableCountEstimator(within=within)
        _, cells = target_cells([sweep_quality(estimator, points, labels, seed) for seed, (points, labels) in mixtures])
        print(f"| {within:g} | {cells} |", flush=True)


if __name__ == "__main__":
    main()
