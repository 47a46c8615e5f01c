"""What TASE costs over plain NT-Xent at B = 256, D = 128: the loss, and a training step.

The TASE loss looks its temperatures and weights up through a fitted
:class:`tase_loss.PseudoLabeler` (``index=``) and stores the batch's backbone features
in the labeler's bank (``features=``); plain NT-Xent is
``TASEContrastiveLoss()(out0, out1)``. The per-epoch re-estimate (the default
estimator) is reported amortized over an epoch.
"""

from __future__ import annotations

import statistics
import time
from typing import Callable

import torch
from torch import nn

from benchmarks.conftest import BenchConfig
from benchmarks.harness import paired_differences, time_interleaved
from benchmarks.report import Report, format_seconds, timing_cells
from tase_loss import PseudoLabeler, TASEContrastiveLoss, functional
from tase_loss._validation import check_index, check_temperature, check_weight

BATCH, DIM, DATASET, BACKBONE_DIM = 256, 128, 10_000, 64
TEMPERATURE = 0.2


def _paired_cell(baselines: tuple[float, ...], differences: tuple[float, ...]) -> str:
    """Median difference, its p25-p75, and its share of the baseline's median time."""
    low, high = statistics.quantiles(differences, n=4, method="inclusive")[::2]
    median = statistics.median(differences)
    return (
        f"{format_seconds(median)} ({format_seconds(low)} - {format_seconds(high)}); "
        f"{100 * median / statistics.median(baselines):+.1f} % of NT-Xent's "
        f"{format_seconds(statistics.median(baselines))}"
    )


def _pair_clock(bench_config: BenchConfig) -> tuple[Callable[[], float], str]:
    """Thread CPU time when all the work runs on this thread, else wall-clock."""
    if bench_config.device == "cpu" and torch.get_num_threads() == 1:
        return time.thread_time, "CPU time of the calling thread (1 compute thread)"
    return time.perf_counter, "wall-clock"


def _fitted_labeler(feature_dim: int) -> PseudoLabeler:
    generator = torch.Generator().manual_seed(0)
    labeler = PseudoLabeler(DATASET, feature_dim, warmup_epochs=1)
    labeler.update(torch.arange(DATASET), torch.randn(DATASET, feature_dim, generator=generator))
    labeler.estimate()
    return labeler


def _batch_index(generator: torch.Generator) -> torch.Tensor:
    return torch.randperm(DATASET, generator=generator)[:BATCH]


def test_loss_overhead(bench_report: Report, bench_config: BenchConfig) -> None:
    """Forward + backward of the loss alone, with and without the pseudo-label lookup."""
    device = bench_config.device
    labeler = _fitted_labeler(DIM)
    plain = TASEContrastiveLoss(TEMPERATURE)
    tase = TASEContrastiveLoss(TEMPERATURE, pseudo_labeler=labeler)
    generator = torch.Generator().manual_seed(1)
    out0, out1 = (torch.randn(BATCH, DIM, generator=generator).to(device).requires_grad_() for _ in range(2))
    index = _batch_index(generator).to(device)
    temperature, weight = tase.guidance.lookup(index, out0.device)

    def step(call: Callable[[], torch.Tensor]) -> Callable[[], Callable[[], object]]:
        def prepare() -> Callable[[], object]:
            out0.grad = out1.grad = None
            return lambda: call().backward()

        return prepare

    providers = {
        "NT-Xent: loss(out0, out1)": step(lambda: plain(out0, out1)),
        "TASE: loss(out0, out1, index=index)": step(lambda: tase(out0, out1, index=index)),
        "TASE, temperature=/weight= given (no lookup)": step(
            lambda: plain(out0, out1, temperature=temperature, weight=weight)
        ),
        "lookup alone: guidance.lookup(index)": lambda: lambda: tase.guidance.lookup(index, out0.device),
    }
    timings = time_interleaved(
        providers, "NT-Xent: loss(out0, out1)", rounds=10 * bench_config.sweep.rounds,
        synchronize=bench_config.synchronize,
    )
    baseline = "NT-Xent: loss(out0, out1)"
    pairs = 40 * bench_config.sweep.rounds
    clock, clock_name = _pair_clock(bench_config)
    table = bench_report.table(
        f"TASE overhead: loss forward+backward, B = {BATCH}, D = {DIM} ({device})",
        ["what", "median", "p25 - p75", "ratio to NT-Xent (p25-p75)",
         f"paired difference to NT-Xent, median of {pairs} (p25-p75)"],
    )
    for name, timing in timings.items():
        if name == baseline or name.startswith("lookup"):
            difference = "-"
        else:
            difference = _paired_cell(*paired_differences(
                providers[baseline], providers[name], pairs, bench_config.synchronize, clock
            ))
        table.rows.append([name, *timing_cells(timing), difference])
    table.notes[:] = [
        f"PseudoLabeler over N = {DATASET} samples, k = 10, fitted once; TemperatureMap and "
        "SampleReweighter at their defaults. 'lookup alone' is part of the TASE row.",
        "Paired difference: single calls of NT-Xent and the row run back to back in "
        f"alternating order, timed as {clock_name}; the median of the per-pair differences.",
    ]
    assert torch.isfinite(tase(out0, out1, index=index))


def test_lookup_breakdown(bench_report: Report, bench_config: BenchConfig) -> None:
    """Per-call cost of each piece of the TASE path, to say where an overhead goes."""
    device = bench_config.device
    labeler = _fitted_labeler(DIM)
    tase = TASEContrastiveLoss(TEMPERATURE, pseudo_labeler=labeler)
    guidance = tase.guidance
    generator = torch.Generator().manual_seed(2)
    out0 = torch.randn(BATCH, DIM, generator=generator).to(device)
    out1 = torch.randn(BATCH, DIM, generator=generator).to(device)
    index = _batch_index(generator).to(device)
    frequency = labeler.frequency(index)
    reference = labeler.frequency_reference()
    temperature = guidance.temperature_map(frequency, reference)
    weight = guidance.reweighter(frequency, reference)
    features = torch.randn(BATCH, DIM, generator=generator).to(device)
    def rebuild_tables() -> object:
        guidance._key = None  # as after a re-estimate: the (N,) tables are recomputed
        return guidance.lookup(index, out0.device)

    pieces: dict[str, Callable[[], object]] = {
        "PseudoLabeler.update(index, features) (bank write, per step)": lambda: labeler.update(index, features),
        "lookup: gather from the cached (N,) tables (per step)": lambda: guidance.lookup(index, out0.device),
        "check_index (one reduction)": lambda: check_index(index, BATCH, DATASET),
        f"lookup rebuilding the tables for N = {DATASET} (once per re-estimate)": rebuild_tables,
        "check_temperature((B,) tensor)": lambda: check_temperature(temperature, BATCH, out0.device),
        "check_weight((B,) tensor)": lambda: check_weight(weight, BATCH, out0.device, "mean"),
        "nt_xent_loss forward, float temperature": lambda: functional.nt_xent_loss(out0, out1, TEMPERATURE),
        "nt_xent_loss forward, tensor temperature + weight": lambda: functional.nt_xent_loss(
            out0, out1, temperature, weight
        ),
    }
    table = bench_report.table(
        f"Cost of each piece of the TASE path: one call, B = {BATCH} ({device})",
        ["piece", "median per call", "p25 - p75"],
    )
    timings = time_interleaved(
        {name: (lambda call=call: call) for name, call in pieces.items()},
        None, rounds=3 * bench_config.sweep.rounds, synchronize=bench_config.synchronize,
    )
    table.rows.extend([name, *timing_cells(timing)[:2]] for name, timing in timings.items())
    assert all(timing.median > 0 for timing in timings.values())


class _SmallEncoder(nn.Module):
    """A small CNN backbone (32x32 RGB -> 64) and a projection head (64 -> 128)."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone = nn.Sequential(
            nn.Conv2d(3, 32, 3, stride=2, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
            nn.Conv2d(32, BACKBONE_DIM, 3, stride=2, padding=1), nn.BatchNorm2d(BACKBONE_DIM), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        )
        self.head = nn.Sequential(nn.Linear(BACKBONE_DIM, 128), nn.ReLU(), nn.Linear(128, DIM))


def test_training_step_overhead(bench_report: Report, bench_config: BenchConfig) -> None:
    """One SimCLR step (two views through encoder + head, loss, backward, SGD step)."""
    device = bench_config.device
    torch.manual_seed(0)
    labeler = _fitted_labeler(BACKBONE_DIM)
    plain = TASEContrastiveLoss(TEMPERATURE)
    tase = TASEContrastiveLoss(TEMPERATURE, pseudo_labeler=labeler)
    model = _SmallEncoder().to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    generator = torch.Generator().manual_seed(3)
    view0, view1 = (torch.rand(BATCH, 3, 32, 32, generator=generator).to(device) for _ in range(2))

    def train_step(use_tase: bool) -> Callable[[], Callable[[], object]]:
        def prepare() -> Callable[[], object]:
            index = _batch_index(generator).to(device)

            def step() -> None:
                features0, features1 = model.backbone(view0), model.backbone(view1)
                out0, out1 = model.head(features0), model.head(features1)
                loss = tase(out0, out1, index=index, features=features0) if use_tase else plain(out0, out1)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()

            return step

        return prepare

    timings = time_interleaved(
        {"NT-Xent step": train_step(False), "TASE step (lookup + bank write)": train_step(True)},
        "NT-Xent step", rounds=2 * bench_config.sweep.rounds, synchronize=bench_config.synchronize,
    )
    start = time.perf_counter()
    labeler.estimate()
    recluster_seconds = time.perf_counter() - start
    steps_per_epoch = DATASET // BATCH
    pairs = 10 * bench_config.sweep.rounds
    clock, clock_name = _pair_clock(bench_config)
    paired = _paired_cell(*paired_differences(
        train_step(False), train_step(True), pairs, bench_config.synchronize, clock
    ))
    table = bench_report.table(
        f"TASE overhead: full training step, small CNN on 2 x ({BATCH}, 3, 32, 32) ({device})",
        ["what", "median", "p25 - p75", "ratio to NT-Xent step (p25-p75)",
         f"paired difference to NT-Xent step, median of {pairs} (p25-p75)"],
    )
    for name, timing in timings.items():
        table.rows.append([name, *timing_cells(timing), "-" if name == "NT-Xent step" else paired])
    nt_xent_step = timings["NT-Xent step"].median
    table.notes[:] = [f"Paired difference timed as {clock_name}."]
    table.rows.append([
        f"re-estimate (N = {DATASET}, {labeler.estimator.name}), amortized over {steps_per_epoch} steps/epoch",
        format_seconds(recluster_seconds / steps_per_epoch), f"one estimate(): {format_seconds(recluster_seconds)}",
        f"{recluster_seconds / steps_per_epoch / nt_xent_step:.3f} (one run)", "-",
    ])
    assert recluster_seconds > 0
