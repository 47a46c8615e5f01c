"""How often does stable-count trust its groups? Counts over the estimator study's mixtures.

``stable-count`` blends group shares and the kNN density by a trust in [0, 1] measured from
the agreement of two groupings (see ``StableCountEstimator``). This re-runs it on the
planted mixtures of ``studies/frequency_estimators.py`` (the same seeds, dimensions,
overlaps and shapes, which the study's rows do not record the trust of) and prints, per
overlap, how many mixtures got trust 1, trust 0 and a value between.

    python studies/stable_count_trust.py            # the figures in docs/results.md
    python studies/stable_count_trust.py --max-count 100 --dims 32 --seeds 0   # tiny
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np
import torch

from tase_loss import StableCountEstimator
from tase_loss.experiments.data import OVERLAPS

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from frequency_estimators import planted_mixtures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--dims", default="32,64,128")
    parser.add_argument("--max-count", type=int, default=2000, help="largest planted class (a size knob)")
    arguments = parser.parse_args()
    torch.set_num_threads(min(2, torch.get_num_threads()))
    seeds = [int(seed) for seed in arguments.seeds.split(",")]
    dims = [int(dim) for dim in arguments.dims.split(",")]
    print("| overlap | trust 1 | between | trust 0 | mixtures |\n|---|---|---|---|---|")
    for overlap in OVERLAPS:
        mixtures = planted_mixtures(overlap, seeds, dims, arguments.max_count)
        estimator = StableCountEstimator()
        estimates = [estimator.estimate(torch.from_numpy(points), seed=seed) for seed, (points, _) in mixtures]
        trust = np.array([estimate.diagnostics["trust"] for estimate in estimates])
        between = int(((trust > 0) & (trust < 1)).sum())
        print(f"| {overlap} | {int((trust == 1).sum())} | {between} | {int((trust == 0).sum())} | {trust.size} |")


if __name__ == "__main__":
    main()
