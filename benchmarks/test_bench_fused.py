"""pytest entry of bench_fused.py: prints the timing ratios, checks the memory scaling.

Times are printed, never asserted (a shared machine makes timed assertions flaky);
peak memory is deterministic enough to assert, from M = 8192 on, that the fused and
chunked paths do not grow with M x M. Sizes follow the sweep (``fused_rows`` and
``fused_memory_rows`` in conftest.py); ``BENCH_FUSED_FULL=1`` adds M = 65536 (a minute or
more) to the memory runs. Run with ``python -m pytest benchmarks/test_bench_fused.py -s``.
"""

import json
import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_fused import fused_available, peak_memory, ratio_summary, time_providers

from benchmarks.conftest import BenchConfig

pytestmark = pytest.mark.skipif(not fused_available(), reason="extension not built")


def test_timing_ratios(bench_config: BenchConfig) -> None:
    samples = time_providers(rows=bench_config.sweep.fused_rows, dim=128, rounds=bench_config.sweep.rounds)
    report = {
        "rows": bench_config.sweep.fused_rows,
        "over_plain": {name: ratio_summary(samples, name, "plain") for name in samples if name != "plain"},
        "fused_over_gemm3": ratio_summary(samples, "fused", "gemm3"),
    }
    print(json.dumps(report, indent=2))


def test_fused_peak_memory_is_linear_in_rows(bench_config: BenchConfig) -> None:
    sizes = list(bench_config.sweep.fused_memory_rows) + ([65536] if os.environ.get("BENCH_FUSED_FULL") == "1" else [])
    memory = {
        (name, size): peak_memory(name, size, 128, limit_gb=12.0)
        for size in sizes
        for name in ("fused", "chunked", "reference")
    }
    print(json.dumps({f"{name}@{size}": value for (name, size), value in memory.items()}, indent=2))
    assert all(memory[(name, size)]["outcome"] == "ok" for size in sizes for name in ("fused", "chunked"))
    largest = max(size for size in sizes if memory[("reference", size)]["outcome"] == "ok")
    if largest >= 8192:  # below, fixed costs are of the order of the M x M buffers
        for name in ("fused", "chunked"):
            assert memory[(name, largest)]["growth_mb"] < memory[("reference", largest)]["growth_mb"] / 5
