"""PseudoLabeler: recovers planted long-tailed clusters, is deterministic and resumes exactly."""

import faiss
import numpy as np
import pytest
import torch
from sklearn.metrics import homogeneity_score

from tase_loss import PseudoLabeler

SIZES = [800, 300, 110, 40, 15]


def _long_tailed_mixture(seed=0, dim=16):
    generator = torch.Generator().manual_seed(seed)
    centers = torch.nn.functional.normalize(torch.randn(len(SIZES), dim, generator=generator), dim=1)
    labels = torch.cat([torch.full((size,), c) for c, size in enumerate(SIZES)])
    features = centers[labels] + 0.15 * torch.randn(len(labels), dim, generator=generator)
    order = torch.randperm(len(labels), generator=generator)
    return features[order], labels[order]


def _fitted(features, **options):
    labeler = PseudoLabeler(len(features), features.shape[1], warmup_epochs=0, **options)
    for batch in torch.arange(len(features)).split(128):
        labeler.update(batch, features[batch])
    labeler.recluster()
    return labeler


@pytest.mark.parametrize("seed", [0, 1])
def test_recovers_planted_clusters_and_ranks_tail_below_head(seed):
    features, labels = _long_tailed_mixture()
    labeler = _fitted(features, num_clusters=5, seed=seed)
    # k-means on long-tailed data splits the head and merges the rarest tail into a
    # neighbour (NMI about 0.8 here), but every cluster it finds is one planted cluster.
    assert homogeneity_score(labels.numpy(), labeler.labels.numpy()) > 0.9
    frequency = labeler.frequency(torch.arange(len(labels)))
    true_frequency = torch.tensor(SIZES, dtype=torch.float32)[labels] / len(labels)
    head, tail = labels == 0, labels == len(SIZES) - 1
    assert float(frequency[tail].median()) < float(frequency[head].median())
    correlation = np.corrcoef(np.log(frequency.numpy()), np.log(true_frequency.numpy()))[0, 1]
    assert correlation > 0.9


def test_deterministic_under_a_seed():
    features, _ = _long_tailed_mixture(seed=1)
    first = _fitted(features, num_clusters=(4, 6), seed=3)
    second = _fitted(features, num_clusters=(4, 6), seed=3)
    assert torch.equal(first.labels, second.labels)
    assert torch.equal(first.log_frequency, second.log_frequency)


def test_ensemble_is_the_geometric_mean_of_its_members():
    features, _ = _long_tailed_mixture(seed=2)
    ensemble = _fitted(features, num_clusters=(4, 7), seed=5)
    member_a = _fitted(features, num_clusters=4, seed=5)
    member_b = _fitted(features, num_clusters=7, seed=6)
    expected = 0.5 * (member_a.log_frequency + member_b.log_frequency)
    torch.testing.assert_close(ensemble.log_frequency, expected, rtol=0, atol=1e-12)
    assert torch.equal(ensemble.labels, member_a.labels)


def test_frequency_is_cluster_share_and_smoothed_across_fits():
    features, _ = _long_tailed_mixture(seed=3)
    labeler = _fitted(features, num_clusters=5, momentum=0.75)
    counts = torch.bincount(labeler.labels, minlength=5).double()
    first = labeler.log_frequency.clone()
    torch.testing.assert_close(first, (counts[labeler.labels] / len(features)).log())
    labeler.recluster()  # same bank, same seed: same clustering, so the EMA is a fixed point
    torch.testing.assert_close(labeler.log_frequency, first)
    moved = features.roll(1, dims=1)
    labeler.update(torch.arange(len(features)), moved)
    labeler.recluster()
    counts = torch.bincount(labeler.labels, minlength=5).double()
    latest = (counts[labeler.labels] / len(features)).log()
    torch.testing.assert_close(labeler.log_frequency, 0.75 * first + 0.25 * latest)


def test_unseen_samples_get_the_neutral_geometric_mean():
    features, _ = _long_tailed_mixture(seed=4)
    labeler = PseudoLabeler(len(features) + 10, features.shape[1], num_clusters=5, warmup_epochs=0)
    labeler.update(torch.arange(len(features)), features)
    labeler.recluster()
    neutral = labeler.frequency(torch.tensor([len(features) + 3]))
    expected = labeler.log_frequency[: len(features)].mean().exp()
    assert float(neutral) == pytest.approx(float(expected), rel=1e-6)
    assert int(labeler.labels[len(features) + 3]) == -1


def test_schedule_warmup_and_period():
    labeler = PseudoLabeler(10, 2, num_clusters=2, warmup_epochs=3, recluster_every=2)
    assert [labeler.should_recluster(epoch) for epoch in range(8)] == [
        False, False, False, True, False, True, False, True
    ]


def test_state_dict_round_trip_resumes_bit_identically():
    features, _ = _long_tailed_mixture(seed=5)
    later = features.roll(2, dims=1)
    index = torch.arange(len(features))

    straight = _fitted(features, num_clusters=(5, 3), seed=7, bank_dtype=torch.float16)
    straight.update(index[::2], later[::2])
    straight.recluster()

    interrupted = _fitted(features, num_clusters=(5, 3), seed=7, bank_dtype=torch.float16)
    state = interrupted.state_dict()
    resumed = PseudoLabeler(len(features), features.shape[1], num_clusters=(5, 3), seed=7,
                            warmup_epochs=0, bank_dtype=torch.float16)
    resumed.load_state_dict(state)
    resumed.update(index[::2], later[::2])
    resumed.recluster()

    assert torch.equal(straight.labels, resumed.labels)
    assert torch.equal(straight.log_frequency, resumed.log_frequency)
    assert torch.equal(straight.bank, resumed.bank)
    assert straight.bank.dtype == torch.float16


def test_num_threads_is_applied_and_restored():
    before = faiss.omp_get_max_threads()
    features, _ = _long_tailed_mixture(seed=6)
    _fitted(features, num_clusters=5, num_threads=1)
    assert faiss.omp_get_max_threads() == before
