"""PseudoLabeler: schedule, moving average, neutral value, determinism, exact resume, ensembles."""

import csv
import warnings

import numpy as np
import pytest
import torch
from sklearn.metrics import homogeneity_score

from tase_loss import (
    ClusterSizeEstimator,
    KNNDensityEstimator,
    MomentumLossEstimator,
    NotFittedError,
    PseudoLabeler,
    SampleReweighter,
    StableCountEstimator,
    TASEContrastiveLoss,
)
from tase_loss._faiss import import_faiss

SIZES = [800, 300, 110, 40, 15]


def _long_tailed_mixture(seed=0, dim=16):
    generator = torch.Generator().manual_seed(seed)
    centers = torch.nn.functional.normalize(torch.randn(len(SIZES), dim, generator=generator), dim=1)
    labels = torch.cat([torch.full((size,), c) for c, size in enumerate(SIZES)])
    features = centers[labels] + 0.15 * torch.randn(len(labels), dim, generator=generator)
    order = torch.randperm(len(labels), generator=generator)
    return features[order], labels[order]


def _fitted(features, estimator=None, **options):
    labeler = PseudoLabeler(len(features), features.shape[1], estimator, warmup_epochs=1, **options)
    for batch in torch.arange(len(features)).split(128):
        labeler.update(batch, features[batch])
    labeler.estimate()
    return labeler


@pytest.mark.parametrize("seed", [0, 1])
def test_cluster_sizes_recover_planted_clusters_and_rank_tail_below_head(seed):
    features, labels = _long_tailed_mixture()
    labeler = _fitted(features, ClusterSizeEstimator(num_clusters=5), seed=seed)
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
    for estimator in (ClusterSizeEstimator((4, 6)), KNNDensityEstimator()):
        first = _fitted(features, estimator, seed=3)
        second = _fitted(features, estimator, seed=3)
        assert torch.equal(first.labels, second.labels)
        assert torch.equal(first.log_frequency, second.log_frequency)


def test_ensemble_is_the_geometric_mean_of_its_members():
    features, _ = _long_tailed_mixture(seed=2)
    ensemble = _fitted(features, ClusterSizeEstimator((4, 7)), seed=5)
    member_a = _fitted(features, ClusterSizeEstimator(4), seed=5)
    member_b = _fitted(features, ClusterSizeEstimator(7), seed=6)
    expected = 0.5 * (member_a.log_frequency + member_b.log_frequency)
    torch.testing.assert_close(ensemble.log_frequency, expected, rtol=0, atol=1e-12)
    assert torch.equal(ensemble.labels, member_a.labels)


def test_frequency_is_cluster_share_and_smoothed_across_estimates():
    features, _ = _long_tailed_mixture(seed=3)
    labeler = _fitted(features, ClusterSizeEstimator(5), momentum=0.75)
    counts = torch.bincount(labeler.labels, minlength=5).double()
    first = labeler.log_frequency.clone()
    torch.testing.assert_close(first, (counts[labeler.labels] / len(features)).log())
    labeler.estimate()  # same bank, same seed: same clustering, so the EMA is a fixed point
    torch.testing.assert_close(labeler.log_frequency, first)
    moved = features.roll(1, dims=1)
    labeler.update(torch.arange(len(features)), moved)
    labeler.estimate()
    counts = torch.bincount(labeler.labels, minlength=5).double()
    latest = (counts[labeler.labels] / len(features)).log()
    torch.testing.assert_close(labeler.log_frequency, 0.75 * first + 0.25 * latest)


def test_unseen_samples_get_the_neutral_geometric_mean():
    features, _ = _long_tailed_mixture(seed=4)
    labeler = PseudoLabeler(len(features) + 10, features.shape[1], ClusterSizeEstimator(5), warmup_epochs=1)
    labeler.update(torch.arange(len(features)), features)
    labeler.estimate()
    neutral = labeler.frequency(torch.tensor([len(features) + 3]))
    expected = labeler.log_frequency[: len(features)].mean().exp()
    assert float(neutral) == pytest.approx(float(expected), rel=1e-6)
    assert int(labeler.labels[len(features) + 3]) == -1


def test_warmup_counts_nt_xent_epochs_and_the_period():
    # warmup_epochs=3: epochs 0, 1, 2 train NT-Xent; the first estimate ends epoch 2.
    labeler = PseudoLabeler(10, 2, warmup_epochs=3, estimate_every=2)
    assert [labeler.should_estimate(epoch) for epoch in range(8)] == [
        False, False, True, False, True, False, True, False
    ]
    with pytest.raises(ValueError, match="warmup_epochs must be an integer >= 1"):
        PseudoLabeler(10, 2, warmup_epochs=0)


def test_a_run_that_ends_inside_the_warmup_warns():
    labeler = PseudoLabeler(10, 2, warmup_epochs=5)
    with pytest.warns(UserWarning, match="inside the pseudo-labeler's warm-up of 5"):
        labeler.warn_if_unfitted(epochs=3)


def test_a_run_as_long_as_the_warmup_warns_though_it_estimated_once():
    labeler = PseudoLabeler(40, 4, warmup_epochs=2)
    labeler.update(torch.arange(40), torch.randn(40, 4))
    assert not labeler.end_epoch(0) and labeler.end_epoch(1)  # the estimate ends the run
    with pytest.warns(UserWarning, match="no batch used a frequency estimate.*below 2"):
        labeler.warn_if_unfitted(epochs=2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        labeler.warn_if_unfitted(epochs=3)  # epoch 3 was guided
    never = PseudoLabeler(40, 4, warmup_epochs=2)
    with pytest.warns(UserWarning, match=r"after 5 epoch\(s\) without a frequency estimate.*call end_epoch"):
        never.warn_if_unfitted(epochs=5)


def test_a_loop_that_never_calls_end_epoch_is_told_once():
    labeler = PseudoLabeler(32, 4, warmup_epochs=2)
    criterion = TASEContrastiveLoss(pseudo_labeler=labeler)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(8):  # 4 epochs of 2 batches: past warm-up + 1 after 3 epochs
            for half in (torch.arange(16), torch.arange(16, 32)):
                criterion(torch.randn(16, 4), torch.randn(16, 4), index=half)
    messages = [str(warning.message) for warning in caught if "end_epoch() was never called" in str(warning.message)]
    assert len(messages) == 1 and messages[0].startswith("PseudoLabeler: 3.5 epochs of rows")
    called = PseudoLabeler(32, 4, warmup_epochs=2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for epoch in range(5):
            called.update(torch.arange(32), torch.randn(32, 4))
            called.end_epoch(epoch)


def test_a_labeler_given_its_estimate_by_load_state_dict_is_not_told_to_call_end_epoch():
    """The runner's tase-oracle loads fixed frequencies and never calls end_epoch(): not plain NT-Xent."""
    labeler = PseudoLabeler(32, 4, warmup_epochs=1)
    state = labeler.state_dict()
    state.update(log_frequency=torch.full((32,), -3.0, dtype=torch.float64), num_estimates=1)
    labeler.load_state_dict({**state, "has_estimate": torch.ones(32, dtype=torch.bool)})
    assert labeler.is_fitted
    criterion = TASEContrastiveLoss(pseudo_labeler=labeler)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for _ in range(5):
            criterion(torch.randn(32, 4), torch.randn(32, 4), index=torch.arange(32))


def test_the_loss_end_epoch_returns_and_logs_the_estimate_summary(tmp_path):
    labeler = PseudoLabeler(48, 4, warmup_epochs=2)
    criterion = TASEContrastiveLoss(pseudo_labeler=labeler, reweighter=SampleReweighter())
    path = tmp_path / "tase.csv"
    written = []
    with path.open("w", newline="") as handle:
        writer = None

        def log(scalars, epoch):
            nonlocal writer
            if writer is None:
                writer = csv.DictWriter(handle, ["epoch", *scalars])
                writer.writeheader()
            writer.writerow({"epoch": epoch, **scalars})
            written.append(epoch)

        for epoch in range(4):
            criterion(torch.randn(48, 4), torch.randn(48, 4), index=torch.arange(48))
            scalars = criterion.end_epoch(epoch, log=log)
            assert (scalars == {}) == (epoch == 0)
    assert written == [1, 2, 3]
    rows = list(csv.DictReader(path.open()))
    temperature, weight = criterion.guidance.tables(torch.device("cpu"))
    assert float(rows[-1]["temperature_min"]) == pytest.approx(float(temperature.min()))
    assert float(rows[-1]["weight_max"]) == pytest.approx(float(weight.max()))
    assert float(rows[-1]["num_groups"]) == float((labeler.group_sizes > 0).sum())
    assert float(rows[-1]["log_frequency_span"]) == pytest.approx(labeler.summary()["log_frequency_span"])


@pytest.mark.parametrize("estimator", [ClusterSizeEstimator((5, 3)), KNNDensityEstimator(), StableCountEstimator(5)])
def test_state_dict_round_trip_resumes_bit_identically(estimator):
    features, _ = _long_tailed_mixture(seed=5)
    later = features.roll(2, dims=1)
    index = torch.arange(len(features))

    straight = _fitted(features, estimator, seed=7)
    straight.update(index[::2], later[::2])
    straight.estimate()

    interrupted = _fitted(features, estimator, seed=7)
    state = torch.load(_saved(interrupted.state_dict()), weights_only=True)
    resumed = PseudoLabeler(len(features), features.shape[1], estimator, seed=7, warmup_epochs=1)
    resumed.load_state_dict(state)
    # what a run reports after resuming (the runner records them every epoch)
    assert resumed.summary(diagnostics=True) == interrupted.summary(diagnostics=True)
    assert resumed.last_diagnostics == interrupted.last_diagnostics != {}
    resumed.update(index[::2], later[::2])
    resumed.estimate()

    assert torch.equal(straight.labels, resumed.labels)
    assert torch.equal(straight.log_frequency, resumed.log_frequency)
    assert torch.equal(straight.bank.features, resumed.bank.features)
    assert straight.bank.features.dtype == torch.float16
    assert resumed.version > 0 and resumed.num_estimates == straight.num_estimates


def _saved(state):
    import io

    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return buffer


def test_num_threads_is_applied_and_restored():
    faiss = import_faiss("this test")
    before = faiss.omp_get_max_threads()
    features, _ = _long_tailed_mixture(seed=6)
    _fitted(features, ClusterSizeEstimator(5), num_threads=1)
    assert faiss.omp_get_max_threads() == before


def test_estimating_an_empty_bank_or_too_few_samples_is_a_clear_error():
    labeler = PseudoLabeler(100, 4, ClusterSizeEstimator(10))
    with pytest.raises(NotFittedError, match="the bank is empty"):
        labeler.estimate()
    labeler.update(torch.arange(5), torch.randn(5, 4))
    with pytest.raises(ValueError, match="needs at least 10 samples, the bank holds 5"):
        labeler.estimate()
    assert not labeler.is_fitted
    with pytest.raises(NotFittedError):
        labeler.frequency_reference()


def test_momentum_loss_estimator_reads_the_losses_it_was_given():
    labeler = PseudoLabeler(4, 2, MomentumLossEstimator(), warmup_epochs=1, momentum=0.0)
    with pytest.raises(ValueError, match="needs loss="):
        labeler.update(torch.arange(4), torch.randn(4, 2))
    assert labeler.bank.num_seen == 0  # the failed call stored nothing
    labeler.update(torch.arange(4), torch.randn(4, 2), loss=torch.tensor([1.0, 2.0, 3.0, 4.0]))
    labeler.estimate()
    # the highest loss is the rarest sample: log f decreasing in the loss, top at 0
    log_frequency = labeler.log_frequency
    assert torch.all(log_frequency[:-1] > log_frequency[1:]) and float(log_frequency[0]) == 0.0
