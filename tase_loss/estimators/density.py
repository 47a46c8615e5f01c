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

__all__ = ["KERNELS", "KNNDensityEstimator", "intrinsic_dimension", "knn_log_density", "reference_size"]

KERNELS = ("kth_neighbor", "exponential")
_MIN_DISTANCE = 1e-6
"""Distances up to this are duplicates: no log ratio, no finite density."""


def intrinsic_dimension(distance: np.ndarray) -> float:
    """Levina-Bickel maximum-likelihood intrinsic dimension from sorted kNN distances.

    The inverse estimates are averaged over points (MacKay and Ghahramani's correction).
    Duplicates (distances up to ``1e-6``) are left out: of a point's ratios, and points
    whose ``k``-th distance is one are left out altogether (1 if no point is left).

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
    if (distance > _MIN_DISTANCE).all():
        log_ratio = np.log(distance[:, -1:] / distance[:, :-1]).mean(axis=1)
    else:
        distance = distance[distance[:, -1] > _MIN_DISTANCE]
        counted = distance[:, :-1] > _MIN_DISTANCE
        ratios = np.log(distance[:, -1:] / np.where(counted, distance[:, :-1], distance[:, -1:]))
        measured = counted.any(axis=1)
        log_ratio = ratios.sum(axis=1)[measured] / counted.sum(axis=1)[measured]
        if log_ratio.size == 0:
            return 1.0
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
    log_density, *_ = _knn_log_density(
        np.ascontiguousarray(unit, dtype=np.float32), k, kernel, bandwidth, dimension, 0, num_threads, precise=unit
    )
    return torch.from_numpy(log_density)


REFERENCE_PAIRS = 400_000_000
"""Default query-reference pairs a neighbour search may cost: up to 20,000 samples search
each other exactly; above, the samples search a random reference subsample."""

MIN_REFERENCE = 4096
_BLOCK = 8192  # rows per pass of _exact_copies: a few (8192, k) float64 temporaries
_CHUNK = 128  # rows per gather: 128 x k x D float64 stays in cache (1024 was 1.5x slower at 1M)


def reference_size(count: int, reference_pairs: Optional[int] = REFERENCE_PAIRS) -> int:
    """Rows searched as neighbours: all ``count`` while ``count^2 <= reference_pairs`` (or
    ``reference_pairs`` is ``None``), else ``max(MIN_REFERENCE, reference_pairs // count)``.

    Example:
        >>> reference_size(12_406), reference_size(50_000), reference_size(1_000_000)
        (12406, 8000, 4096)
        >>> reference_size(50_000, None)
        50000
    """
    if reference_pairs is None or count * count <= reference_pairs:
        return count
    return min(count, max(MIN_REFERENCE, reference_pairs // count))


def _neighbors(
    points: np.ndarray, searched: int, reference_pairs: Optional[int], seed: int, num_threads: Optional[int]
) -> tuple[np.ndarray, np.ndarray]:
    """``(found, is_reference)``: each row's ``searched`` nearest reference rows (global index)."""
    count = points.shape[0]
    size = reference_size(count, reference_pairs)
    if searched >= size:
        raise ValueError(f"k={searched} neighbours need more than {searched} points, got {size}")
    is_reference = np.ones(count, dtype=bool)
    if size == count:
        _, found = nearest_neighbors(points, searched, num_threads=num_threads)
        return found, is_reference
    reference = np.sort(np.random.default_rng(seed).choice(count, size, replace=False))
    is_reference[:] = False
    is_reference[reference] = True
    _, found = nearest_neighbors(
        points,
        searched,
        database=np.ascontiguousarray(points[reference]),
        database_index=reference,
        num_threads=num_threads,
    )
    return found, is_reference


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
    reference_pairs: Optional[int] = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, float]:
    """``(log_density, neighbors, similarity, is_reference, dimension)``.

    ``neighbors`` and ``similarity`` are ``(n, max(k, graph_neighbors))``; the search is
    exact unless ``reference_pairs`` bounds it (:func:`reference_size`). ``points``
    (float32) are searched; the neighbours' similarities are recomputed in float64 from
    ``precise`` (the same rows at full precision, default ``points``), in chunks of rows
    so that memory stays ``O(chunk k D)``.
    """
    found, is_reference = _neighbors(points, max(k, graph_neighbors), reference_pairs, seed, num_threads)
    unit = points if precise is None else precise
    # FAISS's float32 inner products of near duplicates can exceed 1: recompute in float64
    # (also what makes s_ij == s_ji exactly, which the smoothing graph relies on).
    similarity = _similarities(unit, found)
    copies = _exact_copies(unit, found[:, :k], similarity[:, :k]) if kernel == "kth_neighbor" else None
    log_density, dimension = _density_of(similarity[:, :k], kernel, bandwidth, dimension, copies)
    return log_density, found, similarity, is_reference, dimension


def _similarities(unit: np.ndarray, found: np.ndarray) -> np.ndarray:
    """``(n, k)`` float64 ``s_ij = <u_i, u_found[i, j]>``, ``_CHUNK`` rows at a time.

    The listed rows (the reference, when the search used one) are converted to float64
    once, into a table small enough to stay in cache while it is gathered. Every entry is
    one float64 dot product of two rows reduced in the same order, so ``s_ij == s_ji`` to
    the bit.
    """
    rows = torch.from_numpy(unit)
    listed = np.zeros(unit.shape[0], dtype=bool)
    listed[found.ravel()] = True
    table = rows[torch.from_numpy(listed)].to(torch.float64)
    index = torch.from_numpy(np.cumsum(listed) - 1)[torch.from_numpy(found)]
    count, k = found.shape
    similarity = torch.empty(count, k, dtype=torch.float64)
    for start in range(0, count, _CHUNK):
        chunk = index[start : start + _CHUNK]
        query = rows[start : start + _CHUNK].to(torch.float64).unsqueeze(1)
        gathered = table.index_select(0, chunk.reshape(-1)).view(*chunk.shape, -1)
        torch.sum(gathered * query, dim=2, out=similarity[start : start + _CHUNK])
    return similarity.numpy()


def _exact_copies(unit: np.ndarray, found: np.ndarray, similarity: np.ndarray) -> np.ndarray:
    """``(n, k)`` whether each listed neighbour is a copy of its sample (up to ``1e-6``).

    From ``|u_i|^2 + |u_j|^2 - 2 s_ij`` in float64, which is 0 up to rounding for a copy,
    not from ``2 - 2 s_ij``: rows stored in float16 are up to 1e-2 off norm 1, so a copy's
    ``sqrt(2 - 2 s)`` can exceed the distance between two distinct samples.
    """
    squared = np.einsum("ij,ij->i", unit, unit, dtype=np.float64)  # buffered: no float64 copy of the rows
    copies = np.empty(found.shape, dtype=bool)
    for start in range(0, unit.shape[0], _BLOCK):
        part = slice(start, start + _BLOCK)
        copies[part] = squared[part, None] + squared[found[part]] - 2.0 * similarity[part] <= _MIN_DISTANCE**2
    return copies


def _density_of(
    similarity: np.ndarray,
    kernel: str,
    bandwidth: float,
    dimension: Optional[float],
    copies: Optional[np.ndarray] = None,
) -> tuple[np.ndarray, float]:
    """Log density from each row's ``(n, k)`` neighbour similarities, and the dimension used.

    ``copies`` (``(n, k)`` bool) marks neighbours that duplicate their sample; their
    distance is 0 whatever ``2 - 2 s`` says.
    """
    if kernel == "exponential":
        top = similarity.max(axis=1, keepdims=True)
        log_density = (top[:, 0] / bandwidth) + np.log(np.mean(np.exp((similarity - top) / bandwidth), axis=1))
        return log_density, float("nan")
    distance = np.sqrt(np.clip(2.0 - 2.0 * similarity, 0.0, None))
    if copies is not None and copies.any():
        distance[copies] = 0.0
    distance = np.sort(distance, axis=1)
    if dimension is None:
        dimension = intrinsic_dimension(distance) if similarity.shape[1] >= 2 else 1.0
    # A sample with k duplicates has r_k = 0 and an unbounded density, which would push
    # every other sample down once the estimate is shifted to max 0: it gets the densest
    # other sample's r_k instead.
    radius = distance[:, -1]
    regular = radius > _MIN_DISTANCE
    floor = radius[regular].min() if regular.any() else _MIN_DISTANCE
    return -dimension * np.log(np.maximum(radius, floor)), float(dimension)


class KNNDensityEstimator(FrequencyEstimator):
    """``f_i`` from the kNN density, calibrated by the intrinsic dimension and smoothed.

    1. ``log p_i = -d log r_k(i)``: the k-th-neighbour density estimate, with ``d`` the
       data's intrinsic dimension (Levina-Bickel). With ``d`` in place, ``log p``
       differences are nats of density: for classes of alike shapes, a class ``r``
       times as frequent is ``log r`` denser, so the scale means frequency, not only
       rank. (``kernel="exponential"`` uses a vMF kernel of fixed bandwidth instead:
       the weights of the rwSAM paper's recipe.) Duplicates: a sample whose ``k``
       nearest neighbours are all copies of it gets the smallest other ``r_k``, and
       copies are left out of ``d``, so ``k`` copies of one image do not push every
       other sample down.
    2. Smoothing: ``smoothing_rounds`` times, ``log p_i <- (log p_i + mean_j log p_j) / 2``
       over ``i``'s mutual neighbours among ``graph_neighbors`` (``j`` lists ``i`` and
       ``i`` lists ``j``). A single density estimate varies a lot within a class (a
       sample at a class's edge is sparse); mutual-kNN edges rarely cross classes, so
       the averaging removes within-class noise and keeps the between-class gap.
    3. ``log f_i = log p_i - max_j log p_j``.

    Exact neighbour search (FAISS ``IndexFlatIP``); above ``sqrt(reference_pairs)``
    samples (20,000 by default) every sample searches a seeded random reference subsample
    (:func:`reference_size`: 8,000 at 50,000, 4,096 at a million), so an estimate costs
    ``O(N R D)``, not ``O(N^2 D)``. The density is then relative to the reference (the
    same up to a constant), and samples outside it are smoothed over the reference
    samples they list. The subsample is not free: on planted mixtures of 24,814 points a
    20 % reference recovers about 0.1 less of the log Few/Many gap at moderate overlap
    (and ranks slightly better); docs/results.md has the figures.

    Args:
        num_neighbors: ``k`` of the density.
        graph_neighbors: neighbours listed per sample for the mutual-kNN graph.
        smoothing_rounds: averaging rounds (``0``: the raw density).
        kernel: ``"kth_neighbor"`` or ``"exponential"``.
        bandwidth: ``h`` of the exponential kernel.
        dimension: ``d``; ``None`` estimates it from the data.
        reference_pairs: bound on query-reference pairs of the neighbour search; ``None``
            searches exactly at any size.

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
        reference_pairs: Optional[int] = REFERENCE_PAIRS,
    ) -> None:
        self.num_neighbors = check_int("num_neighbors", num_neighbors, minimum=1)
        self.graph_neighbors = check_int("graph_neighbors", graph_neighbors, minimum=1)
        self.smoothing_rounds = check_int("smoothing_rounds", smoothing_rounds, minimum=0)
        self.kernel = check_choice("kernel", kernel, KERNELS)
        self.bandwidth = check_real("bandwidth", bandwidth, 0.0, exclusive_minimum=True)
        self.dimension = None if dimension is None else check_real("dimension", dimension, 0.0, exclusive_minimum=True)
        self.reference_pairs = (
            None if reference_pairs is None else check_int("reference_pairs", reference_pairs, minimum=1)
        )
        searched = max(num_neighbors, graph_neighbors if smoothing_rounds else 0)
        self.minimum_samples = searched + 1

    def _estimate(self, points, seed, num_threads, loss):  # type: ignore[no-untyped-def]
        graph = self.graph_neighbors if self.smoothing_rounds else 0
        log_density, found, similarity, is_reference, dimension = _knn_log_density(
            points,
            self.num_neighbors,
            self.kernel,
            self.bandwidth,
            self.dimension,
            graph,
            num_threads,
            seed,
            reference_pairs=self.reference_pairs,
        )
        diagnostics = {"intrinsic_dimension": dimension, "reference_size": float(is_reference.sum())}
        if self.smoothing_rounds:
            neighbors = found[:, :graph]
            edges = _mutual_edges(neighbors, similarity[:, :graph])
            degree = edges.sum(axis=1)
            for _ in range(self.smoothing_rounds):
                neighbor_mean = np.where(
                    degree > 0, (log_density[neighbors] * edges).sum(axis=1) / np.maximum(degree, 1), log_density
                )
                log_density = 0.5 * (log_density + neighbor_mean)
            diagnostics["smoothing_neighbors_mean"] = float(degree.mean())
        log_frequency = log_density - log_density.max()
        diagnostics["log_frequency_span"] = float(-log_frequency.min())
        return FrequencyEstimate(torch.from_numpy(np.ascontiguousarray(log_frequency)), None, diagnostics)


def _mutual_edges(neighbors: np.ndarray, similarity: np.ndarray) -> np.ndarray:
    """``(n, k)`` bool: whether ``i`` would be among the ``k`` neighbours of its neighbour ``j``.

    ``j`` (always a reference sample) lists ``i`` exactly when ``s_ij`` is at least ``j``'s
    k-th similarity; for reference samples this is the mutual-kNN graph, and samples
    outside a reference subsample get the same test. ``similarity`` must be the float64
    ``s_ij`` (symmetric to the bit), rows of the listed neighbours of every sample.
    """
    threshold = similarity.min(axis=1)  # each sample's k-th similarity
    return similarity >= threshold[neighbors]
