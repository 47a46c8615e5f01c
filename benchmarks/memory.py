"""Peak memory of one provider at one size, measured in a fresh Python process.

In-process numbers lie after the first run (allocator caches, the peak of an earlier
provider), so :func:`measure_peak` starts ``python -m benchmarks.memory`` once per
provider and size. The child reports, as JSON on its last line:

* ``import_mib``: peak RSS after the imports and the ``(B, D)`` inputs, before any
  loss call (the import-only baseline);
* ``peak_mib``: peak RSS of the whole process (what ``/usr/bin/time -v`` calls
  "Maximum resident set size"); for ``compiled`` it includes compilation;
* ``call_mib``: growth of the peak during a second, warm call over the RSS just
  before it (the peak counter is reset through ``/proc/self/clear_refs``): the
  memory one call of the loss needs;
* on CUDA, ``call_mib`` and ``peak_mib`` come from ``torch.cuda.max_memory_allocated``.

The child caps its address space at its size after the imports plus ``cap_gib``
(``RLIMIT_AS``), so a provider that needs more fails its own process with an
allocation error, recorded as ``oom``, instead of exhausting a shared machine. It
runs with ``MALLOC_MMAP_THRESHOLD_=65536`` so that glibc returns freed buffers to the
system and the RSS before the second call holds no freed memory of the first.

Peaks are read from ``VmHWM`` in ``/proc/self/status``, not ``ru_maxrss``: Linux
carries ``ru_maxrss`` across ``exec``, so a child forked from a large pytest process
would report the parent's size.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import re
import resource
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

REPO_ROOT = Path(__file__).resolve().parent.parent
MODES = ("forward", "forward+backward")
TEMPERATURE = 0.2


@dataclass(frozen=True)
class MemoryResult:
    """What the child reported; sizes in MiB, ``status`` "ok", "oom", "unavailable" or "error"."""

    status: str
    import_mib: Optional[float] = None
    peak_mib: Optional[float] = None
    call_mib: Optional[float] = None
    detail: str = ""


def _status_kib(field: str) -> int:
    with open("/proc/self/status", encoding="ascii") as status:
        return int(re.search(rf"^{field}:\s+(\d+)", status.read(), re.MULTILINE).group(1))


def peak_growth_mib(call: Callable[[], object]) -> float:
    """How far the peak RSS rises during ``call()`` above the RSS just before it, in MiB.

    Resets the peak counter through ``/proc/self/clear_refs`` (Linux). Run in a fresh
    process started with ``MALLOC_MMAP_THRESHOLD_=65536``, so that buffers freed before
    the call are back with the system and not reused from the heap.
    """
    gc.collect()
    with open("/proc/self/clear_refs", "w", encoding="ascii") as clear_refs:
        clear_refs.write("5")  # resets the peak-RSS counter to the current RSS
    before_kib = _status_kib("VmRSS")
    call()
    return (_status_kib("VmHWM") - before_kib) / 1024


def _is_out_of_memory(error: BaseException) -> bool:
    if isinstance(error, MemoryError):
        return True
    text = str(error).lower()
    return "out of memory" in text or "can't allocate memory" in text or "failed to allocate" in text


def _run_child(provider_name: str, batch: int, dim: int, mode: str, device: str, cap_gib: float) -> dict:
    import torch

    from benchmarks.providers import PROVIDERS

    provider = PROVIDERS[provider_name]
    reason = provider.why_unavailable()
    if reason is not None:
        return {"status": "unavailable", "detail": reason}
    loss_function = provider.build(TEMPERATURE)
    generator = torch.Generator().manual_seed(0)
    out0, out1 = (
        torch.randn(batch, dim, generator=generator).to(device).requires_grad_()
        for _ in range(2)
    )

    def call() -> None:
        loss = loss_function(out0, out1)
        if mode == "forward+backward":
            loss.backward()
            out0.grad = out1.grad = None

    import_mib = _status_kib("VmHWM") / 1024
    if device == "cpu":
        cap = _status_kib("VmSize") * 1024 + int(cap_gib * 2**30)
        resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
    try:
        call()  # warm: compilation, lazy initialization
        gc.collect()
        if device == "cpu":
            first_peak_kib = _status_kib("VmHWM")
            call_mib = peak_growth_mib(call)
            peak_mib = max(first_peak_kib, _status_kib("VmHWM")) / 1024
        else:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            before = torch.cuda.memory_allocated()
            call()
            torch.cuda.synchronize()
            call_mib = (torch.cuda.max_memory_allocated() - before) / 2**20
            peak_mib = torch.cuda.max_memory_allocated() / 2**20
    except Exception as error:
        status = "oom" if _is_out_of_memory(error) else "error"
        return {"status": status, "import_mib": import_mib, "detail": f"{type(error).__name__}: {error}"[:300]}
    return {"status": "ok", "import_mib": import_mib, "peak_mib": peak_mib, "call_mib": call_mib}


def measure_peak(
    provider: str,
    batch: int,
    dim: int,
    mode: str = "forward+backward",
    device: str = "cpu",
    cap_gib: float = 6.0,
    timeout_s: float = 600.0,
) -> MemoryResult:
    """Run one provider at one size in a fresh process and return its memory figures."""
    command = [
        sys.executable, "-m", "benchmarks.memory", provider,
        "--batch", str(batch), "--dim", str(dim), "--mode", mode,
        "--device", device, "--cap-gib", str(cap_gib),
    ]
    environment = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536")
    environment["PYTHONPATH"] = os.pathsep.join(
        filter(None, [str(REPO_ROOT), environment.get("PYTHONPATH")])
    )
    try:
        finished = subprocess.run(
            command, cwd=REPO_ROOT, env=environment, capture_output=True, text=True, timeout=timeout_s
        )
    except subprocess.TimeoutExpired:
        return MemoryResult("error", detail=f"timed out after {timeout_s:.0f} s")
    lines = finished.stdout.strip().splitlines()
    if finished.returncode != 0 or not lines:
        tail = (finished.stderr or finished.stdout).strip().splitlines()[-1:] or ["no output"]
        status = "oom" if finished.returncode in (-9, 137) else "error"
        return MemoryResult(status, detail=f"exit {finished.returncode}: {tail[0][:300]}")
    return MemoryResult(**json.loads(lines[-1]))


def main(argv: Optional[list[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("provider")
    parser.add_argument("--batch", type=int, required=True, help="B, samples per view")
    parser.add_argument("--dim", type=int, required=True, help="D, embedding size")
    parser.add_argument("--mode", choices=MODES, default="forward+backward")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--cap-gib", type=float, default=6.0)
    arguments = parser.parse_args(argv)
    result = _run_child(
        arguments.provider, arguments.batch, arguments.dim, arguments.mode, arguments.device,
        arguments.cap_gib,
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
