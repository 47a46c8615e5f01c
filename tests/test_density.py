"""rwSAM's inverse kNN-density weights against a brute-force float64 oracle, and FrequencyWeights."""

import math

import pytest
import torch

from tase_loss import (
    ClusterSizeEstimator,
    FrequencyWeights,
    KNNDensityEstimator,
    PseudoLabeler,
    SampleReweighter,
    knn_log_density,
)

F64 = torch.float64


def _brute_force_log_density(features, k, kernel, bandwidth):
    """All pairwise cosine similarities in float64, self excluded, one row at a time."""
    unit = features.double() / features.double().norm(dim=1, keepdim=True)
    values = []
    for i in range(unit.shape[0]):
        others = [float(unit[i] @ unit[j]) for j in range(unit.shape[0]) if j != i]
        nearest = sorted(others, reverse=True)[:k]
        if kernel == "exponential":
            values.append(math.log(sum(math.exp(s / bandwidth) for s in nearest) / k))
        else:
            values.append(-math.log(max(math.sqrt(max(2 - 2 * nearest[-1], 0.0)), 1e-6)))
    return torch.tensor(values, dtype=F64)


def _long_tailed_mixture(sizes=(120, 30, 6), dim=6, spread=0.35, seed=0):
    """Clusters around random unit directions; cluster c has sizes[c] points."""
    generator = torch.Generator().manual_seed(seed)
    centers = torch.nn.functional.normalize(torch.randn(len(sizes), dim, generator=generator), dim=1)
    points, labels = [], []
    for label, (center, size) in enumerate(zip(centers, sizes)):
        points.append(center + spread * torch.randn(size, dim, generator=generator))
        labels.append(torch.full((size,), label))
    return torch.cat(points), torch.cat(labels)


@pytest.mark.parametrize(
    "kernel,bandwidth,k", [("exponential", 0.1, 5), ("exponential", 0.5, 1), ("kth_neighbor", 0.1, 7)]
)
def test_log_density_matches_brute_force(kernel, bandwidth, k):
    features, _ = _long_tailed_mixture(sizes=(40, 12, 4), seed=1)
    ours = knn_log_density(features, k=k, kernel=kernel, bandwidth=bandwidth, dimension=1.0, num_threads=1)
    torch.testing.assert_close(ours, _brute_force_log_density(features, k, kernel, bandwidth), rtol=1e-12, atol=1e-12)


def test_duplicates_exclude_only_the_point_itself():
    features = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])
    ours = knn_log_density(features, k=1, kernel="exponential", bandwidth=1.0)
    # Points 0 and 1 are each other's neighbour at similarity 1 (not themselves).
    torch.testing.assert_close(ours[:2], torch.ones(2, dtype=F64))
    torch.testing.assert_close(ours[2:], torch.tensor([0.8, 0.8], dtype=F64))
    # With k = 1 the copies' radius is 0: they get the smallest other one (points 2 and 3
    # are each other's nearest, at distance sqrt(2 - 2 * 0.8)).
    radius = knn_log_density(features, k=1, kernel="kth_neighbor", dimension=1.0)
    torch.testing.assert_close(radius, torch.full((4,), -math.log(math.sqrt(0.4)), dtype=F64))


def _density_weights(num_samples, dim, alpha=1.0, max_weight=10.0, **options):
    """rwSAM's weights as the runner builds them: vMF-kernel kNN density, no smoothing, no EMA."""
    options = {"kernel": "exponential", "bandwidth": 0.1, "smoothing_rounds": 0, **options}
    labeler = PseudoLabeler(num_samples, dim, KNNDensityEstimator(**options), warmup_epochs=1, momentum=0.0,
                            bank_dtype=torch.float32)
    return labeler, FrequencyWeights(labeler, SampleReweighter(alpha, max_weight))


@pytest.mark.parametrize("kernel", ["exponential", "kth_neighbor"])
def test_rarer_points_get_larger_weights_on_a_planted_long_tail(kernel):
    features, labels = _long_tailed_mixture(seed=2)
    labeler, weights = _density_weights(len(labels), features.shape[1], num_neighbors=5, kernel=kernel)
    labeler.update(torch.arange(len(labels)), features)
    labeler.estimate()
    batch = weights(torch.arange(len(labels)))
    mean_weight = [float(batch[labels == c].mean()) for c in range(3)]
    assert mean_weight[0] < mean_weight[1] < mean_weight[2], mean_weight
    assert float(batch.mean()) == pytest.approx(1.0, abs=1e-6)


def test_density_weights_follow_the_formula_against_the_dataset_reference():
    features, labels = _long_tailed_mixture(seed=3)
    labeler, weights = _density_weights(len(labels) + 10, features.shape[1], alpha=0.7, max_weight=3.0,
                                        num_neighbors=4)
    index = torch.arange(len(labels))
    labeler.update(index, features)
    assert weights(index[:5]).tolist() == [1.0] * 5  # plain SAM before the first estimate
    labeler.estimate()
    log_density = _brute_force_log_density(features, 4, "exponential", 0.1)
    batch_index = torch.tensor([0, 130, 150, 155, len(labels) + 3])  # the last was never seen
    batch_log_density = torch.cat([log_density[batch_index[:4]], log_density.mean().reshape(1)])
    raw = torch.exp(-0.7 * (batch_log_density - log_density.mean())).clamp(1 / 3.0, 3.0)
    torch.testing.assert_close(weights(batch_index), (raw / raw.mean()).float())


def test_density_state_round_trip():
    features, labels = _long_tailed_mixture(seed=4)
    labeler, weights = _density_weights(len(labels), features.shape[1], num_neighbors=3)
    labeler.update(torch.arange(len(labels)), features)
    labeler.estimate()
    restored_labeler, restored = _density_weights(len(labels), features.shape[1], num_neighbors=3)
    restored_labeler.load_state_dict(labeler.state_dict())
    index = torch.tensor([3, 140, 155])
    torch.testing.assert_close(restored(index), weights(index))
    with pytest.raises(ValueError, match="shape"):
        _density_weights(5, features.shape[1])[0].load_state_dict(labeler.state_dict())


def test_frequency_weights_reuse_the_sample_reweighter():
    features, labels = _long_tailed_mixture(seed=5)
    labeler = PseudoLabeler(len(labels), features.shape[1], ClusterSizeEstimator(3), warmup_epochs=1, num_threads=1)
    reweighter = SampleReweighter(alpha=0.5, max_weight=10.0)
    weights = FrequencyWeights(labeler, reweighter)
    index = torch.tensor([0, 1, 125, 155])
    assert weights(index).tolist() == [1.0] * 4  # before the first estimate
    labeler.update(torch.arange(len(labels)), features)
    labeler.end_epoch(epoch=0)
    expected = reweighter(labeler.frequency(index), labeler.frequency_reference())
    torch.testing.assert_close(weights(index), expected / expected.mean())
    assert float(weights(index).mean()) == pytest.approx(1.0)


def test_invalid_arguments_name_themselves():
    features = torch.randn(10, 3)
    with pytest.raises(ValueError, match="k=10 neighbours need more than 10 points"):
        knn_log_density(features, k=10)
    with pytest.raises(ValueError, match="NaN"):
        knn_log_density(torch.full((10, 3), float("nan")))
    with pytest.raises(ValueError, match="bandwidth"):
        KNNDensityEstimator(bandwidth=0.0)
    with pytest.raises(ValueError, match="alpha"):
        SampleReweighter(alpha=-1.0)
    with pytest.raises(TypeError, match="pseudo_labeler"):
        FrequencyWeights(SampleReweighter())
