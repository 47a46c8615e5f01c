"""Sizes and options of the benchmark run; collects the report and prints it at the end.

``pytest benchmarks/`` runs the quick sweep (2-3 minutes on 2 CPU cores, benchmarks/README.md);
``pytest benchmarks/ --full`` runs the full one, ``--smoke`` every benchmark once at a
tiny size (what CI runs: it checks that each still runs, its figures mean nothing). The
default test run never collects this folder (``testpaths`` in pyproject.toml).
"""

from __future__ import annotations

import dataclasses
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
# `benchmarks` is a folder of the repository, not of the installed package.
sys.path.insert(0, str(REPO_ROOT))

import torch  # noqa: E402

from benchmarks.datasets import CIFAR10_LT, DATA_ENV, find_data_file  # noqa: E402
from benchmarks.report import Report  # noqa: E402
from tase_loss._faiss import import_faiss  # noqa: E402


@dataclass(frozen=True)
class Sweep:
    """What one run measures."""

    name: str
    batch_sizes: tuple[int, ...]  # B, samples per view
    dims: tuple[int, ...]  # D
    memory_modes: tuple[str, ...]
    rounds: int  # timed rounds of each interleaved benchmark
    kmeans_sizes: tuple[int, ...]  # N of the synthetic (N, 128) clustering sets
    kmeans_clusters: int
    kmeans_rounds: int
    quality_seeds: int  # initializations per labeled clustering set
    fused_rows: int  # M of test_bench_fused.py's timing (needs the built extension)
    fused_memory_rows: tuple[int, ...]  # M of its memory probes; the scaling is asserted at >= 8192


SMOKE = Sweep(
    name="smoke",
    batch_sizes=(32,),
    dims=(16,),
    memory_modes=("forward+backward",),
    rounds=1,
    kmeans_sizes=(2_000,),
    kmeans_clusters=20,
    kmeans_rounds=1,
    quality_seeds=1,
    fused_rows=256,
    fused_memory_rows=(512,),
)
# B = 128, not 256: pytorch-metric-learning's NT-Xent costs ~(2B)^3 (2.5 s a call at B = 256,
# over half of the old quick sweep's time); at B = 1024 it needs more than the memory cap.
QUICK = Sweep(
    name="quick",
    batch_sizes=(128, 1024),
    dims=(128,),
    memory_modes=("forward+backward",),
    rounds=5,
    kmeans_sizes=(10_000, 50_000),
    kmeans_clusters=100,
    kmeans_rounds=3,
    quality_seeds=3,
    fused_rows=2048,
    fused_memory_rows=(2048, 8192),
)
FULL = Sweep(
    name="full",
    batch_sizes=(256, 512, 1024, 2048, 4096, 8192),
    dims=(128, 256),
    memory_modes=("forward", "forward+backward"),
    rounds=11,
    kmeans_sizes=(10_000, 50_000, 200_000),
    kmeans_clusters=100,
    kmeans_rounds=5,
    quality_seeds=5,
    fused_rows=8192,
    fused_memory_rows=(4096, 16384),
)


@dataclass(frozen=True)
class BenchConfig:
    sweep: Sweep
    device: str
    memory_cap_gib: float
    report_path: Path
    cifar_lt_path: Optional[Path]

    def synchronize(self) -> None:
        if self.device.startswith("cuda"):
            torch.cuda.synchronize()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("tase-loss benchmarks")
    group.addoption("--quick", action="store_true", help="small sweep (the default)")
    group.addoption(
        "--full", action="store_true", help="full sweep: B = 256..8192, N up to 200k (wins over --quick)"
    )
    group.addoption(
        "--smoke", action="store_true", help="every benchmark once at a tiny size (CI; wins over --quick)"
    )
    group.addoption(
        "--bench-device",
        default="cuda" if torch.cuda.is_available() else "cpu",
        help="device of the loss benchmarks (default: cuda when available, else cpu)",
    )
    group.addoption(
        "--bench-memory-cap-gib",
        type=float,
        default=6.0,
        help="address-space cap of each memory probe beyond its imports; more is recorded as oom",
    )
    group.addoption(
        "--bench-rounds",
        type=int,
        default=None,
        help="timed rounds of each interleaved loss benchmark (default: 5 quick, 11 full)",
    )
    group.addoption(
        "--bench-threads",
        type=int,
        default=None,
        help="threads for torch, FAISS and scikit-learn (default: their own defaults); "
        "1 is far steadier on a machine shared with other jobs",
    )
    group.addoption(
        "--bench-report",
        default=None,
        help="markdown report path (default: benchmarks/output/report-<device>-<sweep>.md, untracked; "
        "name a file under benchmarks/results/ to update a committed report)",
    )
    group.addoption(
        "--bench-cifar-lt",
        default=None,
        help=f"{CIFAR10_LT} for the labeled clustering set (default: in ${DATA_ENV}, else in "
        "../shared/data beside the repository; the set is skipped when the default is missing)",
    )


def _cifar_lt_path(config: pytest.Config) -> Optional[Path]:
    """The CIFAR-10-LT file; ``None`` when it was not named and is not in the data folder."""
    if "TASE_BENCH_CIFAR_LT" in os.environ:
        raise pytest.UsageError(
            f"TASE_BENCH_CIFAR_LT is gone: pass --bench-cifar-lt PATH, or set {DATA_ENV} to the folder "
            f"that holds {CIFAR10_LT}"
        )
    named = config.getoption("--bench-cifar-lt")
    try:
        return find_data_file(CIFAR10_LT, named, "--bench-cifar-lt")
    except FileNotFoundError as error:
        if named is not None:
            raise pytest.UsageError(str(error)) from None
        return None


def _bench_config(config: pytest.Config) -> BenchConfig:
    sweep = FULL if config.getoption("--full") else SMOKE if config.getoption("--smoke") else QUICK
    if config.getoption("--bench-rounds") is not None:
        sweep = dataclasses.replace(sweep, rounds=config.getoption("--bench-rounds"))
    device = config.getoption("--bench-device")
    # Untracked by default (.gitignore): a run never rewrites a committed report unless
    # --bench-report names one.
    report = config.getoption("--bench-report") or (
        REPO_ROOT / "benchmarks" / "output" / f"report-{device.split(':')[0]}-{sweep.name}.md"
    )
    return BenchConfig(
        sweep=sweep,
        device=device,
        memory_cap_gib=config.getoption("--bench-memory-cap-gib"),
        report_path=Path(report),
        cifar_lt_path=_cifar_lt_path(config),
    )


def _limit_threads(count: int) -> object:
    """Limit every thread pool of this process and of the memory probes it starts."""
    from threadpoolctl import threadpool_limits

    faiss = import_faiss("the benchmarks")

    for variable in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[variable] = str(count)  # inherited by the memory-probe processes
    torch.set_num_threads(count)
    faiss.omp_set_num_threads(count)
    return threadpool_limits(count)  # stays in force while referenced


def pytest_configure(config: pytest.Config) -> None:
    bench = _bench_config(config)
    settings = f"--{bench.sweep.name} --bench-device {bench.device}"
    if config.getoption("--bench-rounds") is not None:
        settings += f" --bench-rounds {bench.sweep.rounds}"
    threads = config.getoption("--bench-threads")
    if threads is not None:
        config._tase_thread_limits = _limit_threads(threads)  # type: ignore[attr-defined]
        settings += f" --bench-threads {threads}"
    config._tase_bench = bench  # type: ignore[attr-defined]
    config._tase_report = Report(settings)  # type: ignore[attr-defined]


@pytest.fixture(scope="session")
def bench_config(pytestconfig: pytest.Config) -> BenchConfig:
    return pytestconfig._tase_bench  # type: ignore[attr-defined]


@pytest.fixture(scope="session")
def bench_report(pytestconfig: pytest.Config) -> Report:
    return pytestconfig._tase_report  # type: ignore[attr-defined]


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    report: Report = config._tase_report  # type: ignore[attr-defined]
    if not report.tables:
        return
    path = config._tase_bench.report_path  # type: ignore[attr-defined]
    report.write(path)
    terminalreporter.write_sep("=", "tase-loss benchmark report")
    terminalreporter.write_line(report.markdown())
    terminalreporter.write_line(f"report written to {path}")
