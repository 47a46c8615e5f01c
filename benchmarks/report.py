"""The benchmark report: machine and versions, then one markdown table per benchmark."""

from __future__ import annotations

import datetime
import os
import platform
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from benchmarks.harness import Timing


@dataclass
class Table:
    title: str
    headers: Sequence[str]
    rows: list[Sequence[str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def markdown(self) -> str:
        lines = [f"### {self.title}", ""]
        lines.append("| " + " | ".join(self.headers) + " |")
        lines.append("|" + "|".join("---" for _ in self.headers) + "|")
        lines.extend("| " + " | ".join(str(cell) for cell in row) + " |" for row in self.rows)
        lines.extend([""] + [f"- {note}" for note in self.notes] if self.notes else [])
        return "\n".join(lines) + "\n"


class Report:
    """Tables in the order they were opened; written as one markdown file."""

    def __init__(self, settings: str) -> None:
        self.settings = settings
        self.tables: dict[str, Table] = {}
        self.load_at_start = _load_average()

    def table(self, title: str, headers: Sequence[str]) -> Table:
        """The table called ``title``, created on first use."""
        if title not in self.tables:
            self.tables[title] = Table(title, headers)
        return self.tables[title]

    def markdown(self) -> str:
        parts = [
            "# tase-loss benchmark report",
            "",
            f"Generated {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M UTC}"
            f" by `pytest benchmarks/ {self.settings}`.",
            "",
            machine_description(self.load_at_start),
            "",
            "Times are medians over interleaved rounds (every provider once per round, in a "
            "shuffled order); `p25-p75` is the spread over rounds; a ratio is the median over "
            "rounds of (provider / baseline) within the same round, so drift of a shared "
            "machine cancels. Ratios < 1 are faster than the baseline.",
            "",
        ]
        parts.extend(table.markdown() for table in self.tables.values())
        return "\n".join(parts)

    def write(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.markdown(), encoding="utf-8")


def format_seconds(seconds: Optional[float]) -> str:
    if seconds is None:
        return "-"
    if abs(seconds) >= 1:
        return f"{seconds:.2f} s"
    if abs(seconds) >= 1e-3:
        return f"{seconds * 1e3:.2f} ms"
    return f"{seconds * 1e6:.0f} us"


def timing_cells(timing: Timing) -> list[str]:
    """``[median, p25-p75, ratio (p25-p75)]`` of one provider."""
    low, high = timing.spread
    ratio_low, ratio_high = timing.ratio_spread
    return [
        format_seconds(timing.median),
        f"{format_seconds(low)} - {format_seconds(high)}",
        f"{timing.ratio:.2f} ({ratio_low:.2f}-{ratio_high:.2f})" if timing.ratios else "-",
    ]


def _load_average() -> str:
    try:
        return " ".join(f"{value:.2f}" for value in os.getloadavg())
    except OSError:
        return "n/a"


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _memory_gib() -> str:
    try:
        return f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.1f} GiB"
    except (ValueError, OSError):
        return "unknown"


def _versions() -> list[str]:
    import numpy
    import sklearn
    import torch

    import tase_loss
    from benchmarks import peers
    from tase_loss._faiss import import_faiss

    faiss = import_faiss("the benchmark report")
    versions = [
        f"tase-loss {tase_loss.__version__}",
        f"torch {torch.__version__}",
        f"numpy {numpy.__version__}",
        f"faiss {faiss.__version__}",
        f"scikit-learn {sklearn.__version__}",
    ]
    for name, version in (("pytorch-metric-learning", peers.pml_version), ("lightly", peers.lightly_version)):
        try:
            versions.append(f"{name} {version()}")
        except ImportError:
            versions.append(f"{name} not installed")
    return versions


def _threads() -> str:
    import torch
    from threadpoolctl import threadpool_info

    from tase_loss._faiss import import_faiss

    faiss = import_faiss("the benchmark report")
    # OpenBLAS's kernel family ("architecture") is a factor of 3 in FAISS's speed.
    pools = ", ".join(
        f"{pool['internal_api']} {pool['num_threads']}"
        + (f" ({pool['architecture']})" if pool.get("architecture") else "")
        for pool in threadpool_info()
    )
    return (
        f"torch intra-op {torch.get_num_threads()}, inter-op {torch.get_num_interop_threads()}; "
        f"faiss OpenMP {faiss.omp_get_max_threads()}; threadpoolctl: {pools}; "
        f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}"
    )


def machine_description(load_at_start: str) -> str:
    import torch

    usable_cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    gpu = (
        f"{torch.cuda.get_device_name(0)} (CUDA {torch.version.cuda})"
        if torch.cuda.is_available()
        else "none"
    )
    lines = [
        f"- Machine: {platform.platform()}; CPU: {_cpu_model()}; {usable_cores} usable cores "
        f"(of {os.cpu_count()}); RAM {_memory_gib()}; GPU: {gpu}",
        f"- Load average (1/5/15 min) at start: {load_at_start}; at end: {_load_average()}",
        f"- Python {sys.version.split()[0]}; " + ", ".join(_versions()),
        f"- Threads: {_threads()}",
    ]
    return "\n".join(lines)
