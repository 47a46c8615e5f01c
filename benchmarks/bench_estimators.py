"""Seconds per re-estimate of every frequency estimator at N x 128 (targets: 50,000 in < 2 s,
1,000,000 in < 30 s on 2 cores).

The points are a planted long-tailed mixture on the sphere (10 classes, ratio 100,
moderate overlap), so the clusterings and neighbour searches do realistic work, and
its labels give each estimate's quality (Spearman with the true class frequency, share
of the log Few/Many gap recovered). ``knn-density (exact)`` searches all N (no
reference subsample) up to ``--exact-up-to``: what the subsample costs in quality and
saves in time. One estimate per (estimator, N) after one warm-up call at 5,000 (or the
smallest N if less); FAISS gets ``--threads``. Prints a markdown table and, with
``--output``, JSON.

    python benchmarks/bench_estimators.py --sizes 50000,1000000 --threads 2
    python benchmarks/bench_estimators.py --sizes 2000 --exact-up-to 2000   # a tiny check
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from tase_loss.estimators import ESTIMATORS, KNNDensityEstimator, build_estimator  # noqa: E402
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="50000,1000000")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--estimators", default=",".join(ESTIMATORS))
    parser.add_argument("--exact-up-to", type=int, default=50_000)
    parser.add_argument("--output", default=None)
    arguments = parser.parse_args()
    torch.set_num_threads(arguments.threads)
    sizes = [int(size) for size in arguments.sizes.split(",")]
    if min(sizes) < 100:
        parser.error(f"--sizes must be >= 100 each, got {arguments.sizes}")
    warm_size = min(5000, *sizes)
    candidates = [(name, build_estimator(name), max(sizes)) for name in arguments.estimators.split(",")]
    candidates.append(("knn-density (exact)", KNNDensityEstimator(reference_pairs=None), arguments.exact_up_to))
    rows = []
    for name, estimator, largest in candidates:
        warm = mixture(warm_size)[0]
        estimator.estimate(
            warm, num_threads=arguments.threads, loss=torch.rand(warm_size) if estimator.uses_loss else None
        )
        for size in (size for size in sizes if size <= largest):
            points, labels = mixture(size)
            loss = torch.rand(size, generator=torch.Generator().manual_seed(0)) if estimator.uses_loss else None
            started = time.perf_counter()
            estimate = estimator.estimate(points, num_threads=arguments.threads, loss=loss)
            seconds = time.perf_counter() - started
            quality = frequency_quality(estimate.log_frequency.numpy(), labels, group_classes(np.bincount(labels)))
            rows.append(
                {"estimator": name, "n": size, "seconds": seconds, **quality, "diagnostics": estimate.diagnostics}
            )
            print(f"{name} N={size}: {seconds:.2f} s", file=sys.stderr, flush=True)
    blas = faiss_blas()
    print(f"FAISS BLAS: {blas}\n")
    print("| estimator | N x 128 | seconds per estimate | Spearman | gap recovered |\n|---|---|---|---|---|")
    for row in rows:
        print(
            f"| {row['estimator']} | {row['n']:,} | {row['seconds']:.2f} "
            f"| {row['spearman']:+.2f} | {row['gap_recovered']:+.2f} |"
        )
    if arguments.output:
        summary = {"threads": arguments.threads, "faiss_blas": blas, "rows": rows}
        Path(arguments.output).write_text(json.dumps(summary, indent=1) + "\n")


if __name__ == "__main__":
    main()
