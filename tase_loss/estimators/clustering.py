"""Estimators from clusterings: k-means cluster share, and over-clustering merged by linkage."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Optional, Union

import numpy as np
import torch

from tase_loss._faiss import spherical_kmeans
from tase_loss._validation import check_int, check_real
from tase_loss.estimators.base import FrequencyEstimate, FrequencyEstimator

__all__ = ["ClusterSizeEstimator", "MergedClusterEstimator"]


def _cluster_counts(num_clusters: Union[int, Sequence[int]]) -> tuple[int, ...]:
    counts = (num_clusters,) if isinstance(num_clusters, int) and not isinstance(num_clusters, bool) else num_clusters
    if not isinstance(counts, Sequence) or not counts:
        raise ValueError(f"num_clusters must be an integer or a non-empty sequence of them, got {num_clusters!r}")
    return tuple(check_int("num_clusters", count, minimum=1) for count in counts)


def _ensemble(members: list[tuple[np.ndarray, np.ndarray]], diagnostics: dict[str, float]) -> FrequencyEstimate:
    """The geometric mean of the members' frequencies; the first member's labels."""
    log_frequency = np.mean([member for member, _ in members], axis=0)
    return FrequencyEstimate(
        torch.from_numpy(np.ascontiguousarray(log_frequency, dtype=np.float64)),
        torch.from_numpy(members[0][1].astype(np.int64)),
        diagnostics,
    )


def _group_log_frequency(labels: np.ndarray) -> np.ndarray:
    sizes = np.bincount(labels)
    return np.log(sizes[labels] / labels.size)


class _ClusteringEstimator(FrequencyEstimator):
    """Shared by the clustering estimators: options, the k-means call, the ensemble loop.

    Subclasses implement :meth:`_groups`: one member's group of every point.
    """

    def __init__(self, num_clusters: Union[int, Sequence[int]], num_iterations: int, max_training_points: int) -> None:
        self.num_clusters = _cluster_counts(num_clusters)
        self.num_iterations = check_int("num_iterations", num_iterations, minimum=1)
        self.max_training_points = check_int("max_training_points", max_training_points, minimum=1)

    def _kmeans(
        self,
        points: np.ndarray,
        count: int,
        seed: int,
        num_threads: Optional[int],
        *,
        num_iterations: Optional[int] = None,
        init_centroids: Optional[np.ndarray] = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """:func:`spherical_kmeans` with these options (``num_iterations=None``: :attr:`num_iterations`)."""
        return spherical_kmeans(
            points,
            count,
            seed=seed,
            num_iterations=self.num_iterations if num_iterations is None else num_iterations,
            max_training_points=self.max_training_points,
            num_threads=num_threads,
            init_centroids=init_centroids,
        )

    def _groups(
        self, points: np.ndarray, groups: int, seed: int, num_threads: Optional[int]
    ) -> tuple[np.ndarray, dict[str, float]]:
        raise NotImplementedError

    def _estimate(self, points, seed, num_threads, loss):  # type: ignore[no-untyped-def]
        members, diagnostics = [], {}
        for member, groups in enumerate(self.num_clusters):
            labels, extra = self._groups(points, groups, seed + member, num_threads)
            members.append((_group_log_frequency(labels), labels))
            diagnostics = diagnostics or extra  # the first member's
        sizes = np.bincount(members[0][1])
        diagnostics.update(num_groups=float((sizes > 0).sum()), largest_share=float(sizes.max() / points.shape[0]))
        return _ensemble(members, diagnostics)


class ClusterSizeEstimator(_ClusteringEstimator):
    """``f_i = n_c(i) / N`` from FAISS spherical k-means (the spec's estimator).

    Args:
        num_clusters: ``k``, or a sequence of ``k`` values: an ensemble whose estimate is
            the geometric mean over members (member ``j`` is seeded ``seed + j``).
        num_iterations: k-means iterations.
        max_training_points: centroids are trained on about this many points (rounded up
            to a multiple of ``k``); every point is assigned.

    Example:
        >>> import torch
        >>> points = torch.nn.functional.normalize(torch.randn(60, 4), dim=1)
        >>> estimate = ClusterSizeEstimator(num_clusters=3).estimate(points)
        >>> float(estimate.log_frequency.exp().max()) <= 1.0
        True
    """

    name = "cluster-size"

    def __init__(
        self,
        num_clusters: Union[int, Sequence[int]] = 10,
        *,
        num_iterations: int = 20,
        max_training_points: int = 100_000,
    ) -> None:
        super().__init__(num_clusters, num_iterations, max_training_points)
        self.minimum_samples = max(self.num_clusters)

    def _groups(self, points, groups, seed, num_threads):  # type: ignore[no-untyped-def]
        labels, _ = self._kmeans(points, groups, seed, num_threads)
        return labels, {}


class MergedClusterEstimator(_ClusteringEstimator):
    """Over-cluster with k-means, merge centroids into ``C`` groups; ``f_i`` = group share.

    k-means with ``k = C`` on long-tailed data makes clusters of similar size. With
    ``k = over_clustering x C`` every class gets clusters of its own (a head class many,
    a tail class at least one), and average linkage on the unit centroids (cosine
    distance, each centroid one item) joins clusters of one class before clusters of
    different classes, so the group sizes follow the class sizes when the classes are
    separated. Groups are cut from the tree with scipy's ``fcluster(criterion="maxclust")``.

    Outliers do not take a group: average linkage keeps a far-off fine cluster of a few
    points apart to the last, and cut at ``C`` such a cluster would use up a group, so two
    real classes would share one. A group must hold at least ``min_group_fraction`` of an
    average fine cluster (``n / k`` points); the tree is cut at the fewest groups that give
    ``C`` groups of that size, and the fine clusters of smaller groups join the group of
    their most similar kept fine centroid.

    A rare class can get no fine cluster of its own: k-means starts from randomly picked
    points, a class of 20 among 5,000 is rarely picked, and its samples then sit, a few
    each, in fine clusters held by larger classes, where each is among the samples
    farthest from the centroid. ``reseed_clusters`` (``r``) gives such samples a second
    chance: k-means makes ``k - r`` fine clusters, the samples whose similarity to their
    centroid lies more than ``reseed_threshold`` standard deviations below their
    cluster's mean (at least the ``2 r`` worst-fit) are clustered into ``r`` more, and
    ``reseed_iterations`` Lloyd iterations run from all ``k`` centroids.

    Args:
        num_clusters: ``C``, the number of groups (or a sequence: an ensemble).
        over_clustering: fine clusters per group; ``k = min(over_clustering * C, n // 2)``.
        num_iterations: k-means iterations.
        max_training_points: training subsample of the fine k-means.
        min_group_fraction: the smallest group, as a fraction of ``n / k`` (``0`` turns
            the rule off: every group of the cut at ``C`` counts).
        reseed_clusters: ``r``, fine centroids seeded from the worst-fit samples (``0``:
            none; at most half of ``k``).
        reseed_threshold: how many standard deviations below its cluster's mean
            similarity a sample's similarity must lie to seed them.
        reseed_iterations: Lloyd iterations from all ``k`` centroids after reseeding.

    Example:
        >>> import torch
        >>> centers = torch.eye(3, 8) * 4
        >>> points = torch.cat([centers[i] + torch.randn(n, 8) for i, n in enumerate([200, 60, 20])])
        >>> estimate = MergedClusterEstimator(num_clusters=3).estimate(
        ...     torch.nn.functional.normalize(points, dim=1))
        >>> estimate.labels.shape
        torch.Size([280])
    """

    name = "merged-clusters"

    def __init__(
        self,
        num_clusters: Union[int, Sequence[int]] = 10,
        *,
        over_clustering: int = 10,
        num_iterations: int = 20,
        max_training_points: int = 100_000,
        min_group_fraction: float = 0.1,
        reseed_clusters: int = 0,
        reseed_threshold: float = 1.0,
        reseed_iterations: int = 10,
    ) -> None:
        super().__init__(num_clusters, num_iterations, max_training_points)
        self.over_clustering = check_int("over_clustering", over_clustering, minimum=1)
        self.min_group_fraction = check_real("min_group_fraction", min_group_fraction, 0.0, 1.0)
        self.reseed_clusters = check_int("reseed_clusters", reseed_clusters, minimum=0)
        self.reseed_threshold = check_real("reseed_threshold", reseed_threshold)
        self.reseed_iterations = check_int("reseed_iterations", reseed_iterations, minimum=1)
        self.minimum_samples = 2 * max(self.num_clusters)

    def _fine_clusters(
        self, points: np.ndarray, count: int, seed: int, num_threads: Optional[int]
    ) -> tuple[np.ndarray, np.ndarray]:
        """``count`` fine k-means clusters, ``reseed_clusters`` of them seeded from worst-fit samples."""
        reseeded = min(self.reseed_clusters, count // 2)
        if reseeded == 0:
            return self._kmeans(points, count, seed, num_threads)
        base = count - reseeded
        assignment, centroids = self._kmeans(points, base, seed, num_threads)
        similarity = np.einsum("ij,ij->i", points, centroids[assignment])
        sizes = np.maximum(np.bincount(assignment, minlength=base), 1)
        mean = np.bincount(assignment, similarity, base) / sizes
        deviation = np.sqrt(np.maximum(np.bincount(assignment, similarity**2, base) / sizes - mean**2, 1e-12))
        fit = (similarity - mean[assignment]) / deviation[assignment]
        pool = np.flatnonzero(fit < -self.reseed_threshold)
        if pool.size < 2 * reseeded:
            pool = np.argsort(fit, kind="stable")[: 2 * reseeded]
        _, seeds = self._kmeans(np.ascontiguousarray(points[pool]), reseeded, seed, num_threads)
        start = np.ascontiguousarray(np.vstack([centroids, seeds]), dtype=np.float32)
        return self._kmeans(
            points, count, seed, num_threads, num_iterations=self.reseed_iterations, init_centroids=start
        )

    def _groups(self, points, groups, seed, num_threads):  # type: ignore[no-untyped-def]
        from scipy.cluster.hierarchy import cut_tree, fcluster, linkage

        fine = max(groups, min(self.over_clustering * groups, points.shape[0] // 2))
        assignment, centroids = self._fine_clusters(points, fine, seed, num_threads)
        sizes = np.bincount(assignment, minlength=fine)
        used = np.flatnonzero(sizes)
        group_of = np.zeros(fine, dtype=np.int64)
        outliers = 0
        if used.size > groups:
            unit = centroids[used] / np.linalg.norm(centroids[used], axis=1, keepdims=True)
            tree = linkage(unit.astype(np.float64), method="average", metric="cosine")
            smallest = self.min_group_fraction * points.shape[0] / fine
            # One more cut splits one group in two, so the count of kept groups grows by
            # at most one a cut: the first cut with C kept groups has exactly C.
            for cut in range(groups, used.size + 1):
                cluster = fcluster(tree, cut, criterion="maxclust") - 1
                if cluster.max() + 1 < cut:
                    # Tied merge heights (duplicate centroids): fcluster cuts at a height,
                    # so it cannot split one of them without the others; undo merges one
                    # at a time instead.
                    cluster = cut_tree(tree, n_clusters=cut).ravel()
                kept = np.bincount(cluster, weights=sizes[used]) >= smallest
                if kept.sum() >= groups:
                    break
            inside = kept[cluster]
            outliers = int((~inside).sum())
            if outliers:
                nearest = (unit[~inside] @ unit[inside].T).argmax(axis=1)
                cluster[~inside] = cluster[inside][nearest]
            group_of[used] = np.unique(cluster, return_inverse=True)[1]
        else:
            group_of[used] = np.arange(used.size)
        return group_of[assignment], {"num_fine_clusters": float(used.size), "outlier_fine_clusters": float(outliers)}
