"""Seconds per re-estimate of every frequency estimator at N x 128 (targets: 50,000 in < 2 s,
1,000,000 in < 30 s on 2 cores).

The points are a planted long-tailed mixture on the sphere (10 classes, ratio 100,
moderate overlap), so the clusterings and neighbour searches do realistic work, and
its labels give each estimate's quality (Spearman with the true class frequency, share
of the log Few/Many gap recovered). ``knn-density (exact)`` searches all N (no
reference subsample) up to ``--exact-up-to``: what the subsample costs in quality and
saves in time. ``--repeats`` estimates per (estimator, N), after one warm-up call at
5,000 (or the smallest N if less), reported as their median (min-max: the machines are
noisy); FAISS gets ``--threads``. Prints a markdown table and, with ``--output``, JSON.

``--memory`` adds each estimate's memory (target: O(N k)): how far the peak RSS rises
during one estimate above the RSS before it, the points already in memory, measured in a
fresh process per (estimator, N) after the same warm-up (``benchmarks.memory.peak_growth_mib``).

    python benchmarks/bench_estimators.py --sizes 50000,1000000 --threads 2
    python benchmarks/bench_estimators.py --sizes 2000 --exact-up-to 2000   # a tiny check
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

import numpy as np
import torch

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from tase_loss.estimators import ESTIMATORS, FrequencyEstimator, KNNDensityEstimator, build_estimator  # noqa: E402
from tase_loss.experiments.data import group_classes, long_tailed_counts  # noqa: E402
from tase_loss.experiments.evaluation import frequency_quality  # noqa: E402


def mixture(count: int, dim: int = 128, seed: int = 0) -> tuple[torch.Tensor, np.ndarray]:
    """``count`` unit rows of a 10-class long-tailed mixture (ratio 100, noise 2.25), labels."""
    generator = np.random.default_rng(seed)
    shares = np.asarray(long_tailed_counts(10_000, 10, 100.0), dtype=np.float64)
    labels = generator.choice(10, size=count, p=shares / shares.sum())
    means = generator.standard_normal((10, dim)).astype(np.float32)
    means /= np.linalg.norm(means, axis=1, keepdims=True)
    points = means[labels] + 2.25 * generator.standard_normal((count, dim)).astype(np.float32) / np.sqrt(dim)
    return torch.nn.functional.normalize(torch.from_numpy(points), dim=1), labels


def faiss_blas() -> str:
    """FAISS's BLAS and its kernel family (a factor of 3 in speed: tase_loss._faiss.OPENBLAS_CORES)."""
    from threadpoolctl import threadpool_info

    pools = [pool for pool in threadpool_info() if pool["internal_api"] == "openblas" and "faiss" in pool["filepath"]]
    if not pools:
        return "not a bundled OpenBLAS"
    return ", ".join(f"OpenBLAS {pool['version']} {pool['architecture']}" for pool in pools) + (
        f" (OPENBLAS_CORETYPE={os.environ['OPENBLAS_CORETYPE']})" if "OPENBLAS_CORETYPE" in os.environ else ""
    )


EXACT = "knn-density (exact)"


def _estimator(name: str) -> FrequencyEstimator:
    return KNNDensityEstimator(reference_pairs=None) if name == EXACT else build_estimator(name)


def _warm(estimator: FrequencyEstimator, size: int, threads: int) -> None:
    """One estimate at ``size``: FAISS's and OpenMP's one-time set-up is not timed or counted."""
    estimator.estimate(mixture(size)[0], num_threads=threads, loss=_loss(estimator, size))


def _loss(estimator: FrequencyEstimator, size: int) -> Optional[torch.Tensor]:
    return torch.rand(size, generator=torch.Generator().manual_seed(0)) if estimator.uses_loss else None


def _memory_child(name: str, size: int, warm_size: int, threads: int) -> None:
    from benchmarks.memory import peak_growth_mib

    estimator = _estimator(name)
    _warm(estimator, warm_size, threads)
    points, _ = mixture(size)
    loss = _loss(estimator, size)
    print(json.dumps({"mib": peak_growth_mib(lambda: estimator.estimate(points, num_threads=threads, loss=loss))}))


def estimate_memory_mib(name: str, size: int, warm_size: int, threads: int) -> float:
    """Peak RSS growth of one estimate (see the module docstring), in a fresh process."""
    command = [sys.executable, str(Path(__file__).resolve()), "--memory-child", name, "--sizes", str(size)]
    command += ["--threads", str(threads), "--warm-size", str(warm_size)]
    environment = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536")
    finished = subprocess.run(command, env=environment, capture_output=True, text=True, check=True)
    return float(json.loads(finished.stdout.strip().splitlines()[-1])["mib"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="50000,1000000")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--estimators", default=",".join(ESTIMATORS))
    parser.add_argument("--exact-up-to", type=int, default=50_000)
    parser.add_argument("--repeats", type=int, default=1, help="timed estimates per (estimator, N)")
    parser.add_argument("--memory", action="store_true", help="also measure each estimate's memory")
    parser.add_argument("--output", default=None)
    parser.add_argument("--memory-child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--warm-size", type=int, default=None, help=argparse.SUPPRESS)
    arguments = parser.parse_args()
    torch.set_num_threads(arguments.threads)
    sizes = [int(size) for size in arguments.sizes.split(",")]
    if min(sizes) < 100:
        parser.error(f"--sizes must be >= 100 each, got {arguments.sizes}")
    if arguments.repeats < 1:
        parser.error(f"--repeats must be >= 1, got {arguments.repeats}")
    warm_size = min(5000, *sizes) if arguments.warm_size is None else arguments.warm_size
    if arguments.memory_child is not None:
        _memory_child(arguments.memory_child, sizes[0], warm_size, arguments.threads)
        return
    candidates = [(name, max(sizes)) for name in arguments.estimators.split(",")] + [(EXACT, arguments.exact_up_to)]
    rows = []
    for name, largest in candidates:
        estimator = _estimator(name)
        _warm(estimator, warm_size, arguments.threads)
        for size in (size for size in sizes if size <= largest):
            points, labels = mixture(size)
            loss = _loss(estimator, size)
            timings = []
            for _ in range(arguments.repeats):
                started = time.perf_counter()
                estimate = estimator.estimate(points, num_threads=arguments.threads, loss=loss)
                timings.append(time.perf_counter() - started)
            quality = frequency_quality(estimate.log_frequency.numpy(), labels, group_classes(np.bincount(labels)))
            rows.append(
                {
                    "estimator": name,
                    "n": size,
                    "seconds": float(np.median(timings)),
                    "seconds_each": timings,
                    **quality,
                    "diagnostics": estimate.diagnostics,
                }
            )
            print(f"{name} N={size}: " + ", ".join(f"{t:.2f}" for t in timings) + " s", file=sys.stderr, flush=True)
    if arguments.memory:
        for row in rows:
            row["memory_mib"] = estimate_memory_mib(row["estimator"], row["n"], warm_size, arguments.threads)
            print(f"{row['estimator']} N={row['n']}: {row['memory_mib']:.0f} MiB", file=sys.stderr, flush=True)
    blas = faiss_blas()
    print(f"FAISS BLAS: {blas}\n")
    seconds = "seconds per estimate" + (" (median, min-max)" if arguments.repeats > 1 else "")
    memory_header = " | memory MiB | bytes per sample" if arguments.memory else ""
    print(
        f"| estimator | N x 128 | {seconds} | Spearman | gap recovered{memory_header} |\n"
        + "|---" * (7 if arguments.memory else 5)
        + "|"
    )
    for row in rows:
        memory = f" | {row['memory_mib']:.0f} | {row['memory_mib'] * 2**20 / row['n']:.0f}" if arguments.memory else ""
        spread = f" ({min(row['seconds_each']):.2f}-{max(row['seconds_each']):.2f})" if arguments.repeats > 1 else ""
        print(
            f"| {row['estimator']} | {row['n']:,} | {row['seconds']:.2f}{spread} "
            f"| {row['spearman']:+.2f} | {row['gap_recovered']:+.2f}{memory} |"
        )
    if arguments.output:
        summary = {"threads": arguments.threads, "faiss_blas": blas, "rows": rows}
        Path(arguments.output).write_text(json.dumps(summary, indent=1) + "\n")


if __name__ == "__main__":
    main()
