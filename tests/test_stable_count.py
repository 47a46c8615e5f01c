"""The stable-count estimator: its formula against a loop, its two regimes, its targets, bad input."""

import math
import pickle

import numpy as np
import pytest
import torch
from sklearn.metrics import adjusted_rand_score

from tase_loss import KNNDensityEstimator, MergedClusterEstimator, StableCountEstimator
from tase_loss.estimators import adjusted_rand_index
from tase_loss.estimators.stable_count import DENSITY_SMOOTHING_ROUNDS, _nested_shares
from tase_loss.experiments.data import group_classes, planted_mixture
from tase_loss.experiments.evaluation import frequency_quality


@pytest.mark.parametrize("seed", range(4))
def test_adjusted_rand_index_matches_scikit_learn(seed):
    rng = np.random.default_rng(seed)
    first = rng.integers(0, 5, 300)
    second = np.where(rng.random(300) < 0.6, first, rng.integers(0, 7, 300))
    assert adjusted_rand_index(first, second) == pytest.approx(adjusted_rand_score(first, second), abs=1e-12)
    assert adjusted_rand_index(first, (first + 2) % 5) == pytest.approx(1.0)


def test_adjusted_rand_index_takes_any_ids_and_rejects_what_is_not_two_labelings():
    rng = np.random.default_rng(0)
    first, second = rng.integers(0, 4, 50), rng.integers(0, 3, 50)
    renamed = np.array([-7, 10**12, 3, 0])[first]  # only which samples share an id matters
    assert adjusted_rand_index(renamed, second) == adjusted_rand_index(first, second)
    assert adjusted_rand_index(list(first), list(second)) == adjusted_rand_index(first, second)
    with pytest.raises(ValueError, match="first and second must label the same samples, got 4 and 1"):
        adjusted_rand_index([0, 0, 1, 1], [0])
    with pytest.raises(ValueError, match="first must be a non-empty vector of integer labels"):
        adjusted_rand_index(np.array([], dtype=np.int64), np.array([], dtype=np.int64))
    with pytest.raises(ValueError, match="second must be a non-empty vector of integer labels"):
        adjusted_rand_index([0, 1], [0.0, 1.0])
    with pytest.raises(ValueError, match="first must be a non-empty vector of integer labels"):
        adjusted_rand_index(np.zeros((2, 2), dtype=np.int64), [0, 1])


def test_adjusted_rand_index_of_trivial_partitions():
    ones = np.zeros(6, dtype=np.int64)
    assert adjusted_rand_index(ones, ones) == adjusted_rand_score(ones, ones) == 1.0
    singletons = np.arange(6)
    assert adjusted_rand_index(singletons, singletons) == 1.0


def _blend_by_loop(points, estimator, seed):
    """The docstring's formula written out sample by sample, from the parts it names."""
    groups = MergedClusterEstimator(
        estimator.num_clusters,
        over_clustering=estimator.groups.over_clustering,
        num_iterations=estimator.groups.num_iterations,
        min_group_fraction=estimator.groups.min_group_fraction,
        reseed_clusters=estimator.groups.reseed_clusters,
        reseed_threshold=estimator.groups.reseed_threshold,
        reseed_iterations=estimator.groups.reseed_iterations,
    )
    groupings = [groups.estimate(points, seed=seed + member).labels.tolist() for member in range(3)]
    density = estimator.density.estimate(points, seed=seed).log_frequency.tolist()
    stability, pair = adjusted_rand_score(groupings[0], groupings[1]), (0, 1)
    made = 3 if estimator.third_grouping and estimator.unstable < stability < estimator.stable else 2
    if made == 3:
        for candidate in ((0, 2), (1, 2)):  # the best-agreeing pair; a tie keeps the earlier
            agreement = adjusted_rand_score(groupings[candidate[0]], groupings[candidate[1]])
            if agreement > stability:
                stability, pair = agreement, candidate
    labels, other = groupings[pair[0]], groupings[pair[1]]
    trust = min(1.0, max(0.0, (stability - estimator.unstable) / (estimator.stable - estimator.unstable)))
    members, others = {}, {}
    for i, (group, second_group) in enumerate(zip(labels, other)):
        members.setdefault(group, []).append(i)
        others.setdefault(second_group, []).append(i)
    shares, nested = [], 0
    for i, group in enumerate(labels):
        share = len(members[group])
        nested_group = others[other[i]]
        inside = sum(labels[j] == group for j in nested_group)
        nests = estimator.nesting is not None and inside >= estimator.nesting * len(nested_group)
        if nests and len(nested_group) < share:
            share = len(nested_group)
            nested += 1
        shares.append(share / len(labels))
    values = []
    for i, group in enumerate(labels):
        group_mean = sum(density[j] for j in members[group]) / len(members[group])
        counted = max(math.log(shares[i]) + estimator.within * (density[i] - group_mean), math.log(min(shares)))
        values.append(trust * counted + (1 - trust) * density[i])
    shift = max(0.0, max(values))
    return [value - shift for value in values], trust, nested, pair, labels, made


@pytest.mark.parametrize(
    "unstable, stable, grouping",
    [
        (0.7, 0.9, {}),
        (-1.0, 1.0, {}),
        (0.0, 0.05, {}),
        (0.0, 0.05, {"over_clustering": 4, "num_iterations": 7, "min_group_fraction": 0.5}),
        (0.0, 0.05, {"reseed_clusters": 6, "reseed_threshold": 0.5, "reseed_iterations": 3}),
        (0.0, 0.05, {"nesting": None}),
        (0.0, 0.05, {"nesting": 0.0}),
        (0.0, 0.05, {"nesting": 0.5}),
        (0.0, 0.05, {"nesting": 1.0}),
        # pairwise ARIs of the groupings of seeds 4, 5, 6: 0.367, 0.384 (4 and 6), 0.443 (5 and 6)
        (0.0, 0.05, {"third_grouping": True}),  # 0.367 is decisive: no third grouping
        (0.3, 0.5, {"third_grouping": True, "pair": (1, 2), "made": 3}),  # it is not: 5 and 6 count
        (-1.0, 1.0, {"third_grouping": True, "pair": (1, 2), "made": 3}),
        # seeds 18, 19, 20: 0.365, 0.454 (18 and 20), 0.444 (19 and 20): the best pair, not the last better one
        (-1.0, 1.0, {"third_grouping": True, "seed": 18, "pair": (0, 2), "made": 3}),
        # seeds 5, 6, 7: 0.443, 0.254, 0.205: a third grouping made, the first two kept
        (-1.0, 1.0, {"third_grouping": True, "seed": 5, "made": 3}),
    ],
)
def test_the_estimate_is_the_formula_computed_by_a_loop(unstable, stable, grouping):
    points, _ = planted_mixture(3, "moderate", max_count=200, dim=16)
    points = torch.from_numpy(points)
    seed, expected_pair, expected_made = grouping.pop("seed", 4), grouping.pop("pair", (0, 1)), grouping.pop("made", 2)
    estimator = StableCountEstimator(5, unstable=unstable, stable=stable, **grouping)
    estimate = estimator.estimate(points, seed=seed)
    expected, trust, nested, pair, labels, made = _blend_by_loop(points, estimator, seed=seed)
    assert pair == expected_pair and made == expected_made
    assert estimate.diagnostics["groupings"] == made
    assert estimate.diagnostics["trust"] == pytest.approx(trust, abs=1e-12)
    assert estimate.diagnostics["nested_samples"] == nested
    assert (nested > 0) == (grouping.get("nesting", StableCountEstimator().nesting) not in (None, 1.0))
    assert estimate.labels.tolist() == labels
    torch.testing.assert_close(estimate.log_frequency, torch.tensor(expected, dtype=torch.float64))
    assert float(estimate.log_frequency.max()) <= 0.0


def test_a_smaller_group_of_the_second_grouping_nested_in_the_first_gives_its_share():
    # first grouping: {0..5} and {6..9}; second: {0, 1} (inside {0..5}), {2..7} (across), {8, 9}
    first = np.array([0, 0, 0, 0, 0, 0, 1, 1, 1, 1])
    second = np.array([2, 2, 0, 0, 0, 0, 0, 0, 1, 1])
    shares, nested = _nested_shares(first, second, 0.75)
    np.testing.assert_array_equal(shares * 10, [2, 2, 6, 6, 6, 6, 4, 4, 2, 2])
    assert nested == 4
    # {2..7} crosses both groups but is smaller than neither: its samples keep their share
    shares, nested = _nested_shares(first, second, 0.0)  # the smaller share, always
    np.testing.assert_array_equal(shares * 10, [2, 2, 6, 6, 6, 6, 4, 4, 2, 2])
    shares, nested = _nested_shares(first, second, None)
    np.testing.assert_array_equal(shares * 10, [6, 6, 6, 6, 6, 6, 4, 4, 4, 4])
    assert nested == 0
    # {0, 1, 2, 9} lies 3/4 inside {0..5}: nested at 0.75, not at 0.8
    second = np.array([1, 1, 1, 0, 0, 0, 0, 0, 0, 1])
    shares, nested = _nested_shares(first, second, 0.75)
    np.testing.assert_array_equal(shares * 10, [4, 4, 4, 6, 6, 6, 4, 4, 4, 4])
    assert nested == 3 and _nested_shares(first, second, 0.8)[1] == 0
    # {0, 1, 2, 3} inside {0..5}; {4, 5, 6}: 2/3 inside {0..5}, 1/3 inside {6..9}; {7, 8, 9} inside {6..9}
    second = np.array([0, 0, 0, 0, 1, 1, 1, 2, 2, 2])
    shares, nested = _nested_shares(first, second, 0.75)
    np.testing.assert_array_equal(shares * 10, [4, 4, 4, 4, 6, 6, 4, 3, 3, 3])
    assert nested == 7
    shares, nested = _nested_shares(first, second, 0.0)  # sample 4, 5 and 6 too: the smaller share
    np.testing.assert_array_equal(shares * 10, [4, 4, 4, 4, 3, 3, 3, 3, 3, 3])
    assert nested == 10
    # a fraction exactly met: 7 of {23..47} lie in {0..29}, 0.28 of 25, though 0.28 * 25 rounds above 7
    first, second = np.repeat([0, 1], [30, 40]), np.repeat([0, 1, 2], [23, 25, 22])
    assert 0.28 * 25 > 7 and _nested_shares(first, second, 0.28)[1] == 70
    assert _nested_shares(first, second, 0.29)[1] == 70 - 7


def test_structureless_data_falls_back_to_the_density_exactly():
    generator = torch.Generator().manual_seed(0)
    points = torch.nn.functional.normalize(torch.randn(800, 8, generator=generator), dim=1)
    estimate = StableCountEstimator().estimate(points, seed=0)
    assert estimate.diagnostics["stability"] < 0.7 and estimate.diagnostics["trust"] == 0.0
    density = KNNDensityEstimator(smoothing_rounds=DENSITY_SMOOTHING_ROUNDS)
    torch.testing.assert_close(estimate.log_frequency, density.estimate(points, seed=0).log_frequency)
    # the first two groupings disagree too much to ask a third
    consulted = StableCountEstimator(third_grouping=True).estimate(points, seed=0)
    assert consulted.diagnostics["groupings"] == 2 and torch.equal(consulted.log_frequency, estimate.log_frequency)


_D32_UNSTABLE = "at D = 32 the merged groups are less stable across seeds (measured ARI 0.78-0.97 at seed 7)"
_D32_FAILURES = {
    ("with", 1): f"{_D32_UNSTABLE}: ARI 0.785 gives trust 0.43, and the density, which ranks classes wrongly "
    "when the head is widest, pulls the gap recovered to 0.66 (per sample 0.82); a third grouping settles it (below)",
}
"""(Without reseeding, the 3-blob case of D = 32 missed too: class-level 0.88, a 3-blob class
split across two groups; with it, 1.00.)"""


def _cases():
    for dim in (32, 64, 128):
        for shape in (("with", 1), ("against", 1), ("independent", 1), ("independent", 3)):
            reason = _D32_FAILURES.get(shape) if dim == 32 else None
            marks = [pytest.mark.xfail(strict=True, raises=AssertionError, reason=reason)] if reason else []
            yield pytest.param(dim, *shape, marks=marks, id=f"{dim}-{shape[0]}-{shape[1]}")


@pytest.mark.parametrize("dim, spread, subclusters", list(_cases()))
def test_separable_mixtures_of_unequal_spread_meet_the_targets(dim, spread, subclusters):
    """Issue 22's targets on separable mixtures (seed 7: neither the tuning seed 100 nor the
    study's 0-2): classes ranked by size, samples by their class size, the right scale,
    no collapse below the rarest class. One D = 32 case misses targets, as
    measured (a strict xfail with the figures); docs/results.md has the study's rates."""
    points, labels = planted_mixture(7, "low", dim=dim, spread=spread, subclusters=subclusters)
    estimate = StableCountEstimator().estimate(torch.from_numpy(points), seed=7)
    quality = frequency_quality(estimate.log_frequency.numpy(), labels, group_classes(np.bincount(labels)))
    assert quality["class_spearman"] >= 0.9, quality
    assert quality["spearman"] >= 0.8, quality
    assert 0.7 <= quality["gap_recovered"] <= 1.3, quality
    assert quality["floor"] >= -2.0, quality


def test_a_third_grouping_is_made_only_strictly_between_unstable_and_stable():
    points = torch.from_numpy(planted_mixture(3, "moderate", max_count=200, dim=16)[0])
    stability = StableCountEstimator(5).estimate(points, seed=4).diagnostics["stability"]  # 0.367
    for unstable, stable, made in ((stability, 0.9, 2), (0.0, stability, 2), (0.0, 0.9, 3)):
        estimator = StableCountEstimator(5, unstable=unstable, stable=stable, third_grouping=True)
        assert estimator.estimate(points, seed=4).diagnostics["groupings"] == made, (unstable, stable)


def test_a_third_grouping_settles_two_that_half_agree():
    """The D = 32 case the default misses (above): its first two groupings half agree (ARI
    0.785, trust 0.43), a third agrees with one of them (0.922), and the shares count.
    Where the first two agree (D = 64), the third is not made and nothing changes."""
    points, labels = planted_mixture(7, "low", dim=32, spread="with")
    estimate = StableCountEstimator(third_grouping=True).estimate(torch.from_numpy(points), seed=7)
    assert estimate.diagnostics["groupings"] == 3 and estimate.diagnostics["trust"] == 1.0
    quality = frequency_quality(estimate.log_frequency.numpy(), labels, group_classes(np.bincount(labels)))
    assert quality["class_spearman"] >= 0.9 and quality["spearman"] >= 0.8, quality
    assert 0.7 <= quality["gap_recovered"] <= 1.3 and quality["floor"] >= -2.0, quality
    points = torch.from_numpy(planted_mixture(7, "low", dim=64, spread="with")[0])
    default, consulted = (StableCountEstimator(third_grouping=t).estimate(points, seed=7) for t in (False, True))
    assert default.diagnostics["stability"] >= 0.9 and consulted.diagnostics["groupings"] == 2
    assert torch.equal(default.log_frequency, consulted.log_frequency) and torch.equal(default.labels, consulted.labels)


def test_no_sample_is_estimated_rarer_than_the_smallest_share():
    """Where the groups are trusted, a sparse sample of a wide class sits at worst at the
    smallest share (seed 8, D = 64, the head tightest: 2.98 nats below the rarest
    class before that floor, 1.40 after)."""
    points, labels = planted_mixture(8, "low", dim=64, spread="against")
    estimate = StableCountEstimator().estimate(torch.from_numpy(points), seed=8)
    assert estimate.diagnostics["trust"] == 1.0
    quality = frequency_quality(estimate.log_frequency.numpy(), labels, group_classes(np.bincount(labels)))
    assert quality["floor"] >= -2.0, quality


def test_deterministic_for_a_seed_and_labels_from_the_first_grouping():
    points, _ = planted_mixture(1, "low", max_count=300)
    points = torch.from_numpy(points)
    first, again = StableCountEstimator().estimate(points, seed=5), StableCountEstimator().estimate(points, seed=5)
    assert torch.equal(first.log_frequency, again.log_frequency) and torch.equal(first.labels, again.labels)
    groups = MergedClusterEstimator(10, num_iterations=10, reseed_clusters=5, reseed_threshold=0.5)
    assert torch.equal(first.labels, groups.estimate(points, seed=5).labels)


def test_an_estimator_pickled_before_the_third_grouping_loads_without_it():
    estimator = StableCountEstimator(5)
    del estimator.__dict__["third_grouping"]  # what an older pickle holds
    loaded = pickle.loads(pickle.dumps(estimator))
    assert loaded.third_grouping is False
    points = torch.from_numpy(planted_mixture(3, "moderate", max_count=200, dim=16)[0])
    expected = StableCountEstimator(5).estimate(points, seed=4).log_frequency
    assert torch.equal(loaded.estimate(points, seed=4).log_frequency, expected)


def test_bad_options_are_clear_errors():
    assert StableCountEstimator((7,)).num_clusters == (7,)  # the runner's --clusters form
    with pytest.raises(ValueError, match=r"must be one number of groups, got \(10, 20\)"):
        StableCountEstimator((10, 20))
    with pytest.raises(ValueError, match="stable must be above unstable"):
        StableCountEstimator(unstable=0.9, stable=0.9)
    with pytest.raises(ValueError, match="within"):
        StableCountEstimator(within=-0.5)
    for nesting in (-0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match="nesting"):
            StableCountEstimator(nesting=nesting)
    with pytest.raises(ValueError, match="num_iterations"):
        StableCountEstimator(num_iterations=0)
    with pytest.raises(ValueError, match="min_group_fraction"):
        StableCountEstimator(min_group_fraction=1.5)
    with pytest.raises(ValueError, match="reseed_clusters"):
        StableCountEstimator(reseed_clusters=-2)
    with pytest.raises(ValueError, match="reseed_threshold"):
        StableCountEstimator(reseed_threshold=float("inf"))
    with pytest.raises(TypeError, match="third_grouping must be a bool, got 1"):
        StableCountEstimator(third_grouping=1)
    with pytest.raises(TypeError, match="density must be a KNNDensityEstimator, got str"):
        StableCountEstimator(density="knn-density")
    with pytest.raises(ValueError, match="needs at least 21 samples, got 12"):
        StableCountEstimator(5).estimate(torch.nn.functional.normalize(torch.randn(12, 4), dim=1))
