"""The per-batch / per-epoch recipes of docs/plugins.md, run end to end on a toy set.

These are the steps a runner registers as methods "rwsam" and "ts"; keep them in sync
with the documentation.
"""

import torch
from torch import nn

from tase_loss import (
    CosineTemperatureSchedule,
    FrequencyWeights,
    KNNDensityEstimator,
    PseudoLabeler,
    RwSAM,
    SampleReweighter,
    TASEContrastiveLoss,
    rwsam_step,
)

NUM_SAMPLES, BATCH, FEATURES = 96, 16, 12


def _toy_setup(seed=0):
    torch.manual_seed(seed)
    backbone = nn.Sequential(nn.Linear(10, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Linear(32, FEATURES))
    head = nn.Sequential(nn.Linear(FEATURES, 16), nn.ReLU(), nn.Linear(16, 8))
    # A long-tailed toy set: 80 samples near one direction, 16 spread out.
    data = torch.cat([torch.randn(80, 10) * 0.3 + 1.0, torch.randn(16, 10)])
    return backbone, head, data


def _batches(data, epoch):
    order = torch.randperm(NUM_SAMPLES, generator=torch.Generator().manual_seed(epoch))
    for start in range(0, NUM_SAMPLES, BATCH):
        index = order[start : start + BATCH]
        x = data[index]
        yield x + 0.1 * torch.randn_like(x), x + 0.1 * torch.randn_like(x), index


def test_rwsam_recipe_runs_and_upweights_the_sparse_samples():
    backbone, head, data = _toy_setup()
    model = nn.Sequential(backbone, head)
    # --- set-up (recipe) ---
    criterion = TASEContrastiveLoss(temperature=0.2)
    optimizer = RwSAM(model.parameters(), torch.optim.SGD, rho=0.5, adaptive=True,
                      lr=0.05, momentum=0.9, weight_decay=5e-4)
    density = PseudoLabeler(NUM_SAMPLES, FEATURES, KNNDensityEstimator(5, kernel="exponential", bandwidth=0.1,
                                                                     smoothing_rounds=0),
                            warmup_epochs=1, momentum=0.0)
    weights = FrequencyWeights(density, SampleReweighter(alpha=1.0))
    losses = []
    for epoch in range(3):
        for view0, view1, index in _batches(data, epoch):
            # --- per batch (recipe) ---
            weight = weights(index).to(view0.device)  # all ones before the first estimate
            stored = {}

            def compute_loss(batch_weight):
                features0, features1 = backbone(view0), backbone(view1)
                if batch_weight is not None:  # pass 1: unperturbed weights
                    stored["features"] = features0.detach()
                return criterion(head(features0), head(features1), weight=batch_weight)

            loss = rwsam_step(optimizer, compute_loss, weight, freeze=[model, criterion])
            density.update(index, stored["features"])
            losses.append(float(loss))
        # --- per epoch (recipe) ---
        density.end_epoch(epoch)  # re-estimates every epoch once the warm-up is over
    assert all(torch.isfinite(torch.tensor(losses)))
    final = weights(torch.arange(NUM_SAMPLES))
    assert float(final[80:].mean()) > float(final[:80].mean())
    # BatchNorm saw one update per batch: pass 1's two forwards, pass 2 frozen.
    assert int(backbone[1].num_batches_tracked) == 3 * (NUM_SAMPLES // BATCH) * 2


def test_ts_recipe_follows_the_schedule_each_epoch():
    backbone, head, data = _toy_setup(seed=1)
    model = nn.Sequential(backbone, head)
    # --- set-up (recipe) ---
    schedule = CosineTemperatureSchedule(min_temperature=0.1, max_temperature=1.0, period=4)
    criterion = TASEContrastiveLoss(temperature=schedule(0))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    temperatures = []
    for epoch in range(3):
        # --- per epoch (recipe) ---
        schedule.apply(criterion, epoch)
        temperatures.append(criterion.temperature)
        for view0, view1, _ in _batches(data, epoch):
            # --- per batch (recipe): plain NT-Xent at the scheduled temperature ---
            loss = criterion(model(view0), model(view1))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        assert torch.isfinite(loss)
    torch.testing.assert_close(torch.tensor(temperatures), torch.tensor([1.0, 0.55, 0.1]), rtol=0, atol=1e-12)
