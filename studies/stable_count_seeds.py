"""How much do stable-count's target counts depend on its own seed? Counts over estimator seeds.

``studies/frequency_estimators.py`` runs each estimator once per planted mixture, with the
mixture's seed, and its rule counts the separable targets "in every mixture". This
re-runs ``stable-count`` on the same mixtures with the estimator's seed shifted by each
``--offsets`` value (the mixtures stay the same; offset 0 is the study's run) and prints,
per offset, how many mixtures meet each of issue 22's four separable targets, and the
moderate-overlap means the sweeps' rule guards, for each of ``--variants``: the default
and ``StableCountEstimator(third_grouping=True)`` (a third grouping where the first two
half agree).

    python studies/stable_count_seeds.py                 # the figures in docs/results.md (held-out seeds 0-2)
    python studies/stable_count_seeds.py --seeds 100,101,102,103   # the development mixtures
    python studies/stable_count_seeds.py --max-count 100 --dims 32 --seeds 0 --offsets 0,1000   # tiny
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np
import torch

from tase_loss import StableCountEstimator

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from frequency_estimators import PLANTED_DIMS, TARGET_COLUMNS, sweep_mixtures, sweep_quality, target_cells

VARIANTS = {"default": {}, "third-grouping": {"third_grouping": True}}
"""``--variants`` names and the ``StableCountEstimator`` options they set."""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0,1,2", help="planted seeds (the study's held-out: 0-2)")
    parser.add_argument("--dims", default=",".join(map(str, PLANTED_DIMS)))
    parser.add_argument("--max-count", type=int, default=2000, help="largest planted class (a size knob)")
    parser.add_argument("--offsets", default="0,1000,2000,3000,4000", help="estimator seed = mixture seed + offset")
    parser.add_argument("--variants", default="default,third-grouping", help=f"of {', '.join(VARIANTS)}")
    arguments = parser.parse_args()
    variants = arguments.variants.split(",")
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown:
        parser.error(f"--variants: {', '.join(unknown)} not among {', '.join(VARIANTS)}")
    torch.set_num_threads(min(2, torch.get_num_threads()))
    offsets = [int(offset) for offset in arguments.offsets.split(",")]
    mixtures = sweep_mixtures(arguments.seeds, arguments.dims, arguments.max_count)
    print(
        f"{len(mixtures['low'])} separable and {len(mixtures['moderate'])} moderate-overlap mixtures "
        f"(seeds {arguments.seeds})\n\n| variant | estimator seed | {TARGET_COLUMNS} "
        "| moderate: per sample, gap (means) |\n" + "|---" * (TARGET_COLUMNS.count("|") + 4) + "|"
    )
    for variant in variants:
        estimator = StableCountEstimator(**VARIANTS[variant])
        for shift in offsets:
            rows, moderate = (
                [sweep_quality(estimator, points, labels, seed + shift) for seed, (points, labels) in mixtures[overlap]]
                for overlap in ("low", "moderate")
            )
            _, cells = target_cells(rows)
            means = ", ".join(f"{np.mean([row[key] for row in moderate]):.4f}" for key in ("spearman", "gap_recovered"))
            print(f"| {variant} | mixture's + {shift} | {cells} | {means} |", flush=True)


if __name__ == "__main__":
    main()
