"""The kNN-density estimator and the density it is built on."""

from __future__ import annotations

from typing import Optional

import numpy as np
import torch
from torch import Tensor

from tase_loss._faiss import nearest_neighbors
from tase_loss._numerics import unit_rows
from tase_loss._validation import check_choice, check_embeddings, check_int, check_real
from tase_loss.estimators.base import FrequencyEstimate, FrequencyEstimator

__all__ = ["KERNELS", "KNNDensityEstimator", "intrinsic_dimension", "knn_log_density"]

KERNELS = ("kth_neighbor", "exponential")
_MIN_DISTANCE = 1e-6


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
