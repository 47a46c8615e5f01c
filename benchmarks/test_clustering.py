"""Pseudo-labeling cost and quality: FAISS k-means vs scikit-learn KMeans."""

from __future__ import annotations

import statistics

import numpy as np
import pytest
from sklearn.metrics import normalized_mutual_info_score

from benchmarks import clustering
from benchmarks.conftest import BenchConfig
from benchmarks.datasets import CIFAR10_LT, DATA_ENV, data_dir
from benchmarks.harness import time_interleaved
from benchmarks.report import Report, timing_cells


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    sweep = metafunc.config._tase_bench.sweep  # type: ignore[attr-defined]
    if "num_points" in metafunc.fixturenames:
        metafunc.parametrize("num_points", sweep.kmeans_sizes, ids=[f"N{n}" for n in sweep.kmeans_sizes])


def test_kmeans_time(bench_config: BenchConfig, bench_report: Report, num_points: int) -> None:
    """Time and inertia at equal k, initialization and iterations on (N, 128) features."""
    count = bench_config.sweep.kmeans_clusters
    data = clustering.synthetic_long_tailed(num_points)
    init = clustering.initial_centroids(data.features, count, seed=0)
    table = bench_report.table(
        f"k-means time, synthetic long-tailed (N, 128), k = {count}, {clustering.ITERATIONS} iterations, "
        "same initial centroids",
        ["method", "N", "median", "p25 - p75", f"ratio to {clustering.BASELINE} (p25-p75)",
         "iterations run", "inertia", "NMI vs true labels"],
    )
    results = {}

    def prepare(name: str):
        def fit() -> None:
            results[name] = clustering.KMEANS[name](data.features, init)

        return lambda: fit

    timings = time_interleaved(
        {name: prepare(name) for name in clustering.KMEANS},
        clustering.BASELINE,
        rounds=bench_config.sweep.kmeans_rounds,
        warmup=1,
    )
    for name, timing in timings.items():
        fit = results[name]
        table.rows.append([
            name, num_points, *timing_cells(timing), fit.iterations,
            f"{clustering.inertia(data.features, fit):.1f}",
            f"{normalized_mutual_info_score(data.labels, fit.labels):.3f}",
        ])
    table.notes[:] = [
        "Synthetic: 100 Gaussian clusters (sigma 0.7 around standard-normal centres), Zipf-like sizes "
        "with ratio 100, rows L2-normalized. Both run Euclidean Lloyd k-means on every point; "
        "scikit-learn may stop before the iteration budget once no label changes. "
        "The spherical row optimizes cosine similarity with unit-norm centroids: its "
        "Euclidean inertia is shown but is not comparable.",
    ]
    assert all(np.isfinite(clustering.inertia(data.features, fit)) for fit in results.values())


def _labeled_sets(bench_config: BenchConfig) -> list[clustering.LabeledSet]:
    sets = [clustering.digits_long_tailed()]
    if bench_config.cifar_lt_path is not None:
        sets.append(clustering.cifar10_lt_projected(bench_config.cifar_lt_path))
    return sets


def test_kmeans_quality(bench_config: BenchConfig, bench_report: Report) -> None:
    """Inertia and NMI against the true labels on labeled long-tailed sets, k = #classes."""
    table = bench_report.table(
        "k-means quality on labeled long-tailed sets (k = number of classes, same initial centroids)",
        ["data", "method", "median NMI (min-max)", "median inertia", "inertia / scikit-learn's (median)"],
    )
    table.notes[:] = [
        f"Median over {bench_config.sweep.quality_seeds} initializations (seeds 0..), each shared by "
        f"all methods; {clustering.ITERATIONS} iterations.",
    ]
    if bench_config.cifar_lt_path is None:
        table.notes.append(
            f"CIFAR-10-LT skipped: {CIFAR10_LT} not in the data folder {data_dir()} "
            f"(--bench-cifar-lt PATH or {DATA_ENV} to add it)."
        )
    for data in _labeled_sets(bench_config):
        count = int(data.labels.max()) + 1
        scores: dict[str, list[tuple[float, float]]] = {name: [] for name in clustering.KMEANS}
        for seed in range(bench_config.sweep.quality_seeds):
            init = clustering.initial_centroids(data.features, count, seed)
            for name, kmeans in clustering.KMEANS.items():
                fit = kmeans(data.features, init)
                scores[name].append(
                    (normalized_mutual_info_score(data.labels, fit.labels), clustering.inertia(data.features, fit))
                )
        baseline_inertia = [inertia for _, inertia in scores[clustering.BASELINE]]
        for name, values in scores.items():
            nmi = [value for value, _ in values]
            inertias = [value for _, value in values]
            table.rows.append([
                data.name, name,
                f"{statistics.median(nmi):.3f} ({min(nmi):.3f}-{max(nmi):.3f})",
                f"{statistics.median(inertias):.2f}",
                f"{statistics.median(a / b for a, b in zip(inertias, baseline_inertia)):.4f}",
            ])
        assert all(0.0 <= value <= 1.0 for values in scores.values() for value, _ in values)
