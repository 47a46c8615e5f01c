"""FAISS k-means vs scikit-learn KMeans on equal terms, and the data sets they run on.

Equal terms: the same ``k``, the same initial centroids (``k`` data points drawn with
one seed), the same iteration budget, Euclidean (Lloyd) k-means in both, every point
used (FAISS's default subsamples to 256 points per centroid; here it does not, as in
:class:`tase_loss.PseudoLabeler`). scikit-learn stops early once no label changes;
FAISS always runs its ``niter``; the report lists the iterations each ran.
Inertia is computed the same way for both, in float64, from their final centroids.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from tase_loss._faiss import import_faiss

ITERATIONS = 20


@dataclass(frozen=True)
class LabeledSet:
    name: str
    features: np.ndarray  # (N, D) float32, rows L2-normalized
    labels: np.ndarray  # (N,) int64


@dataclass(frozen=True)
class Clustering:
    labels: np.ndarray
    centroids: np.ndarray
    iterations: int


def _unit_rows(features: np.ndarray) -> np.ndarray:
    features = features.astype(np.float32)
    return np.ascontiguousarray(features / np.linalg.norm(features, axis=1, keepdims=True))


def synthetic_long_tailed(num_points: int, dim: int = 128, num_classes: int = 100, seed: int = 0) -> LabeledSet:
    """Gaussian clusters with Zipf-like sizes (ratio 100 between largest and smallest)."""
    rng = np.random.default_rng(seed)
    shares = 0.01 ** (np.arange(num_classes) / (num_classes - 1))
    labels = rng.choice(num_classes, size=num_points, p=shares / shares.sum())
    centers = rng.standard_normal((num_classes, dim)).astype(np.float32)
    features = centers[labels] + 0.7 * rng.standard_normal((num_points, dim)).astype(np.float32)
    return LabeledSet(f"synthetic {num_points // 1000}k x {dim}", _unit_rows(features), labels)


def digits_long_tailed(ratio: float = 10.0) -> LabeledSet:
    """scikit-learn's digits (8x8 images, 64 features) cut to a long tail.

    Class ``i`` keeps its first ``floor(n_max * ratio ** (-i / 9))`` images, ``n_max``
    the smallest class size; features are standardized pixels, rows L2-normalized.
    """
    from sklearn.datasets import load_digits

    digits = load_digits()
    largest = np.bincount(digits.target).min()
    keep = np.concatenate([
        np.flatnonzero(digits.target == label)[: int(largest * ratio ** (-label / 9))]
        for label in range(10)
    ])
    pixels = digits.data[keep]
    pixels = (pixels - pixels.mean(0)) / (pixels.std(0) + 1e-6)
    return LabeledSet(f"digits-LT (ratio {ratio:g}, {keep.size} x 64)", _unit_rows(pixels), digits.target[keep])


def cifar10_lt_projected(path: Path, dim: int = 128, seed: int = 0) -> LabeledSet:
    """CIFAR-10-LT (ratio 100) training pixels through a fixed Gaussian projection.

    The 3072 raw pixel values of each image, centred, times one ``(3072, dim)``
    standard-normal matrix drawn with ``seed``; rows L2-normalized. Pixels are weak
    features, so the NMI is low for every method; it is the comparison that matters.
    """
    with np.load(path) as data:
        pixels = data["x"].reshape(len(data["x"]), -1).astype(np.float32) / 255.0
        labels = data["y"].astype(np.int64)
    projection = np.random.default_rng(seed).standard_normal((pixels.shape[1], dim)).astype(np.float32)
    features = (pixels - pixels.mean(0)) @ projection
    name = f"CIFAR-10-LT pixels -> {dim}-d random projection ({len(labels)} x {dim})"
    return LabeledSet(name, _unit_rows(features), labels)


def initial_centroids(features: np.ndarray, count: int, seed: int) -> np.ndarray:
    """``count`` distinct data points, the shared initialization."""
    chosen = np.random.default_rng(seed).choice(features.shape[0], size=count, replace=False)
    return np.ascontiguousarray(features[chosen])


def faiss_kmeans(features: np.ndarray, init: np.ndarray, spherical: bool = False) -> Clustering:
    faiss = import_faiss("the clustering benchmark")

    count = init.shape[0]
    kmeans = faiss.Kmeans(
        features.shape[1], count, niter=ITERATIONS, spherical=spherical, verbose=False,
        max_points_per_centroid=features.shape[0] // count + 1, min_points_per_centroid=1,
    )
    kmeans.train(features, init_centroids=init)
    _, assignment = kmeans.index.search(features, 1)
    return Clustering(assignment[:, 0].astype(np.int64), kmeans.centroids.copy(), ITERATIONS)


def sklearn_kmeans(features: np.ndarray, init: np.ndarray) -> Clustering:
    from sklearn.cluster import KMeans

    kmeans = KMeans(
        n_clusters=init.shape[0], init=init, n_init=1, max_iter=ITERATIONS, tol=0.0, algorithm="lloyd"
    ).fit(features)
    return Clustering(kmeans.labels_.astype(np.int64), kmeans.cluster_centers_, int(kmeans.n_iter_))


KMEANS: dict[str, Callable[[np.ndarray, np.ndarray], Clustering]] = {
    "scikit-learn KMeans": sklearn_kmeans,
    "faiss Kmeans": faiss_kmeans,
    "faiss Kmeans spherical (PseudoLabeler's setting)": lambda x, init: faiss_kmeans(x, init, spherical=True),
}
BASELINE = "scikit-learn KMeans"


def inertia(features: np.ndarray, clustering: Clustering) -> float:
    """Sum of squared distances of the points to their assigned centroids, float64."""
    difference = features.astype(np.float64) - clustering.centroids.astype(np.float64)[clustering.labels]
    return float(np.einsum("ij,ij->", difference, difference))
