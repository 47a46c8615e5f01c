"""Frequency estimators: how common is each training sample's kind? (label-free)

TASE maps a sample's estimated frequency ``f_i`` to a temperature and a weight; the
estimate is the method's central step. Every estimator here turns the stored features
(and, for one of them, per-sample losses) into per-sample log-frequencies behind one
interface, :meth:`FrequencyEstimator.estimate`, and is selected by name
(:data:`ESTIMATORS`, :func:`build_estimator`) in the library and in the runner
(``--estimator``):

- ``"cluster-size"`` (:class:`ClusterSizeEstimator`): the spec's ``f_i = n_c(i) / N`` from
  spherical k-means. Measured weakness: k-means makes clusters of similar size whatever
  the class sizes (it splits head classes and merges tail ones).
- ``"merged-clusters"`` (:class:`MergedClusterEstimator`): over-cluster (``k >> C``), then
  merge the centroids into ``C`` groups by average linkage; group sizes are summed, so a
  head class split into many small clusters is counted whole again.
- ``"knn-density"`` (:class:`KNNDensityEstimator`): the k-nearest-neighbour density,
  scaled by the data's intrinsic dimension so that differences in ``log f`` are nats of
  density (a class ``r`` times more frequent is ``log r`` denser when classes have alike
  shapes), smoothed along the mutual-kNN graph, whose edges rarely cross classes.
- ``"momentum-loss"`` (:class:`MomentumLossEstimator`): BCL's training signal (Zhou et
  al., ICML 2022): samples with a high per-sample loss are memorized late, which is the
  tail. Uses losses, not features.

The study ``studies/frequency_estimators.py`` measures them against true class
frequencies (``docs/results.md``); its table chose :data:`DEFAULT_ESTIMATOR`.

Conventions: log-frequencies are float64, ``<= 0``. Cluster estimators give
``log(n / N)``; density estimators are relative, normalized so that the densest sample
has ``f = 1``. Only differences matter to TASE's maps (they compare ``f_i`` with the
geometric mean), and those are calibrated as described for each estimator. Every
estimator is deterministic for a seed (and a thread count: FAISS reduces in parallel).
"""

from __future__ import annotations

import abc
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Optional, Union

import numpy as np
import torch
from torch import Tensor

from tase_loss._faiss import nearest_neighbors, spherical_kmeans
from tase_loss._numerics import unit_rows
from tase_loss._validation import check_choice, check_embeddings, check_int, check_real

__all__ = [
    "DEFAULT_ESTIMATOR",
    "ESTIMATORS",
    "ClusterSizeEstimator",
    "FrequencyEstimate",
    "FrequencyEstimator",
    "KNNDensityEstimator",
    "MergedClusterEstimator",
    "MomentumLossEstimator",
    "build_estimator",
    "knn_log_density",
]

KERNELS = ("kth_neighbor", "exponential")
_MIN_DISTANCE = 1e-6


@dataclass(frozen=True)
class FrequencyEstimate:
    """One estimate for the ``n`` samples an estimator was given.

    Attributes:
        log_frequency: ``(n,)`` float64, ``log f_i <= 0``.
        labels: ``(n,)`` int64 group ids, or ``None`` for an estimator without groups.
        diagnostics: scalars describing the fit (its time, sizes, scales).
    """

    log_frequency: Tensor
    labels: Optional[Tensor] = None
    diagnostics: dict[str, float] = field(default_factory=dict)


class FrequencyEstimator(abc.ABC):
    """Per-sample log-frequencies from unit-norm features (and, if it says so, losses).

    Subclasses set :attr:`name`, :attr:`uses_loss` and implement :meth:`_estimate`;
    :meth:`estimate` validates the input and times the call.
    """

    name: ClassVar[str]
    uses_loss: ClassVar[bool] = False
    """Whether :meth:`estimate` reads per-sample losses instead of features."""

    minimum_samples: int = 2

    def estimate(
        self,
        features: Tensor,
        *,
        seed: int = 0,
        num_threads: Optional[int] = None,
        loss: Optional[Tensor] = None,
    ) -> FrequencyEstimate:
        """Estimate the frequency of each of ``n`` samples.

        Args:
            features: ``(n, D)`` float32 CPU unit rows (a :class:`~tase_loss.FeatureBank`'s
                :meth:`~tase_loss.FeatureBank.rows`).
            seed: seed of every random choice (k-means initialization, subsampling).
            num_threads: OpenMP threads FAISS may use; ``None`` leaves its setting.
            loss: ``(n,)`` float per-sample losses, for estimators with :attr:`uses_loss`.

        Returns:
            A :class:`FrequencyEstimate` whose ``diagnostics`` include ``seconds``.

        Raises:
            ValueError: too few samples for this estimator, or missing losses.
        """
        if not isinstance(features, Tensor) or features.dim() != 2:
            raise ValueError(f"features must be an (n, D) tensor, got {type(features).__name__}")
        count = features.shape[0]
        if count < self.minimum_samples:
            raise ValueError(f"the {self.name} estimator needs at least {self.minimum_samples} samples, got {count}")
        if self.uses_loss and (loss is None or tuple(loss.shape) != (count,)):
            raise ValueError(f"the {self.name} estimator needs a ({count},) tensor of per-sample losses")
        started = time.perf_counter()
        points = np.ascontiguousarray(features.detach().to("cpu", torch.float32).numpy())
        estimate = self._estimate(points, seed, num_threads, loss)
        estimate.diagnostics["seconds"] = time.perf_counter() - started
        return estimate

    @abc.abstractmethod
    def _estimate(
        self, points: np.ndarray, seed: int, num_threads: Optional[int], loss: Optional[Tensor]
    ) -> FrequencyEstimate:
        """The estimate for validated ``(n, D)`` float32 points."""

    def __repr__(self) -> str:
        options = ", ".join(f"{key}={value!r}" for key, value in vars(self).items() if key != "minimum_samples")
        return f"{type(self).__name__}({options})"


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


class ClusterSizeEstimator(FrequencyEstimator):
    """``f_i = n_c(i) / N`` from FAISS spherical k-means (the spec's estimator).

    Args:
        num_clusters: ``k``, or a sequence of ``k`` values: an ensemble whose estimate is
            the geometric mean over members (member ``j`` is seeded ``seed + j``).
        num_iterations: k-means iterations.
        max_training_points: centroids are trained on at most this many points; every
            point is assigned.

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
        self.num_clusters = _cluster_counts(num_clusters)
        self.num_iterations = check_int("num_iterations", num_iterations, minimum=1)
        self.max_training_points = check_int("max_training_points", max_training_points, minimum=1)
        self.minimum_samples = max(self.num_clusters)

    def _estimate(self, points, seed, num_threads, loss):  # type: ignore[no-untyped-def]
        members = []
        for member, count in enumerate(self.num_clusters):
            labels, _ = spherical_kmeans(
                points,
                count,
                seed=seed + member,
                num_iterations=self.num_iterations,
                max_training_points=self.max_training_points,
                num_threads=num_threads,
            )
            members.append((_group_log_frequency(labels), labels))
        sizes = np.bincount(members[0][1])
        return _ensemble(
            members, {"num_groups": float((sizes > 0).sum()), "largest_share": float(sizes.max() / points.shape[0])}
        )


class MergedClusterEstimator(FrequencyEstimator):
    """Over-cluster with k-means, merge centroids into ``C`` groups; ``f_i`` = group share.

    k-means with ``k = C`` on long-tailed data makes clusters of similar size. With
    ``k = over_clustering x C`` every class gets clusters of its own (a head class many,
    a tail class at least one), and average linkage on the unit centroids (cosine
    distance, each centroid one item) joins clusters of one class before clusters of
    different classes, so the group sizes follow the class sizes when the classes are
    separated. Groups are cut at ``C`` with scipy's ``fcluster(criterion="maxclust")``.

    Args:
        num_clusters: ``C``, the number of groups (or a sequence: an ensemble).
        over_clustering: fine clusters per group; ``k = min(over_clustering * C, n // 2)``.
        num_iterations: k-means iterations.
        max_training_points: training subsample of the fine k-means.

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
    ) -> None:
        self.num_clusters = _cluster_counts(num_clusters)
        self.over_clustering = check_int("over_clustering", over_clustering, minimum=1)
        self.num_iterations = check_int("num_iterations", num_iterations, minimum=1)
        self.max_training_points = check_int("max_training_points", max_training_points, minimum=1)
        self.minimum_samples = 2 * max(self.num_clusters)

    def _estimate(self, points, seed, num_threads, loss):  # type: ignore[no-untyped-def]
        from scipy.cluster.hierarchy import fcluster, linkage

        members = []
        fine_counts = []
        for member, groups in enumerate(self.num_clusters):
            fine = max(groups, min(self.over_clustering * groups, points.shape[0] // 2))
            assignment, centroids = spherical_kmeans(
                points,
                fine,
                seed=seed + member,
                num_iterations=self.num_iterations,
                max_training_points=self.max_training_points,
                num_threads=num_threads,
            )
            used = np.flatnonzero(np.bincount(assignment, minlength=fine))
            group_of = np.zeros(fine, dtype=np.int64)
            if used.size > groups:
                unit = centroids[used] / np.linalg.norm(centroids[used], axis=1, keepdims=True)
                tree = linkage(unit.astype(np.float64), method="average", metric="cosine")
                group_of[used] = fcluster(tree, groups, criterion="maxclust") - 1
            else:
                group_of[used] = np.arange(used.size)
            labels = group_of[assignment]
            members.append((_group_log_frequency(labels), labels))
            fine_counts.append(float(used.size))
        sizes = np.bincount(members[0][1])
        return _ensemble(
            members,
            {
                "num_fine_clusters": fine_counts[0],
                "num_groups": float((sizes > 0).sum()),
                "largest_share": float(sizes.max() / points.shape[0]),
            },
        )


def intrinsic_dimension(distance: np.ndarray) -> float:
    """Levina-Bickel maximum-likelihood intrinsic dimension from sorted kNN distances.

    The inverse estimates are averaged over points (MacKay and Ghahramani's correction).

    Args:
        distance: ``(n, k)`` distances to the ``k >= 2`` nearest neighbours, ascending.

    Example:
        >>> rng = np.random.default_rng(0)
        >>> points = rng.standard_normal((2000, 3))
        >>> import torch
        >>> _, index = torch.cdist(torch.tensor(points), torch.tensor(points)).topk(11, largest=False)
        >>> d = np.linalg.norm(points[index[:, 1:].numpy()] - points[:, None], axis=2)
        >>> 2.5 < intrinsic_dimension(d) < 3.5
        True
    """
    distance = np.maximum(distance, _MIN_DISTANCE)
    log_ratio = np.log(distance[:, -1:] / distance[:, :-1]).mean(axis=1)
    return float(1.0 / max(log_ratio.mean(), 1e-12))


def knn_log_density(
    features: Tensor,
    k: int = 10,
    kernel: str = "kth_neighbor",
    bandwidth: float = 0.1,
    dimension: Optional[float] = None,
    num_threads: Optional[int] = None,
) -> Tensor:
    """Log kNN density of each row among the other rows, up to an additive constant.

    Args:
        features: ``(N, D)`` features; L2-normalized inside.
        k: neighbours per point, ``1 <= k < N`` (``k >= 2`` to estimate the dimension).
        kernel: ``"kth_neighbor"``: ``-d log r_k`` with ``r_k`` the chordal distance to the
            k-th neighbour (clamped at ``1e-6`` for duplicates) and ``d`` the intrinsic
            dimension, so that the result is a log density; ``"exponential"``: a von
            Mises-Fisher kernel over the neighbours, ``log mean_j exp(s_ij / bandwidth)``.
        bandwidth: ``h`` of the exponential kernel.
        dimension: ``d`` of the ``kth_neighbor`` kernel; ``None`` estimates it
            (:func:`intrinsic_dimension`).
        num_threads: OpenMP threads FAISS may use.

    Returns:
        ``(N,)`` float64 log densities on the CPU.

    Example:
        >>> import torch
        >>> _ = torch.manual_seed(0)
        >>> points = torch.cat([torch.randn(50, 8) * 0.1 + 1.0, torch.randn(5, 8)])
        >>> log_density = knn_log_density(points, k=4)
        >>> bool(log_density[:50].mean() > log_density[50:].mean())
        True
    """
    check_embeddings("features", features)
    unit = unit_rows(features.detach().to("cpu", torch.float64)).numpy()
    log_density, _, _ = _knn_log_density(
        np.ascontiguousarray(unit, dtype=np.float32), k, kernel, bandwidth, dimension, 0, num_threads, precise=unit
    )
    return torch.from_numpy(log_density)


def _knn_log_density(
    points: np.ndarray,
    k: int,
    kernel: str,
    bandwidth: float,
    dimension: Optional[float],
    graph_neighbors: int,
    num_threads: Optional[int],
    seed: int = 0,
    precise: Optional[np.ndarray] = None,
) -> tuple[np.ndarray, np.ndarray, float]:
    """``(log_density, neighbor_index (n, max(k, graph_neighbors)), dimension)``.

    ``points`` (float32) are searched; the neighbours' similarities are recomputed in
    float64 from ``precise`` (the same rows at full precision, default ``points``).
    """
    count = points.shape[0]
    searched = max(k, graph_neighbors)
    if searched >= count:
        raise ValueError(f"k={searched} neighbours need more than {searched} points, got {count}")
    similarity, found = nearest_neighbors(points, searched, seed=seed, num_threads=num_threads)
    if (found < 0).any():
        raise RuntimeError("the approximate neighbour search returned fewer neighbours than asked")
    # Recompute the similarities in float64: FAISS's float32 inner products of near
    # duplicates can exceed 1.
    unit = points.astype(np.float64) if precise is None else precise
    similarity = np.einsum("nd,nkd->nk", unit, unit[found[:, :k]])
    if kernel == "exponential":
        top = similarity.max(axis=1, keepdims=True)
        log_density = (top[:, 0] / bandwidth) + np.log(np.mean(np.exp((similarity - top) / bandwidth), axis=1))
        return log_density, found, float("nan")
    distance = np.sort(np.sqrt(np.clip(2.0 - 2.0 * similarity, 0.0, None)), axis=1)
    if dimension is None:
        dimension = intrinsic_dimension(distance) if k >= 2 else 1.0
    return -dimension * np.log(np.maximum(distance[:, -1], _MIN_DISTANCE)), found, float(dimension)


class KNNDensityEstimator(FrequencyEstimator):
    """``f_i`` from the kNN density, calibrated by the intrinsic dimension and smoothed.

    1. ``log p_i = -d log r_k(i)``: the k-th-neighbour density estimate, with ``d`` the
       data's intrinsic dimension (Levina-Bickel). With ``d`` in place, ``log p``
       differences are nats of density: for classes of alike shapes, a class ``r``
       times as frequent is ``log r`` denser, so the scale means frequency, not only
       rank. (``kernel="exponential"`` uses a vMF kernel of fixed bandwidth instead:
       the weights of the rwSAM paper's recipe.)
    2. Smoothing: ``smoothing_rounds`` times, ``log p_i <- (log p_i + mean_j log p_j) / 2``
       over ``i``'s mutual neighbours among ``graph_neighbors`` (``j`` lists ``i`` and
       ``i`` lists ``j``). A single density estimate varies a lot within a class (a
       sample at a class's edge is sparse); mutual-kNN edges rarely cross classes, so
       the averaging removes within-class noise and keeps the between-class gap.
    3. ``log f_i = log p_i - max_j log p_j``.

    Exact neighbour search up to 20,000 samples, an inverted file above
    (:func:`tase_loss._faiss.nearest_neighbors`).

    Args:
        num_neighbors: ``k`` of the density.
        graph_neighbors: neighbours listed per sample for the mutual-kNN graph.
        smoothing_rounds: averaging rounds (``0``: the raw density).
        kernel: ``"kth_neighbor"`` or ``"exponential"``.
        bandwidth: ``h`` of the exponential kernel.
        dimension: ``d``; ``None`` estimates it from the data.

    Example:
        >>> import torch
        >>> _ = torch.manual_seed(0)
        >>> dense = torch.randn(300, 8) * 0.2 + torch.eye(8)[0]
        >>> sparse = torch.randn(30, 8) * 0.2 + torch.eye(8)[1]
        >>> points = torch.nn.functional.normalize(torch.cat([dense, sparse]), dim=1)
        >>> log_f = KNNDensityEstimator().estimate(points).log_frequency
        >>> bool(log_f[:300].mean() > log_f[300:].mean())
        True
    """

    name = "knn-density"

    def __init__(
        self,
        num_neighbors: int = 10,
        *,
        graph_neighbors: int = 20,
        smoothing_rounds: int = 3,
        kernel: str = "kth_neighbor",
        bandwidth: float = 0.1,
        dimension: Optional[float] = None,
    ) -> None:
        self.num_neighbors = check_int("num_neighbors", num_neighbors, minimum=1)
        self.graph_neighbors = check_int("graph_neighbors", graph_neighbors, minimum=1)
        self.smoothing_rounds = check_int("smoothing_rounds", smoothing_rounds, minimum=0)
        self.kernel = check_choice("kernel", kernel, KERNELS)
        self.bandwidth = check_real("bandwidth", bandwidth, 0.0, exclusive_minimum=True)
        self.dimension = None if dimension is None else check_real("dimension", dimension, 0.0, exclusive_minimum=True)
        searched = max(num_neighbors, graph_neighbors if smoothing_rounds else 0)
        self.minimum_samples = searched + 1

    def _estimate(self, points, seed, num_threads, loss):  # type: ignore[no-untyped-def]
        graph = self.graph_neighbors if self.smoothing_rounds else 0
        log_density, found, dimension = _knn_log_density(
            points, self.num_neighbors, self.kernel, self.bandwidth, self.dimension, graph, num_threads, seed
        )
        diagnostics = {"intrinsic_dimension": dimension}
        if self.smoothing_rounds:
            neighbors = found[:, :graph]
            mutual = _mutual_edges(neighbors)
            degree = mutual.sum(axis=1)
            for _ in range(self.smoothing_rounds):
                neighbor_mean = np.where(
                    degree > 0, (log_density[neighbors] * mutual).sum(axis=1) / np.maximum(degree, 1), log_density
                )
                log_density = 0.5 * (log_density + neighbor_mean)
            diagnostics["mutual_neighbors_mean"] = float(degree.mean())
        log_frequency = log_density - log_density.max()
        diagnostics["log_frequency_span"] = float(-log_frequency.min())
        return FrequencyEstimate(torch.from_numpy(np.ascontiguousarray(log_frequency)), None, diagnostics)


def _mutual_edges(neighbors: np.ndarray) -> np.ndarray:
    """``(n, k)`` bool: whether ``i`` is also among the neighbours of its neighbour ``j``."""
    count = np.int64(neighbors.shape[0])
    rows = np.repeat(np.arange(count, dtype=np.int64), neighbors.shape[1])
    columns = neighbors.reshape(-1).astype(np.int64)
    # Edge (i, j) is mutual exactly when the reversed key j * n + i is an edge key too.
    forward = rows * count + columns
    mutual = np.isin(forward, columns * count + rows)
    return mutual.reshape(neighbors.shape)


class MomentumLossEstimator(FrequencyEstimator):
    """BCL's memorization signal: a high per-sample loss means a rarely seen (tail) sample.

    ``log f_i = -scale * z_i - max``, with ``z`` the standardized per-sample loss of the
    latest epoch. Smoothed across epochs by the :class:`~tase_loss.PseudoLabeler`'s
    moving average (its ``momentum``), this is BCL's momentum loss. The scale is a
    convention (one standard deviation of loss = ``scale`` nats of frequency): a
    training signal carries no unit of frequency. Features are not read.

    Args:
        scale: nats of log-frequency per standard deviation of the loss.

    Example:
        >>> import torch
        >>> loss = torch.tensor([1.0, 2.0, 3.0])
        >>> estimate = MomentumLossEstimator().estimate(torch.zeros(3, 2), loss=loss)
        >>> estimate.log_frequency.argmax().item()    # the smallest loss: the most frequent
        0
    """

    name = "momentum-loss"
    uses_loss = True

    def __init__(self, scale: float = 1.0) -> None:
        self.scale = check_real("scale", scale, 0.0, exclusive_minimum=True)

    def _estimate(self, points, seed, num_threads, loss):  # type: ignore[no-untyped-def]
        values = loss.detach().to("cpu", torch.float64)
        if not bool(torch.isfinite(values).all()):
            raise ValueError("the per-sample losses contain NaN or Inf values")
        spread = float(values.std()) if values.numel() > 1 else 0.0
        z = (values - values.mean()) / spread if spread > 0 else torch.zeros_like(values)
        log_frequency = -self.scale * z
        return FrequencyEstimate(
            log_frequency - log_frequency.max(), None, {"loss_mean": float(values.mean()), "loss_std": spread}
        )


ESTIMATORS: dict[str, type[FrequencyEstimator]] = {
    estimator.name: estimator
    for estimator in (ClusterSizeEstimator, MergedClusterEstimator, KNNDensityEstimator, MomentumLossEstimator)
}
"""Estimator name -> class."""

DEFAULT_ESTIMATOR = "knn-density"
"""The estimator ``studies/frequency_estimators.py`` chose (docs/results.md)."""


def build_estimator(estimator: Union[str, FrequencyEstimator, None] = None, **options: Any) -> FrequencyEstimator:
    """An estimator from its name (with options), or the given instance unchanged.

    Example:
        >>> build_estimator("cluster-size", num_clusters=5).num_clusters
        (5,)
        >>> type(build_estimator()).__name__
        'KNNDensityEstimator'
    """
    if isinstance(estimator, FrequencyEstimator):
        if options:
            raise ValueError(f"options {sorted(options)} apply to an estimator name, not an instance")
        return estimator
    name = DEFAULT_ESTIMATOR if estimator is None else estimator
    check_choice("estimator", name, tuple(ESTIMATORS))
    return ESTIMATORS[name](**options)
