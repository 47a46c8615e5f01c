"""Frequency estimators: hand-computed cases, loop oracles, the planted-mixture bar, bad input."""

import math

import numpy as np
import pytest
import torch

from tase_loss import (
    DEFAULT_ESTIMATOR,
    ClusterSizeEstimator,
    KNNDensityEstimator,
    MergedClusterEstimator,
    MomentumLossEstimator,
    PseudoLabeler,
    build_estimator,
    knn_log_density,
)
from tase_loss.estimators import ESTIMATORS, MAX_SEED, adjusted_rand_index, intrinsic_dimension
from tase_loss.estimators.density import _density_of, _exact_copies, _mutual_edges, reference_size
from tase_loss.experiments.data import group_classes, planted_mixture
from tase_loss.experiments.evaluation import frequency_quality


def _separated(sizes, dim=8, spread=0.01, seed=0):
    """Tight clusters around orthogonal directions: any sane clustering recovers them."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.cat([torch.full((size,), c) for c, size in enumerate(sizes)])
    points = torch.eye(dim)[labels] + spread * torch.randn(len(labels), dim, generator=generator)
    return torch.nn.functional.normalize(points, dim=1), labels


def test_cluster_size_is_the_share_of_the_cluster():
    points, labels = _separated([8, 4, 2])
    estimate = ClusterSizeEstimator(num_clusters=3).estimate(points)
    expected = torch.log(torch.tensor([8.0, 4.0, 2.0], dtype=torch.float64) / 14)[labels]
    torch.testing.assert_close(estimate.log_frequency, expected)
    assert estimate.diagnostics["num_groups"] == 3.0 and estimate.diagnostics["seconds"] >= 0


def test_tied_merge_heights_still_give_the_groups_asked_for():
    """Four duplicated points, pairwise orthogonal: every merge of the tree is at one height,
    where a cut by height gives 1 or 4 groups; each cluster must land whole in one group."""
    labels = torch.arange(4).repeat_interleave(torch.tensor([40, 30, 20, 10]))
    points = torch.eye(4, 8)[labels]
    for groups in (2, 3):
        estimate = MergedClusterEstimator(groups).estimate(points)
        assert estimate.labels.unique().numel() == groups == estimate.diagnostics["num_groups"]
        assert all(estimate.labels[labels == c].unique().numel() == 1 for c in range(4))


def test_merged_clusters_count_a_split_head_class_whole():
    sizes = [300, 60, 12]
    points, labels = _separated(sizes, spread=0.05)
    estimate = MergedClusterEstimator(num_clusters=3, over_clustering=10).estimate(points)
    expected = torch.log(torch.tensor(sizes, dtype=torch.float64) / sum(sizes))[labels]
    torch.testing.assert_close(estimate.log_frequency, expected)
    assert estimate.diagnostics["num_fine_clusters"] > 3


def _reseeded_by_loop(points, fine, reseeded, threshold, seed):
    """The reseeding of MergedClusterEstimator's docstring: the same FAISS k-means calls,
    each sample's fit (its similarity's z-score in its fine cluster) as plain loops."""
    from tase_loss._faiss import spherical_kmeans

    assignment, centroids = spherical_kmeans(points, fine - reseeded, seed=seed, num_threads=1)
    similarity = [float(points[i] @ centroids[cluster]) for i, cluster in enumerate(assignment)]
    members = {}
    for i, cluster in enumerate(assignment):
        members.setdefault(cluster, []).append(similarity[i])
    fit = []
    for i, cluster in enumerate(assignment):
        values = members[cluster]
        mean = sum(values) / len(values)
        deviation = math.sqrt(max(sum(v * v for v in values) / len(values) - mean * mean, 1e-12))
        fit.append((similarity[i] - mean) / deviation)
    pool = [i for i in range(len(fit)) if fit[i] < -threshold]
    if len(pool) < 2 * reseeded:
        pool = sorted(range(len(fit)), key=lambda i: fit[i])[: 2 * reseeded]
    _, seeds = spherical_kmeans(np.ascontiguousarray(points[pool]), reseeded, seed=seed, num_threads=1)
    start = np.concatenate([centroids, seeds]).astype(np.float32)
    return spherical_kmeans(points, fine, seed=seed, num_iterations=10, num_threads=1, init_centroids=start)


def _outlier_rule_by_loop(points, groups, over_clustering, fraction, seed, reseed=None):
    """MergedClusterEstimator's grouping written out: the same FAISS k-means and scipy tree,
    then the cut and the outliers' reassignment as plain loops; ``reseed``:
    ``(reseed_clusters, reseed_threshold)``."""
    from scipy.cluster.hierarchy import fcluster, linkage

    from tase_loss._faiss import spherical_kmeans

    count = points.shape[0]
    fine = over_clustering * groups
    if reseed is None:
        assignment, centroids = spherical_kmeans(points, fine, seed=seed, num_threads=1)
    else:
        assignment, centroids = _reseeded_by_loop(points, fine, *reseed, seed=seed)
    sizes = {cluster: int((assignment == cluster).sum()) for cluster in range(fine)}
    used = [cluster for cluster in range(fine) if sizes[cluster] > 0]
    unit = {cluster: centroids[cluster] / np.linalg.norm(centroids[cluster]) for cluster in used}
    tree = linkage(np.stack([unit[c] for c in used]).astype(np.float64), method="average", metric="cosine")
    for cut in range(groups, len(used) + 1):
        group = dict(zip(used, fcluster(tree, cut, criterion="maxclust")))
        mass = {}
        for cluster in used:
            mass[group[cluster]] = mass.get(group[cluster], 0) + sizes[cluster]
        kept = {g for g, total in mass.items() if total >= fraction * count / fine}
        if len(kept) == groups:
            break
    final = dict(group)
    for cluster in used:
        if group[cluster] not in kept:
            nearest = max((c for c in used if group[c] in kept), key=lambda c: float(unit[cluster] @ unit[c]))
            final[cluster] = group[nearest]
    return np.array([final[cluster] for cluster in assignment])


def test_outlier_clusters_take_no_group_as_a_loop_computes():
    """On this mixture (a development seed) average linkage cut at C keeps a few far-off
    points as a group of their own; the rule gives that group to a class instead."""
    points, _ = planted_mixture(100, "low", dim=32, spread="independent")
    estimate = MergedClusterEstimator(10).estimate(torch.from_numpy(points), seed=0, num_threads=1)
    expected = _outlier_rule_by_loop(points, 10, 10, 0.1, seed=0)
    assert adjusted_rand_index(estimate.labels.numpy(), expected) == 1.0
    assert estimate.diagnostics["outlier_fine_clusters"] >= 1
    smallest = 0.1 * points.shape[0] / 100
    assert np.bincount(estimate.labels.numpy()).min() >= smallest
    every_group = MergedClusterEstimator(10, min_group_fraction=0.0).estimate(torch.from_numpy(points), seed=0)
    assert np.bincount(every_group.labels.numpy()).min() < smallest


@pytest.mark.parametrize("reseed", [(10, 1.0), (5, 0.5), (20, 4.0)])
def test_reseeded_fine_clusters_as_a_loop_computes(reseed):
    """(20, 4.0): fewer samples than 2 r lie 4 deviations below their cluster's mean, so
    the 2 r worst-fit seed the new clusters."""
    points, _ = planted_mixture(101, "low", dim=32, spread="against")
    estimator = MergedClusterEstimator(10, reseed_clusters=reseed[0], reseed_threshold=reseed[1])
    estimate = estimator.estimate(torch.from_numpy(points), seed=2, num_threads=1)
    expected = _outlier_rule_by_loop(points, 10, 10, 0.1, seed=2, reseed=reseed)
    assert adjusted_rand_index(estimate.labels.numpy(), expected) == 1.0


def test_intrinsic_dimension_of_a_line_and_a_plane():
    generator = np.random.default_rng(0)
    for dim in (1, 2):
        points = generator.uniform(size=(3000, dim))
        distance = np.sort(np.linalg.norm(points[:, None] - points[None, :], axis=2), axis=1)[:, 1:11]
        assert intrinsic_dimension(distance) == pytest.approx(dim, rel=0.15)


def test_intrinsic_dimension_leaves_duplicates_out_by_hand():
    distance = np.array([[0.0, 0.1, 0.3], [0.1, 0.2, 0.4], [0.0, 0.0, 0.0]])
    # row 0: only log(0.3 / 0.1) counts; row 1: both ratios; row 2: no distance at all
    expected = 1.0 / np.mean([math.log(3.0), (math.log(4.0) + math.log(2.0)) / 2])
    assert intrinsic_dimension(distance) == pytest.approx(expected, rel=1e-12)
    assert intrinsic_dimension(np.zeros((3, 4))) == 1.0


def test_kth_neighbor_log_density_matches_a_loop():
    generator = torch.Generator().manual_seed(0)
    points = torch.nn.functional.normalize(torch.randn(40, 5, generator=generator, dtype=torch.float64), dim=1)
    k, dimension = 4, 3.0
    log_density = knn_log_density(points, k=k, dimension=dimension)
    for i in range(40):
        distances = sorted(math.dist(points[i].tolist(), points[j].tolist()) for j in range(40) if j != i)
        assert float(log_density[i]) == pytest.approx(-dimension * math.log(distances[k - 1]), rel=1e-4)


def test_mutual_edges_by_hand():
    # 0 <-> 1 list each other; 2 lists 0, but 0's nearest (1, at 0.9) is closer than 2 (0.5).
    neighbors = np.array([[1], [0], [0]])
    similarity = np.array([[0.9], [0.9], [0.5]])
    assert _mutual_edges(neighbors, similarity).tolist() == [[True], [True], [False]]


def test_knn_density_smoothing_matches_a_loop():
    generator = torch.Generator().manual_seed(1)
    points = torch.nn.functional.normalize(torch.randn(30, 4, generator=generator), dim=1)
    raw = KNNDensityEstimator(5, graph_neighbors=6, smoothing_rounds=0).estimate(points).log_frequency
    smooth = KNNDensityEstimator(5, graph_neighbors=6, smoothing_rounds=2).estimate(points).log_frequency
    unit = points.double()
    similarity = unit @ unit.T
    similarity.fill_diagonal_(-math.inf)
    listed = [set(similarity[i].topk(6).indices.tolist()) for i in range(30)]
    mutual = [[j for j in listed[i] if i in listed[j]] for i in range(30)]
    values = raw.tolist()
    for _ in range(2):
        values = [
            0.5 * (values[i] + sum(values[j] for j in mutual[i]) / len(mutual[i])) if mutual[i] else values[i]
            for i in range(30)
        ]
    expected = torch.tensor(values, dtype=torch.float64)
    torch.testing.assert_close(smooth, expected - expected.max(), rtol=0, atol=1e-9)


def test_momentum_loss_is_minus_the_standardized_loss():
    loss = torch.tensor([2.0, 4.0, 6.0])
    estimate = MomentumLossEstimator(scale=2.0).estimate(torch.ones(3, 1), loss=loss)
    z = (loss.double() - 4.0) / 2.0
    torch.testing.assert_close(estimate.log_frequency, -2.0 * z - float((-2.0 * z).max()))


@pytest.mark.parametrize("name", sorted(ESTIMATORS))
def test_every_estimator_is_deterministic_and_non_positive(name):
    points, _ = _separated([40, 20, 10], spread=0.3, seed=2)
    estimator = build_estimator(name)
    loss = torch.rand(points.shape[0], generator=torch.Generator().manual_seed(0))
    if not estimator.uses_loss and estimator.minimum_samples > points.shape[0]:
        pytest.skip("needs more samples")
    kwargs = {"loss": loss} if estimator.uses_loss else {}
    first = estimator.estimate(points, seed=4, **kwargs)
    second = estimator.estimate(points, seed=4, **kwargs)
    assert torch.equal(first.log_frequency, second.log_frequency)
    assert first.log_frequency.dtype == torch.float64 and bool((first.log_frequency <= 0).all())


@pytest.mark.parametrize(
    "build, message",
    [
        (lambda: ClusterSizeEstimator(num_clusters=0), "num_clusters must be an integer >= 1"),
        (lambda: MergedClusterEstimator(over_clustering=0), "over_clustering must be an integer >= 1"),
        (lambda: MergedClusterEstimator(min_group_fraction=1.5), "min_group_fraction must be"),
        (lambda: MergedClusterEstimator(reseed_clusters=-1), "reseed_clusters must be an integer >= 0"),
        (lambda: MergedClusterEstimator(reseed_threshold=float("nan")), "reseed_threshold must be a finite"),
        (lambda: MergedClusterEstimator(reseed_iterations=0), "reseed_iterations must be an integer >= 1"),
        (lambda: KNNDensityEstimator(num_neighbors=0), "num_neighbors must be an integer >= 1"),
        (lambda: KNNDensityEstimator(kernel="box"), "kernel must be one of"),
        (lambda: MomentumLossEstimator(scale=float("nan")), "scale must be a finite number > 0"),
        (lambda: build_estimator("k-means"), "estimator must be one of"),
    ],
)
def test_bad_options_name_themselves(build, message):
    with pytest.raises(ValueError, match=message):
        build()


def _unit(count, dim, seed=0):
    return torch.nn.functional.normalize(torch.randn(count, dim, generator=torch.Generator().manual_seed(seed)), dim=1)


def test_bad_input_is_a_clear_error():
    with pytest.raises(ValueError, match="needs at least 10 samples, got 4"):
        ClusterSizeEstimator(10).estimate(_unit(4, 3))
    with pytest.raises(ValueError, match="needs at least 21 samples"):
        KNNDensityEstimator().estimate(_unit(20, 3))
    with pytest.raises(ValueError, match="per-sample losses"):
        MomentumLossEstimator().estimate(_unit(3, 2))
    with pytest.raises(ValueError, match="NaN"):
        MomentumLossEstimator().estimate(_unit(3, 2), loss=torch.tensor([1.0, float("nan"), 2.0]))
    with pytest.raises(ValueError, match="features contains NaN"):
        knn_log_density(torch.tensor([[1.0, float("nan")], [0.0, 1.0], [1.0, 1.0]]), k=1)


@pytest.mark.parametrize("name", sorted(ESTIMATORS))
def test_estimate_rejects_features_and_seeds_it_cannot_use(name):
    """Checked before any work: not unit rows, not finite, no feature axis, seeds FAISS cannot take."""
    estimator = build_estimator(name)
    count = max(estimator.minimum_samples, 40)
    features = _unit(count, 4)
    loss = torch.zeros(count) if estimator.uses_loss else None
    with pytest.raises(ValueError, match=r"features must hold unit rows .*row 0 has norm 3"):
        estimator.estimate(3 * features, loss=loss)
    broken = features.clone()
    broken[5, 1] = float("nan")
    with pytest.raises(ValueError, match="features contains NaN or Inf"):
        estimator.estimate(broken, loss=loss)
    with pytest.raises(ValueError, match=r"features must have shape \(n, D\) with D >= 1, got \(40, 0\)"):
        estimator.estimate(torch.zeros(40, 0), loss=loss)
    with pytest.raises(ValueError, match=rf"features must have shape \(n, D\) with D >= 1, got \(2, {count}, 2\)"):
        estimator.estimate(features.reshape(2, -1, 2), loss=loss)
    with pytest.raises(TypeError, match="features must be a floating tensor"):
        estimator.estimate(torch.ones(count, 4, dtype=torch.int64), loss=loss)
    for seed in (-1, MAX_SEED + 1):
        with pytest.raises(ValueError, match="seed must be an integer >= 0 and <= "):
            estimator.estimate(features, seed=seed, loss=loss)
    with pytest.raises(TypeError, match="seed must be an integer"):
        estimator.estimate(features, seed=np.int64(3), loss=loss)
    with pytest.raises(ValueError, match="num_threads must be an integer >= 1, got 0"):
        estimator.estimate(features, num_threads=0, loss=loss)
    with pytest.raises(TypeError, match="num_threads must be an integer"):
        estimator.estimate(features, num_threads=True, loss=loss)
    # the largest seed allowed runs (an ensemble's or a second grouping's seed + 1 included)
    assert estimator.estimate(features, seed=MAX_SEED, loss=loss).log_frequency.shape == (count,)


def test_rows_stored_in_float16_count_as_unit():
    features = _unit(200, 64).to(torch.float16).to(torch.float32)
    assert KNNDensityEstimator().estimate(features).log_frequency.shape == (200,)


def test_labels_use_every_id_when_a_cluster_ends_up_empty():
    """Three distinct rows repeated, ten k-means clusters: most end up empty, and the ids
    of the used ones are closed up, so the labeler's group sizes hold no zeros."""
    rows = _unit(3, 8, seed=1).repeat_interleave(torch.tensor([200, 50, 10]), dim=0)
    for estimator in (ClusterSizeEstimator(10), KNNDensityEstimator()):
        labels = estimator.estimate(rows).labels
        assert labels.unique().tolist() == [0, 1, 2]
        assert sorted(torch.bincount(labels).tolist()) == [10, 50, 200]
    labeler = PseudoLabeler(260, 8, ClusterSizeEstimator(10), warmup_epochs=1)
    labeler.update(torch.arange(260), rows)
    labeler.end_epoch(0)
    assert sorted(labeler.group_sizes.tolist()) == [10, 50, 200]


def test_labeler_rejects_a_seed_out_of_range_when_built():
    for seed in (-1, MAX_SEED + 1):
        with pytest.raises(ValueError, match="seed must be an integer >= 0"):
            PseudoLabeler(100, 4, seed=seed)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_duplicated_samples_do_not_shift_the_others(dtype):
    """A sample with k exact copies has r_k = 0: its density is capped at the densest other
    sample's, so the others keep their estimate, also for rows stored in half precision
    (a bank's), whose copies are up to 0.07 apart in ``sqrt(2 - 2 s)``."""
    points, labels = _separated([300, 80, 20], spread=0.3)
    points = points.to(dtype).float()
    duplicated = torch.cat([points, points[:1].repeat(10, 1)])
    for estimator in (KNNDensityEstimator(), build_estimator(DEFAULT_ESTIMATOR)):
        clean = estimator.estimate(points).log_frequency.numpy()
        shifted = estimator.estimate(duplicated).log_frequency.numpy()[: len(points)]
        class_means = [[values[labels.numpy() == c].mean() for c in range(3)] for values in (clean, shifted)]
        # Measured: the others move by 0.04-0.10 nats (knn-density) and 0.28-0.39
        # (stable-count); without the cap they moved by 11-56 nats.
        np.testing.assert_allclose(class_means[1], class_means[0], atol=1.0)


def test_copies_get_the_densest_other_radius_and_leave_the_dimension_alone():
    """``_density_of`` by hand: row 0's two neighbours and row 1's nearest are copies (at
    1e-4 in ``sqrt(2 - 2 s)``, as float rounding puts them); the others are not."""
    distance = np.array([[1e-4, 1e-4], [1e-4, 0.2], [0.1, 0.2], [0.2, 0.3], [0.3, 0.6]])
    copies = np.zeros_like(distance, dtype=bool)
    copies[0] = copies[1, 0] = True
    similarity = 1.0 - distance**2 / 2.0
    log_density, dimension = _density_of(similarity, "kth_neighbor", 0.0, None, copies)
    assert dimension == pytest.approx(intrinsic_dimension(distance[2:]), rel=1e-9)
    radius = np.array([0.2, 0.2, 0.2, 0.3, 0.6])  # row 0 floored at the densest other r_k
    np.testing.assert_allclose(log_density, -dimension * np.log(radius), rtol=1e-9)


def test_exact_copies_are_found_whatever_the_norm():
    generator = np.random.default_rng(0)
    rows = generator.standard_normal((6, 16)).astype(np.float32)
    rows /= np.linalg.norm(rows, axis=1, keepdims=True) * 1.01  # 1 % off norm 1, as float16 rows can be
    rows[3] = rows[0]
    found = np.array([[3, 1], [2, 0], [0, 1], [0, 4], [5, 0], [4, 1]])
    similarity = np.einsum("id,ikd->ik", rows.astype(np.float64), rows[found].astype(np.float64))
    expected = np.zeros(found.shape, dtype=bool)
    expected[0, 0] = expected[3, 0] = True
    np.testing.assert_array_equal(_exact_copies(rows, found, similarity), expected)


@pytest.mark.parametrize("overlap", ["low", "moderate"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_default_estimator_sees_the_long_tail_of_planted_mixtures(overlap, seed):
    """The bar of docs/results.md: Spearman >= 0.6 and >= 50 % of the log Few/Many gap."""
    points, labels = planted_mixture(seed, overlap)
    estimate = build_estimator(DEFAULT_ESTIMATOR).estimate(torch.from_numpy(points), seed=seed)
    quality = frequency_quality(estimate.log_frequency.numpy(), labels, group_classes(np.bincount(labels)))
    assert quality["spearman"] >= 0.6, quality
    assert quality["gap_recovered"] >= 0.5, quality


def test_labeler_estimate_failure_mutates_nothing():
    labeler = PseudoLabeler(50, 4, KNNDensityEstimator(), warmup_epochs=1)
    labeler.update(torch.arange(10), torch.randn(10, 4))
    before = labeler.state_dict()
    with pytest.raises(ValueError, match="needs at least 21 samples, the bank holds 10"):
        labeler.estimate()
    after = labeler.state_dict()
    assert all(
        torch.equal(before[key], after[key]) if isinstance(before[key], torch.Tensor) else before[key] == after[key]
        for key in before
    )


@pytest.mark.parametrize("overlap, gap_floor", [("low", 0.5), ("moderate", 0.45)])
@pytest.mark.parametrize("seed", [0, 1])
def test_knn_density_on_a_reference_subsample_keeps_the_signal(seed, overlap, gap_floor):
    """A 20 % reference (50,000 samples get 16 %) keeps the ranking and most of the gap.

    Measured on these mixtures (24,814 points), exact -> 20 % reference: Spearman 0.62-0.68
    -> 0.72-0.76, gap 1.07-1.13 -> 1.07-1.22 at low overlap and 0.60-0.67 -> 0.49-0.56 at
    moderate: the documented cost of the subsample is the lower moderate-overlap floor.
    """
    points, labels = planted_mixture(seed, overlap, max_count=10_000)
    pairs = len(labels) * (len(labels) // 5)
    assert reference_size(len(labels), pairs) == len(labels) // 5
    estimator = KNNDensityEstimator(reference_pairs=pairs)
    first = estimator.estimate(torch.from_numpy(points), seed=3)
    assert first.diagnostics["reference_size"] == len(labels) // 5
    assert torch.equal(first.log_frequency, estimator.estimate(torch.from_numpy(points), seed=3).log_frequency)
    quality = frequency_quality(first.log_frequency.numpy(), labels, group_classes(np.bincount(labels)))
    assert quality["spearman"] >= 0.6 and quality["gap_recovered"] >= gap_floor, quality


def test_reference_search_and_similarities_match_a_loop(monkeypatch):
    """Subsample search: each row's nearest reference rows, never itself; s_ij in float64."""
    from tase_loss.estimators import density
    from tase_loss.estimators.density import _neighbors, _similarities

    monkeypatch.setattr(density, "MIN_REFERENCE", 1)

    rng = np.random.default_rng(0)
    points = rng.standard_normal((60, 5)).astype(np.float32)
    points /= np.linalg.norm(points, axis=1, keepdims=True)
    found, is_reference = _neighbors(points, 3, reference_pairs=60 * 20, seed=1, num_threads=1)
    assert is_reference.sum() == 20  # reference_size(60, 1200) = 1200 // 60
    exact = points.astype(np.float64) @ points.astype(np.float64).T
    for row in range(60):
        candidates = [j for j in np.flatnonzero(is_reference) if j != row]
        expected = sorted(candidates, key=lambda j: -exact[row, j])[:3]
        assert found[row].tolist() == expected
    similarity = _similarities(points, found)
    for row in range(60):
        for slot, j in enumerate(found[row]):
            assert abs(similarity[row, slot] - exact[row, j]) < 1e-15
    pair = _similarities(points[:2], np.array([[1], [0]]))
    assert pair[0, 0] == pair[1, 0]  # s_01 == s_10 to the bit
