"""Fused contrastive-rows op vs the plain PyTorch path, lightly's formula and bare GEMMs.

Forward + backward of NT-Xent rows (Q = K = both views, M = 2B anchors, self excluded,
positive = other view), D = 128, one per-row temperature vector and unit weights:

- ``fused``: :func:`tase_loss.ops.contrastive_rows_fused` (needs the built extension);
- ``chunked``: :func:`tase_loss.ops.chunked.contrastive_rows_chunked`, the pure-PyTorch
  path in row blocks (memory linear in ``M``);
- ``reference``: :func:`tase_loss.ops.reference.contrastive_rows_reference`, the
  pure-PyTorch path that materializes the ``(M, M)`` logits;
- ``plain``: six lines of plain PyTorch NT-Xent (normalize, ``Z @ Z.T / t``, ``-inf``
  diagonal, ``F.cross_entropy``) on the same embeddings;
- ``compiled``: ``torch.compile`` of ``plain``;
- ``lightly``: lightly's ``NTXentLoss`` (memory_bank_size=0) as transcribed in
  ``tests/oracles.py`` (lightly itself needs torchvision, which cannot be installed here);
- ``gemm3``: the three GEMMs no implementation can avoid, ``S = Q K^T``, ``S K`` and
  ``S^T Q``, at the same shapes with torch's threaded BLAS.

Times are interleaved: every round runs every provider once, in a shuffled order, and the
ratio to ``gemm3`` or ``reference`` is taken within a round before the median over rounds,
so drift of a shared machine cancels. Peak memory is the growth of the peak RSS of a fresh
subprocess per (provider, M), under an address-space limit so that an out-of-memory plain
path is a recorded result, not a dead machine.

Run as a script (``python benchmarks/bench_fused.py --help``) or through
``pytest benchmarks/test_bench_fused.py -s``.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import torch

REPO = Path(__file__).resolve().parent.parent
if str(REPO / "tests") not in sys.path:
    sys.path.insert(0, str(REPO / "tests"))
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from oracles import lightly_nt_xent  # noqa: E402

from tase_loss.ops import (  # noqa: E402
    contrastive_rows_chunked,
    contrastive_rows_fused,
    contrastive_rows_reference,
    is_applicable,
)

PROVIDERS = ("fused", "chunked", "reference", "plain", "compiled", "lightly", "gemm3")
TEMPERATURE = 0.2


def make_step(
    provider: str,
    rows: int,
    dim: int,
    seed: int = 0,
    device: str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> Callable[[], None]:
    """One forward + backward of ``provider`` on ``rows`` anchors, as a closure."""
    generator = torch.Generator().manual_seed(seed)
    batch = rows // 2
    out0 = torch.randn(batch, dim, generator=generator).to(device, dtype)
    out1 = torch.randn(batch, dim, generator=generator).to(device, dtype)
    embeddings = torch.nn.functional.normalize(torch.cat([out0, out1]).float(), dim=1).to(dtype)
    anchors = torch.arange(rows, device=device)
    positive = anchors.roll(batch)
    inverse_temperature = torch.full((rows,), 1 / TEMPERATURE, device=device)
    weight = torch.ones(rows, device=device)

    if provider == "gemm3":
        queries = embeddings

        def step() -> None:
            similarity = queries @ queries.T
            similarity @ queries
            similarity.T @ queries

        return step
    if provider == "lightly":
        view0 = out0.requires_grad_()
        view1 = out1.requires_grad_()

        def step() -> None:
            lightly_nt_xent(view0, view1, TEMPERATURE).backward()

        return step
    leaf = embeddings.requires_grad_()
    if provider in ("plain", "compiled"):
        plain = _plain_nt_xent if provider == "plain" else torch.compile(_plain_nt_xent)

        def step() -> None:
            plain(leaf, batch).backward()
            leaf.grad = None

        return step
    if provider == "fused":
        if not is_applicable(leaf, leaf):
            raise RuntimeError("the fused provider needs the built extension (TASE_LOSS_BUILD_EXT=1)")

        def rows_function(*arguments):
            return contrastive_rows_fused(*arguments, uniform_grad=True)  # a mean follows

    elif provider == "chunked":

        def rows_function(*arguments):
            return contrastive_rows_chunked(*arguments, uniform_grad=True)

    elif provider == "reference":
        rows_function = contrastive_rows_reference
    else:
        raise ValueError(f"unknown provider {provider!r}; choose from {PROVIDERS}")

    def step() -> None:
        rows_function(leaf, leaf, positive, anchors, inverse_temperature, weight).mean().backward()
        leaf.grad = None

    return step


def _plain_nt_xent(embeddings: torch.Tensor, batch: int) -> torch.Tensor:
    """Plain PyTorch NT-Xent on ``(2B, D)`` embeddings (normalized again, as a user would)."""
    unit = torch.nn.functional.normalize(embeddings, dim=1)
    logits = unit @ unit.T / TEMPERATURE
    logits.fill_diagonal_(float("-inf"))
    targets = torch.arange(2 * batch, device=embeddings.device).roll(batch)
    return torch.nn.functional.cross_entropy(logits.float(), targets)


def fused_available(device: str = "cpu") -> bool:
    """Whether the fused op runs on ``device`` here (the extension is built for it)."""
    probe = torch.ones(1, 1, device=device)
    return is_applicable(probe, probe)


def time_providers(
    rows: int,
    dim: int,
    rounds: int,
    providers: tuple[str, ...] = PROVIDERS,
    seed: int = 0,
    device: str = "cpu",
    dtype: torch.dtype = torch.float32,
    warm_up: bool = True,
    repeat: int = 1,
) -> dict[str, list[float]]:
    """Seconds per forward + backward, one sample per provider per round (interleaved).

    A sample is the mean of ``repeat`` back-to-back calls (for calls too short to time alone).
    """
    steps = {name: make_step(name, rows, dim, device=device, dtype=dtype) for name in providers}
    synchronize = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    for step in steps.values() if warm_up else ():
        step()  # warm-up: allocator, BLAS and thread pools
    synchronize()
    order = random.Random(seed)
    samples: dict[str, list[float]] = {name: [] for name in providers}
    for _ in range(rounds):
        names = list(providers)
        order.shuffle(names)
        for name in names:
            start = time.perf_counter()
            for _ in range(repeat):
                steps[name]()
            synchronize()
            samples[name].append((time.perf_counter() - start) / repeat)
    return samples


def time_moco(
    batch: int, queue: int, dim: int, rounds: int, seed: int = 0
) -> dict[str, list[float]]:
    """MoCo shape: ``batch`` queries against ``batch + queue`` keys that need no gradient.

    Providers: ``fused``, ``reference`` and ``gemm2`` (``S = Q K^T`` and ``P K``, the two
    GEMMs left when the keys take no gradient). Interleaved like :func:`time_providers`.
    """
    generator = torch.Generator().manual_seed(seed)
    queries = torch.nn.functional.normalize(torch.randn(batch, dim, generator=generator), dim=1)
    keys = torch.nn.functional.normalize(torch.randn(batch + queue, dim, generator=generator), dim=1)
    leaf = queries.requires_grad_()
    arguments = (
        torch.arange(batch),
        torch.full((batch,), -1),
        torch.full((batch,), 1 / TEMPERATURE),
        torch.ones(batch),
    )

    def fused() -> None:
        contrastive_rows_fused(leaf, keys, *arguments, uniform_grad=True).mean().backward()
        leaf.grad = None

    def reference() -> None:
        contrastive_rows_reference(leaf, keys, *arguments).mean().backward()
        leaf.grad = None

    def gemm2() -> None:
        (queries.detach() @ keys.T) @ keys

    steps = {"fused": fused, "reference": reference, "gemm2": gemm2}
    for step in steps.values():
        step()
    order = random.Random(seed)
    samples: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(rounds):
        for name in order.sample(list(steps), len(steps)):
            start = time.perf_counter()
            steps[name]()
            samples[name].append(time.perf_counter() - start)
    return samples


def ratio_summary(samples: dict[str, list[float]], numerator: str, denominator: str) -> dict:
    """Median and range over rounds of the within-round time ratio."""
    ratios = [a / b for a, b in zip(samples[numerator], samples[denominator])]
    return {"median": statistics.median(ratios), "min": min(ratios), "max": max(ratios)}


SWEEP_PROVIDERS = ("fused", "chunked", "reference", "plain")


def sweep(
    sizes: list[int], dim: int, rounds: int, materialized_up_to: int = 16384, seconds_per_size: float = 60.0
) -> dict:
    """Forward + backward time of every path at each ``M``, and which one the dispatch takes.

    Each size gets ``rounds`` interleaved rounds, fewer when one round would exceed
    ``seconds_per_size`` (one round, no warm-up, at the largest sizes). The materialized
    paths (``reference``, ``plain``) are not timed above ``materialized_up_to``: at
    ``M = 65536`` one ``M x M`` float32 buffer is 17 GB. ``dispatch`` names the path
    :func:`tase_loss.functional.contrastive_rows` takes at that size with the extension
    built, ``dispatch_without_extension`` the one it takes without.
    """
    from tase_loss.functional.rows import CHUNKED_ABOVE

    has_fused = fused_available()
    table = []
    for size in sizes:
        providers = tuple(
            name
            for name in SWEEP_PROVIDERS
            if (name != "fused" or has_fused) and (name in ("fused", "chunked") or size <= materialized_up_to)
        )
        small = size <= materialized_up_to
        probe = time_providers(size, dim, 1, providers, warm_up=small)
        round_seconds = sum(values[0] for values in probe.values())
        repeat = max(1, int(0.02 / min(values[0] for values in probe.values())))
        size_rounds = max(1, min(rounds, int(seconds_per_size / (round_seconds * repeat))))
        samples = time_providers(size, dim, size_rounds, providers, warm_up=small, repeat=repeat)
        medians = {name: statistics.median(values) for name, values in samples.items()}
        row = {
            "rows": size,
            "rounds": size_rounds,
            "calls_per_sample": repeat,
            "seconds_median": medians,
            "best": min(medians, key=medians.get),
            "dispatch": "fused" if has_fused else None,
            "dispatch_without_extension": "chunked" if size * size > CHUNKED_ABOVE else "reference",
        }
        if "plain" in samples:
            row["over_plain"] = {name: ratio_summary(samples, name, "plain") for name in samples if name != "plain"}
        if "reference" in samples:
            row["chunked_over_reference"] = ratio_summary(samples, "chunked", "reference")
        if has_fused:
            others = [name for name in samples if name != "fused"]
            best_other = min(others, key=medians.get)
            row["fused_over_best_other"] = {"other": best_other, **ratio_summary(samples, "fused", best_other)}
        table.append(row)
        print(json.dumps(row), flush=True)
    return {"dim": dim, "device": f"cpu, {torch.get_num_threads()} threads", "sweep": table}


def peak_memory(provider: str, rows: int, dim: int, limit_gb: float) -> dict:
    """Peak-RSS growth (MB) of one forward + backward in a fresh, memory-limited process.

    The kernel's high-water mark (VmHWM) is reset just before the step (``5`` to
    ``/proc/self/clear_refs``), so the import of torch does not hide the step's peak.
    """
    code = (
        "import json, resource, sys\n"
        f"sys.path[:0] = [{str(REPO / 'benchmarks')!r}]\n"
        "import torch\n"
        "torch.set_num_threads(2)\n"
        f"limit = int({limit_gb} * 2**30)\n"
        "resource.setrlimit(resource.RLIMIT_AS, (limit, limit))\n"
        "from bench_fused import make_step\n"
        "def status(field):\n"
        "    for line in open('/proc/self/status'):\n"
        "        if line.startswith(field + ':'):\n"
        "            return int(line.split()[1]) / 1024\n"
        f"step = make_step({provider!r}, {rows}, {dim})\n"
        "open('/proc/self/clear_refs', 'w').write('5')\n"
        "before = status('VmRSS')\n"
        "try:\n"
        "    step()\n"
        "    outcome = 'ok'\n"
        "except (RuntimeError, MemoryError) as error:\n"
        "    outcome = 'out of memory: ' + str(error).splitlines()[0][:120]\n"
        "peak = status('VmHWM')\n"
        "print(json.dumps({'outcome': outcome, 'baseline_mb': before, 'peak_mb': peak,"
        " 'growth_mb': peak - before}))\n"
    )
    start = time.perf_counter()
    completed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if completed.returncode != 0:
        tail = (completed.stderr.strip().splitlines() or ["killed"])[-1]
        return {"outcome": f"process failed: {tail[:160]}", "seconds": seconds}
    result = json.loads(completed.stdout.strip().splitlines()[-1])
    result["seconds"] = seconds
    return result


def cuda_peak_memory(provider: str, rows: int, dim: int, dtype: torch.dtype) -> dict:
    """Peak CUDA memory growth (MB) of one forward + backward, in this process."""
    step = make_step(provider, rows, dim, device="cuda", dtype=dtype)
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    try:
        step()
        torch.cuda.synchronize()
        outcome = "ok"
    except torch.cuda.OutOfMemoryError as error:
        outcome = "out of memory: " + str(error).splitlines()[0][:120]
    growth = (torch.cuda.max_memory_allocated() - before) / 2**20
    del step
    torch.cuda.empty_cache()
    return {"outcome": outcome, "growth_mb": growth}


def run(
    rows: int,
    dim: int,
    rounds: int,
    memory_rows: list[int],
    limit_gb: float,
    device: str = "cpu",
    dtype: torch.dtype = torch.float32,
    moco_queue: int = 65536,
) -> dict:
    on_cuda = device.startswith("cuda")
    if not on_cuda:
        torch.set_num_threads(2)
    # lightly's transcription builds its masks on the CPU, so it is a CPU-only provider;
    # the fused provider needs the built extension.
    providers = tuple(
        name
        for name in PROVIDERS
        if not (on_cuda and name == "lightly") and not (name == "fused" and not fused_available(device))
    )
    report: dict = {
        "rows": rows,
        "dim": dim,
        "rounds": rounds,
        "device": torch.cuda.get_device_name() if on_cuda else f"cpu, {torch.get_num_threads()} threads",
        "dtype": str(dtype),
    }
    if rounds > 0:
        samples = time_providers(rows, dim, rounds, providers, device=device, dtype=dtype)
        report["seconds_median"] = {name: statistics.median(v) for name, v in samples.items()}
        report["over_plain"] = {name: ratio_summary(samples, name, "plain") for name in samples if name != "plain"}
        report["over_gemm3"] = {name: ratio_summary(samples, name, "gemm3") for name in samples if name != "gemm3"}
    if rounds > 0 and moco_queue > 0 and not on_cuda and "fused" in providers:  # the MoCo rows compare fused
        moco = time_moco(256, moco_queue, dim, rounds)
        report["moco_batch_256_queue"] = moco_queue
        report["moco_seconds_median"] = {name: statistics.median(v) for name, v in moco.items()}
        report["moco_fused_over_gemm2"] = ratio_summary(moco, "fused", "gemm2")
        report["moco_reference_over_fused"] = ratio_summary(moco, "reference", "fused")
    memory_providers = tuple(name for name in providers if name not in ("gemm3", "lightly", "compiled"))
    report["memory"] = {
        f"{name}@{size}": (
            cuda_peak_memory(name, size, dim, dtype)
            if on_cuda
            else peak_memory(name, size, dim, limit_gb)
        )
        for size in memory_rows
        for name in memory_providers
    }
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description="Fused op benchmark (forward + backward)")
    parser.add_argument("--rows", type=int, default=8192, help="M = 2B anchors for the timing")
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=7, help="0 skips the timing")
    parser.add_argument("--memory-rows", type=int, nargs="*", default=[4096, 16384, 65536])
    parser.add_argument("--limit-gb", type=float, default=12.0, help="RLIMIT_AS of CPU memory runs")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument(
        "--dtype", default="float32", choices=["float32", "bfloat16", "float16"],
        help="embedding dtype (CUDA runs; the CPU kernel widens halves to float32)",
    )
    parser.add_argument(
        "--moco-queue", type=int, default=65536, help="queue of the MoCo timing (B = 256); 0 skips"
    )
    parser.add_argument(
        "--sweep", type=int, nargs="*", help="time every path at these M instead (dispatch check)"
    )
    parser.add_argument("--json", type=Path, help="also write the report here")
    arguments = parser.parse_args()
    if arguments.sweep:
        torch.set_num_threads(2)
        report = sweep(arguments.sweep, arguments.dim, arguments.rounds)
    else:
        report = run(
            arguments.rows,
            arguments.dim,
            arguments.rounds,
            arguments.memory_rows,
            arguments.limit_gb,
            arguments.device,
            getattr(torch, arguments.dtype),
            arguments.moco_queue,
        )
    text = json.dumps(report, indent=2)
    print(text)
    if arguments.json:
        arguments.json.write_text(text + "\n")


if __name__ == "__main__":
    main()
