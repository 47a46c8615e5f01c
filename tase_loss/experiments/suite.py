"""A suite sized to a wall-clock budget, and several runs at once on one device.

``tase-experiment --budget-minutes M`` first trains every method for a couple of epochs
to time it (:func:`time_epochs`), then gives **every method the same number of epochs**
that fits the budget (:func:`plan_budget`): a method that costs more per epoch (rwSAM's
two passes) makes the suite shorter for all, never shorter for itself. Methods named
optional (TS, rwSAM) are dropped, most expensive first, only when keeping them would
leave fewer than ``min_epochs``. ``--parallel N`` runs the (method, seed) jobs as ``N``
processes at once (:func:`run_parallel`), on the same device, and merges their results
into one table and plot; a small model leaves a big GPU mostly idle, so several runs
share it at little cost each.
"""

from __future__ import annotations

import dataclasses
import heapq
import json
import math
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Callable, Optional

from tase_loss.experiments.data import LongTailedData

__all__ = ["OPTIONAL_METHODS", "SUITE_METHODS", "BudgetPlan", "plan_budget", "run_parallel", "time_epochs"]

SUITE_METHODS = ("ntxent", "tase", "tase-oracle", "tase-input", "ts", "rwsam")
OPTIONAL_METHODS = ("rwsam", "ts")
"""Dropped in this order (rwSAM costs two passes a step) when the budget is short."""


@dataclass(frozen=True)
class BudgetPlan:
    """What fits: the methods kept, the epochs every one of them gets, the time foreseen.

    Attributes:
        methods: the methods that run, in the given order.
        epochs: epochs per run, the same for every method.
        estimated_seconds: the foreseen wall time (longest parallel lane + evaluation).
        dropped: optional methods left out so that the others reach ``min_epochs``.
    """

    methods: tuple[str, ...]
    epochs: int
    estimated_seconds: float
    dropped: tuple[str, ...] = ()


def _makespan(costs: list[float], parallel: int) -> float:
    """Longest lane when jobs of these costs go, longest first, to the freest of ``parallel`` lanes."""
    lanes = [0.0] * max(1, min(parallel, len(costs)))
    for cost in sorted(costs, reverse=True):
        heapq.heapreplace(lanes, lanes[0] + cost)
    return max(lanes)


def plan_budget(
    epoch_seconds: dict[str, float],
    num_seeds: int,
    budget_seconds: float,
    *,
    parallel: int = 1,
    run_overhead_seconds: float = 0.0,
    min_epochs: int = 1,
    max_epochs: Optional[int] = None,
    optional: Sequence[str] = OPTIONAL_METHODS,
) -> BudgetPlan:
    """The largest equal number of epochs for every (method, seed) run that fits the budget.

    Args:
        epoch_seconds: measured seconds per epoch of each method (its order is kept).
        num_seeds: runs per method.
        budget_seconds: wall-clock budget for all runs.
        parallel: runs at once; jobs are placed longest first on the freest lane.
        run_overhead_seconds: fixed cost of one run (start-up, evaluation).
        min_epochs: fewer epochs than this is not worth running: drop optional methods.
        max_epochs: an upper bound on the epochs (``None``: none).
        optional: methods that may be dropped, in the order they are dropped.

    Raises:
        ValueError: if even without the optional methods ``min_epochs`` do not fit.

    Example:
        >>> plan = plan_budget({"ntxent": 1.0, "tase": 1.2, "rwsam": 2.0}, 2, 100.0)
        >>> plan.methods, plan.epochs, plan.dropped
        (('ntxent', 'tase', 'rwsam'), 11, ())
        >>> plan_budget({"ntxent": 1.0, "tase": 1.2, "rwsam": 2.0}, 2, 100.0, min_epochs=20).dropped
        ('rwsam',)
    """
    methods = list(epoch_seconds)
    dropped: list[str] = []
    droppable = [name for name in optional if name in methods]
    while True:
        per_epoch = [epoch_seconds[name] for name in methods for _ in range(num_seeds)]
        overhead = _makespan([run_overhead_seconds] * len(per_epoch), parallel)
        # The makespan grows linearly with the epochs (every cost scales alike).
        lane = _makespan(per_epoch, parallel)
        epochs = math.floor((budget_seconds - overhead) / lane) if lane > 0 else 0
        if max_epochs is not None:
            epochs = min(epochs, max_epochs)
        if epochs >= min_epochs:
            return BudgetPlan(tuple(methods), epochs, epochs * lane + overhead, tuple(dropped))
        if not droppable:
            needed = (min_epochs * lane + overhead) / 60
            raise ValueError(
                f"the budget fits {max(epochs, 0)} epoch(s) of {', '.join(methods)}; {min_epochs} need about "
                f"{needed:.1f} minutes: raise --budget-minutes or lower --min-epochs"
            )
        name = droppable.pop(0)
        methods.remove(name)
        dropped.append(name)


def time_epochs(
    methods: Sequence[str],
    data: LongTailedData,
    config: Any,
    device: Any,
    probe_epochs: int = 2,
    log: Callable[[str], None] = lambda line: print(line, file=sys.stderr),
) -> dict[str, float]:
    """Seconds per epoch of each method, measured on ``data`` (the last of ``probe_epochs``).

    The first epoch pays one-off costs (CUDA autotuning, compilation); the last epoch of
    the probe, with an estimate at its end for guided methods (warm-up 1), is what every
    later epoch costs.
    """
    from tase_loss.experiments.runner import run_single

    seconds = {}
    for method in methods:
        probe = dataclasses.replace(
            config,
            training=dataclasses.replace(config.training, epochs=probe_epochs, progress=False),
            settings=dataclasses.replace(
                config.settings, tase=dataclasses.replace(config.settings.tase, warmup_epochs=1)
            ),
            checkpoints=False,
        )
        run = run_single(method, config.seeds[0], data, probe, device)
        last = run["history"][-1]
        seconds[method] = last["seconds"] + last.get("epoch_end_seconds", 0.0)
        log(f"timing: {method} {seconds[method]:.2f} s per epoch")
    return seconds


def run_parallel(
    jobs: Sequence[tuple[str, int]],
    parallel: int,
    arguments: Sequence[str],
    output_dir: str,
    threads_per_job: Optional[int] = None,
    log: Callable[[str], None] = lambda line: print(line, file=sys.stderr),
) -> list[dict[str, Any]]:
    """Run each ``(method, seed)`` as its own ``tase-experiment`` process, ``parallel`` at once.

    Every job writes ``OUTPUT/jobs/<method>_seed<s>/`` (results.json, log.txt). Returns
    the jobs' results in the order given.

    Raises:
        RuntimeError: if a job fails (its log's last line is in the message).
    """
    command = [sys.executable, "-m", "tase_loss.experiments", *arguments]
    pending = list(jobs)
    running: list[tuple[subprocess.Popen, str, Any]] = []
    folders = {}
    while pending or running:
        while pending and len(running) < parallel:
            method, seed = pending.pop(0)
            folder = os.path.join(output_dir, "jobs", f"{method}_seed{seed}")
            os.makedirs(folder, exist_ok=True)
            folders[(method, seed)] = folder
            job = [*command, "--methods", method, "--seeds", str(seed), "--output", folder]
            if threads_per_job is not None:
                job += ["--threads", str(threads_per_job)]
            # Closed when the job ends (below): it outlives this block, as the process does.
            log_file = open(os.path.join(folder, "log.txt"), "w", encoding="utf-8")  # noqa: SIM115
            running.append((subprocess.Popen(job, stdout=log_file, stderr=subprocess.STDOUT), folder, log_file))
        time.sleep(0.2)
        for entry in list(running):
            process, folder, log_file = entry
            if process.poll() is None:
                continue
            running.remove(entry)
            log_file.close()
            if process.returncode != 0:
                for other, _, other_log in running:
                    other.terminate()
                    other_log.close()
                with open(os.path.join(folder, "log.txt"), encoding="utf-8") as handle:
                    lines = handle.read().strip().splitlines() or ["(no output)"]
                raise RuntimeError(f"job {os.path.basename(folder)} failed: {lines[-1]}")
            log(f"done: {os.path.basename(folder)}")
    results = []
    for key in jobs:
        with open(os.path.join(folders[key], "results.json"), encoding="utf-8") as handle:
            results.append(json.load(handle))
    return results
