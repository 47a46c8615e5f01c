"""pytest entry of bench_fused.py: prints the timing ratios, checks the memory scaling.

Times are printed, never asserted (a shared machine makes timed assertions flaky);
peak memory is deterministic enough to assert that the fused and chunked paths do not
grow with M x M. ``BENCH_FUSED_FULL=1`` adds M = 65536 (a minute or more) to the memory runs.
Run with ``python -m pytest benchmarks/test_bench_fused.py -s``.
"""

import json
import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_fused import peak_memory, ratio_summary, time_providers

from tase_loss import _extension

pytestmark = pytest.mark.skipif(not _extension.has_ext(), reason="extension not built")


def test_timing_ratios_at_8192_rows():
    samples = time_providers(rows=8192, dim=128, rounds=3)
    report = {
        "over_plain": {name: ratio_summary(samples, name, "plain") for name in samples if name != "plain"},
        "fused_over_gemm3": ratio_summary(samples, "fused", "gemm3"),
    }
    print(json.dumps(report, indent=2))


def test_fused_peak_memory_is_linear_in_rows():
    sizes = [4096, 16384] + ([65536] if os.environ.get("BENCH_FUSED_FULL") == "1" else [])
    memory = {
        (name, size): peak_memory(name, size, 128, limit_gb=12.0)
        for size in sizes
        for name in ("fused", "chunked", "reference")
    }
    print(json.dumps({f"{name}@{size}": value for (name, size), value in memory.items()}, indent=2))
    assert all(memory[(name, size)]["outcome"] == "ok" for size in sizes for name in ("fused", "chunked"))
    for name in ("fused", "chunked"):
        assert memory[(name, 16384)]["growth_mb"] < memory[("reference", 16384)]["growth_mb"] / 5
