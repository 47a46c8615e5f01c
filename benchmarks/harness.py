"""Interleaved wall-clock timing: every provider is measured in every round.

On a shared machine the speed of the cores drifts during a run. Timing provider A for
ten seconds and then provider B for ten seconds turns that drift into a fake speed
difference, so each round here times every provider once, in a shuffled order, and a
provider's ratio to the baseline is taken within each round before the median is
taken over the rounds.
"""

from __future__ import annotations

import gc
import random
import statistics
import time
from dataclasses import dataclass
from typing import Callable, Optional

# A timed sample shorter than this is dominated by timer and loop overhead, so short
# calls are repeated inside one sample (the same count in every round).
MIN_SAMPLE_SECONDS = 0.02

Prepare = Callable[[], Callable[[], object]]
"""Returns the callable to time; its own work (e.g. the forward before a timed
backward) is not timed."""


@dataclass(frozen=True)
class Timing:
    """Per-call seconds of one provider over the rounds, and its ratio to the baseline."""

    samples: tuple[float, ...]
    ratios: tuple[float, ...]

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    @property
    def spread(self) -> tuple[float, float]:
        """25th and 75th percentiles of the per-call time."""
        return _quartiles(self.samples)

    @property
    def ratio(self) -> float:
        """Median over rounds of (this provider's time / the baseline's time)."""
        return statistics.median(self.ratios) if self.ratios else float("nan")

    @property
    def ratio_spread(self) -> tuple[float, float]:
        return _quartiles(self.ratios) if self.ratios else (float("nan"), float("nan"))


def _quartiles(values: tuple[float, ...]) -> tuple[float, float]:
    if len(values) < 2:
        return values[0], values[0]
    quartiles = statistics.quantiles(values, n=4, method="inclusive")
    return quartiles[0], quartiles[2]


def _time_once(
    prepare: Prepare,
    repeats: int,
    synchronize: Callable[[], None],
    clock: Callable[[], float] = time.perf_counter,
) -> float:
    """Seconds per call, averaged over ``repeats`` calls, each with its own preparation."""
    total = 0.0
    for _ in range(repeats):
        call = prepare()
        synchronize()
        start = clock()
        call()
        synchronize()
        total += clock() - start
    return total / repeats


def time_interleaved(
    providers: dict[str, Prepare],
    baseline: Optional[str],
    rounds: int,
    warmup: int = 2,
    synchronize: Callable[[], None] = lambda: None,
    seed: int = 0,
) -> dict[str, Timing]:
    """Time every provider once per round, in a shuffled order each round.

    Args:
        providers: name -> ``prepare`` (see :data:`Prepare`).
        baseline: the provider the ratios divide by, or ``None`` for no ratios.
        rounds: timed rounds.
        warmup: untimed rounds first (allocator caches, lazy initialization,
            ``torch.compile``); the first of them also picks each provider's repeat
            count so one sample lasts at least :data:`MIN_SAMPLE_SECONDS`.
        synchronize: called before and after each timed call (CUDA needs it).
        seed: seed of the round order.

    Returns:
        name -> :class:`Timing`.
    """
    order = list(providers)
    repeats = {}
    for name in order:
        first = _time_once(providers[name], 1, synchronize)
        repeats[name] = max(1, min(100, int(MIN_SAMPLE_SECONDS / max(first, 1e-9)) + 1))
    for _ in range(max(0, warmup - 1)):
        for name in order:
            _time_once(providers[name], repeats[name], synchronize)
    shuffle = random.Random(seed)
    samples: dict[str, list[float]] = {name: [] for name in order}
    for _ in range(rounds):
        shuffle.shuffle(order)
        gc.collect()
        for name in order:
            samples[name].append(_time_once(providers[name], repeats[name], synchronize))
    results = {}
    for name, values in samples.items():
        ratios = (
            tuple(value / reference for value, reference in zip(values, samples[baseline]))
            if baseline in samples
            else ()
        )
        results[name] = Timing(samples=tuple(values), ratios=ratios)
    return results


def paired_differences(
    baseline: Prepare,
    other: Prepare,
    pairs: int,
    synchronize: Callable[[], None] = lambda: None,
    clock: Callable[[], float] = time.perf_counter,
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Seconds ``other`` takes beyond ``baseline``, one single-call pair at a time.

    Returns ``(baseline_seconds, differences)``, one value per pair each.

    The two calls of a pair run back to back (in alternating order); the median of
    the differences is the overhead estimate. On a shared machine, pass
    ``clock=time.thread_time`` with one compute thread: the CPU time of the calling
    thread does not count the time it waits while other jobs run, which wall-clock
    pairs of a few milliseconds cannot escape.
    """
    baselines, differences = [], []
    for pair in range(pairs):
        first, second = (baseline, other) if pair % 2 == 0 else (other, baseline)
        first_seconds = _time_once(first, 1, synchronize, clock)
        second_seconds = _time_once(second, 1, synchronize, clock)
        baseline_seconds, other_seconds = (
            (first_seconds, second_seconds) if pair % 2 == 0 else (second_seconds, first_seconds)
        )
        baselines.append(baseline_seconds)
        differences.append(other_seconds - baseline_seconds)
    return tuple(baselines), tuple(differences)
