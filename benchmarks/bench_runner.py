"""The runner's device-resident training path: epoch time, syncs per step, parallel runs.

Targets of the device-resident runner (docs/experiments.md), measured on a GPU:

- ResNet-18 (CIFAR stem), two views, batch 512, CIFAR-10-LT (12,406 images): one epoch
  <= 1.0 s on one H100/H200, so a 200-epoch run takes <= 4 minutes;
- at most one host synchronization per training step (counted with
  ``torch.cuda.set_sync_debug_mode("warn")``: every warning is one sync);
- 4 runs in parallel (processes on the same GPU) >= 2.5x the throughput of one.

Usage::

    # GPU (the targets)
    python benchmarks/bench_runner.py --device cuda --encoder resnet18 --batch-size 512 \\
        --data ../shared/data/cifar10_lt_r100.npz --methods ntxent,tase --compile --parallel 4
    # CPU (the same code path, tiny)
    python benchmarks/bench_runner.py --device cpu --encoder tiny-cnn --batch-size 64 --images 512

Prints one JSON object (``--output`` also writes it). Nothing here is asserted: timings
belong in a report, not in tests.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from tase_loss.experiments.augmentations import simclr_augmentation  # noqa: E402
from tase_loss.experiments.encoders import build_model  # noqa: E402
from tase_loss.experiments.methods import MethodContext, MethodSettings, build_method  # noqa: E402
from tase_loss.experiments.methods.contrastive import TASESettings  # noqa: E402
from tase_loss.experiments.training import TrainingConfig, to_device_images, train  # noqa: E402


def _images(arguments: argparse.Namespace) -> np.ndarray:
    if arguments.data:
        with np.load(arguments.data) as archive:
            return np.ascontiguousarray(archive["x"].transpose(0, 3, 1, 2))
    generator = np.random.default_rng(0)
    return generator.integers(0, 256, (arguments.images, 3, 32, 32), dtype=np.uint8)


def epoch_seconds(arguments: argparse.Namespace, method_name: str) -> dict:
    """Train ``arguments.epochs`` epochs of one method; per-epoch seconds and syncs per step."""
    device = torch.device(arguments.device)
    torch.manual_seed(0)
    pixels = _images(arguments)
    images = to_device_images(pixels, device)
    model = build_model(arguments.encoder, 3).to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    augment = simclr_augmentation(32, 3).to(device)
    settings = MethodSettings(tase=TASESettings(warmup_epochs=1))
    context = MethodContext(
        images.shape[0], 0, device, settings, precision=arguments.precision, epochs=arguments.epochs
    )
    method = build_method(method_name, context, model)
    if arguments.compile:
        model.compile()
    config = TrainingConfig(
        epochs=arguments.epochs, batch_size=arguments.batch_size, progress=False, channels_last=device.type == "cuda"
    )
    history = train(model, method, images, augment, config)
    result = {
        "method": method_name,
        "images": int(images.shape[0]),
        "epoch_seconds": [record["seconds"] for record in history],
        "epoch_end_seconds": [record["epoch_end_seconds"] for record in history],
    }
    if device.type == "cuda":
        result["syncs_per_step"] = _syncs_per_step(model, method, images, augment, arguments)
    return result


def _syncs_per_step(model, method, images, augment, arguments) -> float:
    """Synchronizations in one epoch of steps, per step (each sync-debug warning is one)."""
    config = TrainingConfig(epochs=1, batch_size=arguments.batch_size, progress=False, channels_last=True)
    steps = max(1, images.shape[0] // arguments.batch_size)
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            train(model, method, images, augment, config)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    syncs = [w for w in caught if "synchroniz" in str(w.message).lower()]
    return len(syncs) / steps


def _single_run_arguments(argv: list[str]) -> list[str]:
    """``argv`` without ``--parallel`` and ``--output`` (as ``--name value`` or ``--name=value``).

    Example:
        >>> _single_run_arguments(["--parallel", "4", "--epochs", "2", "--output=a.json"])
        ['--epochs', '2']
    """
    kept, skip_value = [], False
    for part in argv:
        if skip_value:
            skip_value = False
        elif part.split("=", 1)[0] in ("--parallel", "--output"):
            skip_value = "=" not in part
        else:
            kept.append(part)
    return kept


def parallel_throughput(arguments: argparse.Namespace, processes: int) -> dict:
    """Images per second of ``processes`` identical runs at once vs one run alone."""
    command = [sys.executable, __file__, "--single", *_single_run_arguments(sys.argv[1:])]

    def wall(count: int) -> float:
        started = time.perf_counter()
        jobs = [subprocess.Popen(command, stdout=subprocess.DEVNULL) for _ in range(count)]
        for job in jobs:
            if job.wait() != 0:
                raise RuntimeError("a parallel benchmark run failed")
        return time.perf_counter() - started

    one, many = wall(1), wall(processes)
    return {"processes": processes, "one_seconds": one, "all_seconds": many, "throughput_ratio": processes * one / many}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--encoder", default="resnet18")
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--epochs", type=int, default=3, help="the first pays compilation and autotuning")
    parser.add_argument("--data", default=None, help="a .npz with x (N, H, W, 3) uint8; default synthetic")
    parser.add_argument("--images", type=int, default=12406, help="synthetic images when --data is not given")
    parser.add_argument("--methods", default="ntxent,tase")
    parser.add_argument("--precision", default="bf16", choices=("bf16", "fp16", "fp32"))
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--parallel", type=int, default=0, help="also measure this many runs at once")
    parser.add_argument("--single", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--output", default=None)
    arguments = parser.parse_args()
    if arguments.data is not None and not os.path.isfile(arguments.data):
        parser.error(f"--data {arguments.data}: no such file (leave --data out for synthetic images)")
    report = {
        "device": torch.cuda.get_device_name() if arguments.device.startswith("cuda") else "cpu",
        "torch": str(torch.__version__),
        "settings": vars(arguments),
        "runs": [epoch_seconds(arguments, name) for name in arguments.methods.split(",")],
    }
    if arguments.parallel > 1 and not arguments.single:
        report["parallel"] = parallel_throughput(arguments, arguments.parallel)
    text = json.dumps(report, indent=1)
    print(text)
    if arguments.output:
        os.makedirs(os.path.dirname(os.path.abspath(arguments.output)), exist_ok=True)
        Path(arguments.output).write_text(text + "\n")


if __name__ == "__main__":
    main()
