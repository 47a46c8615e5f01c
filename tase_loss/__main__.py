"""``python -m tase_loss``: a small built-in demonstration of TASE's moving parts.

Plants a long-tailed mixture of 6 clusters, lets the PseudoLabeler find them, and prints
per planted cluster the estimated frequency, the temperature and the weight TASE gives
its samples, then NT-Xent and TASE losses of one batch. Runs in seconds, no download.
"""

from __future__ import annotations

import torch

from tase_loss import PseudoLabeler, TASEContrastiveLoss


def main() -> None:
    generator = torch.Generator().manual_seed(0)
    sizes = [1000, 400, 160, 64, 26, 10]
    centers = torch.nn.functional.normalize(torch.randn(len(sizes), 32, generator=generator), dim=1)
    labels = torch.cat([torch.full((size,), c) for c, size in enumerate(sizes)])
    features = centers[labels] + 0.1 * torch.randn(len(labels), 32, generator=generator)

    labeler = PseudoLabeler(len(labels), 32, num_clusters=len(sizes), warmup_epochs=0, seed=0)
    labeler.update(torch.arange(len(labels)), features)
    labeler.recluster()
    criterion = TASEContrastiveLoss(temperature=0.2, pseudo_labeler=labeler)
    guidance = criterion.guidance
    reference = labeler.frequency_reference()

    print("planted cluster | true share | estimated f | temperature | weight")
    for cluster, size in enumerate(sizes):
        index = (labels == cluster).nonzero().squeeze(1)
        frequency = labeler.frequency(index)
        temperature = guidance.temperature_map(frequency, reference)
        weight = guidance.reweighter(frequency, reference)
        print(
            f"{cluster:15d} | {size / len(labels):10.3f} | {float(frequency.median()):11.3f} |"
            f" {float(temperature.median()):11.3f} | {float(weight.median()):6.2f}"
        )

    index = torch.randperm(len(labels), generator=generator)[:256]
    view0 = features[index] + 0.05 * torch.randn(256, 32, generator=generator)
    view1 = features[index] + 0.05 * torch.randn(256, 32, generator=generator)
    print(f"NT-Xent loss of a batch: {float(criterion(view0, view1)):.4f}")
    print(f"TASE loss of the batch:  {float(criterion(view0, view1, index=index)):.4f}")


if __name__ == "__main__":
    main()
