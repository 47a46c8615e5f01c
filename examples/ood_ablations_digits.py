"""Ablations of the two-stage OOD recipe on long-tailed digits (seeds 0-2 by default).

Same data, network, augmentations, optimizer and probe as ``ood_two_stage_digits.py``;
each variant changes a few :class:`tase_loss.ood.TwoStageConfig` fields of the recipe
(50 + 50 epochs, 20 clusters, ``instance_mass`` 0.5, 64 OOD samples per batch).

Run from the repository root:
``PYTHONPATH=. python examples/ood_ablations_digits.py [VARIANT ...]``
"""

from __future__ import annotations

import argparse
import statistics

import torch
from ood_two_stage_digits import Network, augment, batches, long_tailed_digits, probe

from tase_loss.ood import TwoStageConfig, TwoStageOOD, sample_image_patches

VARIANTS = {
    "default": {},
    "instance_mass_0": dict(instance_mass=0.0),
    "instance_mass_0_k10": dict(instance_mass=0.0, num_clusters=10),
    "instance_mass_0_k50": dict(instance_mass=0.0, num_clusters=50),
    "instance_mass_0_no_domain": dict(instance_mass=0.0, domain_weight=0.0),
    "k50": dict(num_clusters=50),
    "stage1_50_only": dict(stage1_epochs=50, stage2_epochs=0),
    "stage1_100_only": dict(stage1_epochs=100, stage2_epochs=0),
    "no_distillation": dict(distillation_weight=0.0),
    "distillation_5": dict(distillation_weight=5.0),
    "no_guide_neighbours": dict(num_neighbors=0),
}


def run(variant: dict, seed: int, ood: torch.Tensor) -> dict[str, float]:
    x, y, x_test, y_test = long_tailed_digits(seed)
    torch.manual_seed(seed)
    model = Network()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    settings = dict(stage1_epochs=50, stage2_epochs=50, warmup_epochs=10, num_clusters=20,
                    ood_batch_size=64, seed=seed)
    settings.update(variant)
    config = TwoStageConfig(**settings)
    method = TwoStageOOD(ood, len(x), 64, augment, config)
    generator = torch.Generator().manual_seed(seed)
    for epoch in range(config.stage1_epochs + config.stage2_epochs):
        for index in batches(len(x), 128, generator):
            method.training_step((index, augment(x[index]), augment(x[index])), model, optimizer)
        method.on_epoch_end(epoch)
    return probe(model, x, y, x_test, y_test, seed)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("variants", nargs="*", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = parser.parse_args()
    torch.set_num_threads(1)
    ood = sample_image_patches(2000, seed=0) / 16.0
    print("| variant | all | many | medium | few |")
    print("|---|---|---|---|---|")
    for name in args.variants:
        results = [run(VARIANTS[name], seed, ood) for seed in args.seeds]
        cells = [f"{statistics.mean(r[key] for r in results):.1f}"
                 for key in ("all", "many", "medium", "few")]
        print(f"| {name} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
