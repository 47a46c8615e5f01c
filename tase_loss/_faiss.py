"""The one place that imports ``faiss`` (lazily): k-means, nearest neighbours, threads.

Every estimator and the OOD sampler go through these functions, so the FAISS
options (spherical k-means, training subsample, exact search against a database) are
chosen in one place.
"""

from __future__ import annotations

import contextlib
import ctypes
import math
import os
import sys
import warnings
from collections.abc import Iterator
from typing import Any, Optional

import numpy as np

OPENBLAS_CORES = {"AVX512": "SkylakeX", "AVX2": "Haswell"}
"""The OpenBLAS kernels FAISS is loaded with, by torch's CPU capability.

The OpenBLAS bundled in the faiss-cpu wheels (0.3.15) picks its kernels by CPU model and
falls back to generic SSE3 ("Prescott") kernels on models newer than itself, such as
Sapphire and Emerald Rapids, where every search and k-means GEMM then runs about three
times slower (benchmarks/README.md). ``OPENBLAS_CORETYPE`` overrides the pick; it is read
when the library loads.
"""


def import_faiss(purpose: str) -> Any:
    """Import faiss, or fail with an install hint that says what needed it.

    The first import loads FAISS's OpenBLAS with the kernels of :data:`OPENBLAS_CORES` for
    the CPU torch detected (``torch.backends.cpu.get_cpu_capability()``), unless the user set
    ``OPENBLAS_CORETYPE``: the variable is set for the import only, so no other library or
    child process sees it. Where faiss was imported before, it is left as loaded, with a
    warning (once) if that load picked the generic kernels on a CPU with better ones.
    """
    global _checked_loaded_kernels
    if "faiss" in sys.modules:
        _warn_once_if_generic()
        return sys.modules["faiss"]
    core = _cpu_core()
    chosen = core is not None and "OPENBLAS_CORETYPE" not in os.environ
    if chosen:
        os.environ["OPENBLAS_CORETYPE"] = core
    try:
        import faiss
    except ImportError as error:  # pragma: no cover - exercised only without faiss
        raise ImportError(
            f"{purpose} need(s) FAISS: install it with `pip install faiss-cpu` (or faiss-gpu on a CUDA machine)"
        ) from error
    finally:
        if chosen:
            del os.environ["OPENBLAS_CORETYPE"]
    _checked_loaded_kernels = True  # loaded here, with the kernels chosen above: nothing to check
    return faiss


_checked_loaded_kernels = False


def _cpu_core() -> Optional[str]:
    """The :data:`OPENBLAS_CORES` entry for the CPU torch detected, ``None`` where there is none."""
    import torch

    return OPENBLAS_CORES.get(torch.backends.cpu.get_cpu_capability())


def _warn_once_if_generic() -> None:
    """Warn once where faiss was loaded elsewhere with OpenBLAS's generic kernels (Linux)."""
    global _checked_loaded_kernels
    if _checked_loaded_kernels:
        return
    _checked_loaded_kernels = True
    core = _cpu_core()
    if core is None or "OPENBLAS_CORETYPE" in os.environ:
        return
    if _loaded_openblas_core() == "Prescott":
        warnings.warn(
            "faiss was imported before tase_loss loaded it, and its OpenBLAS runs the generic "
            f"'Prescott' kernels on this CPU: estimates run about 3x slower. Set OPENBLAS_CORETYPE={core} "
            "before Python starts, or let tase_loss import faiss first.",
            RuntimeWarning,
            stacklevel=3,
        )


def _loaded_openblas_core() -> Optional[str]:
    """``openblas_get_corename()`` of the OpenBLAS bundled with the loaded faiss; ``None`` where
    it cannot be found (not Linux, or FAISS linked to another BLAS)."""
    try:
        with open("/proc/self/maps", encoding="utf-8") as maps:
            paths = {line.split()[-1] for line in maps if "openblas" in line and "faiss" in line}
    except OSError:
        return None
    for path in sorted(paths):
        try:
            corename = ctypes.CDLL(path).openblas_get_corename
        except (OSError, AttributeError):
            continue
        corename.restype = ctypes.c_char_p
        return corename().decode()
    return None


@contextlib.contextmanager
def faiss_threads(num_threads: Optional[int]) -> Iterator[Any]:
    """Run the block with ``num_threads`` OpenMP threads in FAISS (``None``: as set), then restore.

    Yields the ``faiss`` module.
    """
    faiss = import_faiss("clustering and neighbour search")
    threads_before = faiss.omp_get_max_threads()
    if num_threads is not None:
        faiss.omp_set_num_threads(num_threads)
    try:
        yield faiss
    finally:
        faiss.omp_set_num_threads(threads_before)


def spherical_kmeans(
    points: np.ndarray,
    num_clusters: int,
    *,
    seed: int,
    num_iterations: int = 20,
    max_training_points: int = 100_000,
    num_threads: Optional[int] = None,
    init_centroids: Optional[np.ndarray] = None,
) -> tuple[np.ndarray, np.ndarray]:
    """FAISS spherical k-means on unit rows; every point assigned to its nearest centroid.

    Centroids are trained on at most ``k * ceil(max_training_points / k)`` points
    (FAISS caps the points per centroid and subsamples with ``seed``); smaller clusters
    than FAISS's default minimum are accepted, since tail clusters are the point.

    Args:
        points: ``(N, D)`` float32, C-contiguous, unit rows.
        num_clusters: ``k <= N``.
        seed: initialization and subsampling seed.
        num_iterations: Lloyd iterations.
        max_training_points: training subsample size (rounded up to a multiple of ``k``).
        num_threads: OpenMP threads (``None``: FAISS's setting).
        init_centroids: ``(k, D)`` float32 centroids to start from (``None``: FAISS's
            random pick of ``k`` training points).

    Returns:
        ``(assignment, centroids)``: ``(N,)`` int64 labels and ``(k, D)`` float32 centroids.
    """
    with faiss_threads(num_threads) as faiss:
        kmeans = faiss.Kmeans(
            points.shape[1],
            num_clusters,
            niter=num_iterations,
            seed=seed,
            spherical=True,
            verbose=False,
            max_points_per_centroid=max(1, math.ceil(max_training_points / num_clusters)),
            min_points_per_centroid=1,
        )
        kmeans.train(points, init_centroids=init_centroids)
        _, assignment = kmeans.index.search(points, 1)
    return assignment[:, 0].astype(np.int64), np.asarray(kmeans.centroids)


def nearest_neighbors(
    queries: np.ndarray,
    num_neighbors: int,
    *,
    database: Optional[np.ndarray] = None,
    database_index: Optional[np.ndarray] = None,
    num_threads: Optional[int] = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Each query's ``num_neighbors`` most similar database rows (exact inner product).

    One ``IndexFlatIP`` search (a BLAS GEMM per block of queries): ``N_q x N_db x D``
    work, so callers bound ``N_db`` (the kNN-density estimator searches a reference
    subsample for large ``N``).

    Args:
        queries: ``(N, D)`` float32, C-contiguous.
        num_neighbors: ``k < N_db``.
        database: ``(N_db, D)`` float32 rows searched; default ``queries`` itself.
        database_index: ``(N_db,)`` the query row each database row is (``database =
            queries[database_index]``), so that no query lists itself; default
            ``arange(N_db)``.
        num_threads: OpenMP threads.

    Returns:
        ``(similarity, index)``, both ``(N, k)``, most similar first, ``index`` into the
        queries' numbering; a query never lists itself (duplicates of it may appear).
    """
    database = queries if database is None else database
    database_index = np.arange(database.shape[0]) if database_index is None else database_index
    with faiss_threads(num_threads) as faiss:
        index = faiss.IndexFlatIP(database.shape[1])
        index.add(database)
        similarity, found = index.search(queries, num_neighbors + 1)
    return _drop_self(similarity, database_index[found], num_neighbors)


def _drop_self(similarity: np.ndarray, found: np.ndarray, num_neighbors: int) -> tuple[np.ndarray, np.ndarray]:
    """Remove each row's own index (wherever ties put it) and keep ``num_neighbors``."""
    rows = np.arange(found.shape[0])[:, None]
    order = np.argsort((found == rows).astype(np.int8), axis=1, kind="stable")
    found = np.take_along_axis(found, order, axis=1)[:, :num_neighbors]
    similarity = np.take_along_axis(similarity, order, axis=1)[:, :num_neighbors]
    return similarity, found
