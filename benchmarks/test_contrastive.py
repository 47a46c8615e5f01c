"""NT-Xent providers side by side: agreement (trust), peak memory and time (cost)."""

from __future__ import annotations

import sys
from typing import Callable

import pytest
import torch

from benchmarks.conftest import REPO_ROOT, BenchConfig
from benchmarks.harness import Prepare, time_interleaved
from benchmarks.memory import TEMPERATURE, MemoryResult, measure_peak
from benchmarks.providers import BASELINE, PROVIDERS, LossFunction
from benchmarks.report import Report, timing_cells

sys.path.insert(0, str(REPO_ROOT / "tests"))
from oracles import nt_xent_loop

TIME_MODES = ("forward", "backward", "forward+backward")
# Memory probes run once per (provider, B, D, mode) and gate the in-process timing.
_MEMORY: dict[tuple[str, int, int, str], MemoryResult] = {}


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    sweep = metafunc.config._tase_bench.sweep  # type: ignore[attr-defined]
    sizes = [(batch, dim) for dim in sweep.dims for batch in sweep.batch_sizes]
    if "size" in metafunc.fixturenames:
        metafunc.parametrize("size", sizes, ids=[f"B{b}-D{d}" for b, d in sizes])
    if "memory_mode" in metafunc.fixturenames:
        metafunc.parametrize("memory_mode", sweep.memory_modes)
    if "time_mode" in metafunc.fixturenames:
        metafunc.parametrize("time_mode", TIME_MODES)


def _available() -> dict[str, str]:
    """name -> reason it cannot run here ("" when it can)."""
    return {name: provider.why_unavailable() or "" for name, provider in PROVIDERS.items()}


def test_agreement_with_loop_oracle(bench_config: BenchConfig, bench_report: Report) -> None:
    """Every provider's float32 loss and gradients against the float64 loop oracle."""
    table = bench_report.table(
        "Trust: NT-Xent of each provider vs the float64 loop oracle (B=32, D=16, float32 inputs)",
        ["provider", "version", "abs. loss error", "max abs. gradient error", "status"],
    )
    generator = torch.Generator().manual_seed(0)
    out0, out1 = torch.randn(32, 16, generator=generator), torch.randn(32, 16, generator=generator)
    exact0, exact1 = out0.double().requires_grad_(), out1.double().requires_grad_()
    exact = nt_xent_loop(
        exact0, exact1, torch.full((32,), TEMPERATURE, dtype=torch.float64), torch.ones(32, dtype=torch.float64)
    )
    exact_gradients = torch.autograd.grad(exact, (exact0, exact1))
    failures = []
    for name, reason in _available().items():
        if reason:
            table.rows.append([name, "-", "-", "-", f"skipped: {reason}"])
            continue
        provider = PROVIDERS[name]
        device = bench_config.device
        inputs = [out0.to(device).requires_grad_(), out1.to(device).requires_grad_()]
        loss = provider.build(TEMPERATURE)(*inputs)
        gradients = torch.autograd.grad(loss, inputs)
        loss_error = abs(float(loss.detach()) - float(exact.detach()))
        gradient_error = max(
            float((gradient.double().cpu() - reference).abs().max())
            for gradient, reference in zip(gradients, exact_gradients)
        )
        table.rows.append([name, provider.version(), f"{loss_error:.1e}", f"{gradient_error:.1e}", "ok"])
        if loss_error > 1e-5 or gradient_error > 1e-6:
            failures.append(name)
    table.notes.append(
        "The oracle is `tests/oracles.nt_xent_loop`, a plain loop written from the formula; "
        "limits for 'ok': loss 1e-5, gradient 1e-6 (float32 rounding is ~1e-7 here)."
    )
    assert not failures, f"providers disagree with the oracle: {failures}"


def _memory(bench_config: BenchConfig, provider: str, batch: int, dim: int, mode: str) -> MemoryResult:
    key = (provider, batch, dim, mode)
    reason = PROVIDERS[provider].why_unavailable()
    if reason is not None:
        return MemoryResult("unavailable", detail=reason)
    if key not in _MEMORY:
        _MEMORY[key] = measure_peak(
            provider, batch, dim, mode, bench_config.device, bench_config.memory_cap_gib
        )
    return _MEMORY[key]


def _mib(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


def test_peak_memory(
    bench_config: BenchConfig, bench_report: Report, size: tuple[int, int], memory_mode: str
) -> None:
    """Peak memory of each provider in a fresh process (see benchmarks/memory.py)."""
    batch, dim = size
    on_cuda = bench_config.device.startswith("cuda")
    table = bench_report.table(
        f"Peak memory per call, fresh process ({'CUDA max_memory_allocated' if on_cuda else 'CPU peak RSS'}, MiB)",
        ["provider", "B", "D", "mode", "import-only", "process peak", "peak - import-only", "one warm call", "status"],
    )
    table.notes[:] = [
        "import-only: peak RSS after imports and inputs, before any call; process peak: "
        "peak RSS of the whole process (`VmHWM`; what `/usr/bin/time -v` reports as maximum "
        "resident set size; includes compilation for `compiled`); one warm call: peak growth during a second "
        "call over the RSS "
        "just before it.",
        f"Each probe may use {bench_config.memory_cap_gib:g} GiB of address space beyond its "
        "imports (RLIMIT_AS); `oom` means the provider needed more.",
    ]
    for name in PROVIDERS:
        result = _memory(bench_config, name, batch, dim, memory_mode)
        status = result.status if result.status == "ok" else f"{result.status}: {result.detail}"
        peak_over_import = (
            None if result.peak_mib is None or result.import_mib is None else result.peak_mib - result.import_mib
        )
        table.rows.append([
            name, batch, dim, memory_mode, _mib(result.import_mib), _mib(result.peak_mib),
            _mib(peak_over_import), _mib(result.call_mib), status,
        ])
    assert _memory(bench_config, BASELINE, batch, dim, memory_mode).status in ("ok", "oom")


def _prepare(loss_function: LossFunction, out0: torch.Tensor, out1: torch.Tensor, mode: str) -> Prepare:
    def clear() -> None:
        out0.grad = out1.grad = None

    if mode == "forward":
        return lambda: lambda: loss_function(out0, out1)
    if mode == "backward":

        def prepare_backward() -> Callable[[], object]:
            clear()
            loss = loss_function(out0, out1)
            return loss.backward

        return prepare_backward

    def prepare_step() -> Callable[[], object]:
        clear()
        return lambda: loss_function(out0, out1).backward()

    return prepare_step


def test_time(bench_config: BenchConfig, bench_report: Report, size: tuple[int, int], time_mode: str) -> None:
    """Interleaved timing of every provider that fits in memory at this size."""
    batch, dim = size
    table = bench_report.table(
        f"NT-Xent {time_mode} time ({bench_config.device})",
        ["provider", "B", "D", "median", "p25 - p75", f"ratio to {BASELINE} (p25-p75)", "note"],
    )
    generator = torch.Generator().manual_seed(0)
    out0, out1 = (
        torch.randn(batch, dim, generator=generator).to(bench_config.device).requires_grad_()
        for _ in range(2)
    )
    runnable, skipped = {}, {}
    for name, reason in _available().items():
        probe = _memory(bench_config, name, batch, dim, "forward+backward")
        if reason:
            skipped[name] = f"skipped: {reason}"
        elif probe.status != "ok":
            skipped[name] = f"not timed: forward+backward memory probe {probe.status}"
        else:
            runnable[name] = _prepare(PROVIDERS[name].build(TEMPERATURE), out0, out1, time_mode)
    timings = time_interleaved(
        runnable,
        BASELINE,
        rounds=bench_config.sweep.rounds,
        synchronize=bench_config.synchronize,
    )
    for name in PROVIDERS:
        if name in timings:
            table.rows.append([name, batch, dim, *timing_cells(timings[name]), ""])
        else:
            table.rows.append([name, batch, dim, "-", "-", "-", skipped[name]])
    assert BASELINE in timings or BASELINE in skipped
