"""Runs the grid methods x seeds: build, pre-train, evaluate, collect and compare results."""

from __future__ import annotations

import dataclasses
import os
import random
import sys
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import numpy as np
import torch

import tase_loss
from tase_loss.experiments.arguments import PROGRAM
from tase_loss.experiments.augmentations import simclr_augmentation
from tase_loss.experiments.data import LongTailedData
from tase_loss.experiments.encoders import build_model
from tase_loss.experiments.evaluation import (
    extract_features,
    frequency_quality,
    group_accuracies,
    knn_predict,
    linear_probe,
    per_class_accuracy,
)
from tase_loss.experiments.methods import Method, MethodContext, MethodSettings, build_method
from tase_loss.experiments.reporting import mean_and_spread
from tase_loss.experiments.training import TrainingConfig, to_device_images, train

__all__ = [
    "BASELINE",
    "ExperimentConfig",
    "merge_results",
    "paired_differences",
    "resolve_device",
    "run_experiment",
    "run_single",
    "summarize",
]

HISTOGRAM_BINS = 30
BASELINE = "ntxent"
"""The method every other one is compared with, seed by seed."""


@dataclass
class ExperimentConfig:
    """One experiment: which methods and seeds, the encoder, the schedule, the settings.

    ``training.seed``, ``training.checkpoint_path`` and ``training.settings`` are filled
    per run.

    Attributes:
        precision: CUDA autocast dtype, ``"bf16"`` (default), ``"fp16"`` or ``"fp32"``.
        compile: ``torch.compile`` the encoder (``nn.Module.compile``, in place).
        checkpoints: write ``OUTPUT/checkpoints/<method>_seed<s>.pt`` (needed for resume).
        resume_anyway: resume even from checkpoints written under other settings.
    """

    methods: list[str]
    seeds: list[int]
    encoder: str
    training: TrainingConfig
    settings: MethodSettings = field(default_factory=MethodSettings)
    device: str = "cpu"
    precision: str = "bf16"
    compile: bool = False
    knn_k: int = 20
    output_dir: str = "tase_experiment_output"
    resume: bool = False
    resume_anyway: bool = False
    checkpoints: bool = True


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _estimate_quality(data: LongTailedData) -> Callable[[int, Method], dict[str, Any]]:
    """Epoch callback: how well the method's fresh frequency estimates follow the classes.

    Beside :func:`frequency_quality`'s scores: the group sizes (``group_sizes``, largest
    first) and their ``purity`` against the true classes (the share of samples in their
    group's majority class), the method's :meth:`~tase_loss.Guidance.summary`
    (``num_groups``, log-frequency span, temperature and weight range), and the latest
    estimate's own diagnostics, each prefixed ``estimator_`` (so its ``seconds`` does not
    overwrite the epoch's): for ``stable-count`` its ``estimator_trust`` says whether the
    groups were counted (1) or the density stood in (0).
    """

    def measure(epoch: int, method: Method) -> dict[str, Any]:
        labeler = method.labeler
        if labeler is None or not labeler.is_fitted or not labeler.should_estimate(epoch):
            return {}
        labels = labeler.labels.numpy()
        quality = frequency_quality(
            labeler.log_frequency_table().numpy(), data.y_train, data.groups, labels if (labels >= 0).all() else None
        )
        record: dict[str, Any] = {name: value for name, value in quality.items() if value is not None}
        if (labels >= 0).all():
            sizes = np.bincount(labels)
            majority = sum(np.bincount(data.y_train[labels == group]).max() for group in np.flatnonzero(sizes))
            record["group_sizes"] = sorted(sizes[sizes > 0].tolist(), reverse=True)
            record["purity"] = float(majority / labels.size)
        record.update((method.guidance or labeler).summary())
        record.update({f"estimator_{name}": value for name, value in labeler.last_diagnostics.items()})
        return record

    return measure


def _summarize_statistics(statistics: dict[str, np.ndarray], labels: np.ndarray, num_classes: int) -> dict[str, Any]:
    """Per-class means and a histogram of each per-sample statistic (JSON-sized)."""
    summary: dict[str, Any] = {}
    for name, values in statistics.items():
        values = values.astype(np.float64)
        counts, edges = np.histogram(np.log10(values) if name == "frequency" else values, bins=HISTOGRAM_BINS)
        summary[name] = {
            "per_class_mean": [float(values[labels == c].mean()) for c in range(num_classes)],
            "quantiles": {str(q): float(np.quantile(values, q)) for q in (0.0, 0.05, 0.5, 0.95, 1.0)},
            "histogram": {"counts": counts.tolist(), "edges": edges.tolist(), "log10": name == "frequency"},
        }
    return summary


def run_settings(method: str, seed: int, data: LongTailedData, config: ExperimentConfig) -> dict[str, Any]:
    """What a checkpoint of this run must agree with to be resumed (not the stop point)."""
    training = dataclasses.asdict(config.training)
    for transient in (
        "checkpoint_path",
        "checkpoint_every",
        "stop_after_epochs",
        "progress",
        "settings",
        "ignore_settings",
    ):
        training.pop(transient)
    return {
        "data": {"name": data.name, "class_counts": data.class_counts.tolist()},
        "method": method,
        "seed": seed,
        "encoder": config.encoder,
        "training": {**training, "seed": seed},
        "settings": dataclasses.asdict(config.settings),
        "precision": config.precision,
        "versions": {"tase_loss": tase_loss.__version__, "torch": str(torch.__version__)},
    }


def run_single(
    method_name: str, seed: int, data: LongTailedData, config: ExperimentConfig, device: torch.device
) -> dict[str, Any]:
    """Pre-train one encoder with ``method_name`` and ``seed`` and evaluate it."""
    _seed_everything(seed)
    model = build_model(config.encoder, data.x_train.shape[1]).to(device)
    channels_last = device.type == "cuda"
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    augment = simclr_augmentation(data.x_train.shape[2], data.x_train.shape[1]).to(device)
    context = MethodContext(
        data.x_train.shape[0],
        seed,
        device,
        config.settings,
        precision=config.precision,
        train_labels=data.y_train,
        epochs=config.training.epochs,
        image_shape=tuple(data.x_train.shape[1:]),
        augment=augment,
        train_images=data.x_train,
    )
    method = build_method(method_name, context, model)
    if config.compile:
        model.compile()
    checkpoint_path = None
    if config.checkpoints:
        checkpoint_folder = os.path.join(config.output_dir, "checkpoints")
        os.makedirs(checkpoint_folder, exist_ok=True)
        checkpoint_path = os.path.join(checkpoint_folder, f"{method_name}_seed{seed}.pt")
        if not config.resume and os.path.exists(checkpoint_path):
            os.remove(checkpoint_path)
    training = dataclasses.replace(
        config.training,
        seed=seed,
        checkpoint_path=checkpoint_path,
        channels_last=channels_last,
        settings=run_settings(method_name, seed, data, config),
        ignore_settings=config.resume_anyway,
    )
    images = to_device_images(data.x_train, device)
    history = train(model, method, images, augment, training, _estimate_quality(data), f"{method_name} seed {seed}")
    if method.labeler is not None and len(history) == training.epochs:
        method.labeler.warn_if_unfitted(training.epochs)

    probe_features = extract_features(model.backbone, data.x_probe, device)
    test_features = extract_features(model.backbone, data.x_test, device)
    linear_per_class = per_class_accuracy(
        linear_probe(probe_features, data.y_probe, test_features), data.y_test, data.num_classes
    )
    knn_per_class = per_class_accuracy(
        knn_predict(probe_features, data.y_probe, test_features, data.num_classes, config.knn_k, device),
        data.y_test,
        data.num_classes,
    )
    return {
        "method": method_name,
        "seed": seed,
        "epochs_completed": len(history),
        "completed": len(history) == training.epochs,
        "linear": group_accuracies(linear_per_class, data.groups),
        "linear_per_class": linear_per_class.tolist(),
        "knn": group_accuracies(knn_per_class, data.groups),
        "history": history,
        "sample_statistics": _summarize_statistics(method.sample_statistics(), data.y_train, data.num_classes),
    }


def _metrics(run: dict[str, Any]) -> dict[str, float]:
    return {**run["linear"], "knn": run["knn"]["all"]}


def summarize(runs: list[dict[str, Any]], methods: list[str]) -> dict[str, dict[str, dict[str, float]]]:
    """Per method: mean and spread over seeds of linear-probe groups, Std, All and kNN All."""
    summary = {}
    for method in methods:
        selected = [_metrics(run) for run in runs if run["method"] == method]
        if selected:
            summary[method] = {name: mean_and_spread([metrics[name] for metrics in selected]) for name in selected[0]}
    return summary


def paired_differences(
    runs: list[dict[str, Any]], methods: list[str], baseline: str = BASELINE
) -> dict[str, dict[str, Any]]:
    """Per method: ``method - baseline`` on every metric, paired by seed.

    Same seed = same initialization, data order and augmentations until the methods
    diverge, so the paired difference removes most of the seed-to-seed spread.

    Returns:
        method -> metric -> ``{"per_seed": {seed: diff}, "mean", "std", "min", "max", "n"}``;
        empty when the baseline did not run or no seed is shared.
    """
    by_seed = {run["seed"]: _metrics(run) for run in runs if run["method"] == baseline}
    result: dict[str, dict[str, Any]] = {}
    for method in methods:
        if method == baseline:
            continue
        paired = {run["seed"]: _metrics(run) for run in runs if run["method"] == method and run["seed"] in by_seed}
        if not paired:
            continue
        result[method] = {}
        for name in next(iter(paired.values())):
            per_seed = {str(seed): metrics[name] - by_seed[seed][name] for seed, metrics in sorted(paired.items())}
            result[method][name] = {"per_seed": per_seed, **mean_and_spread(list(per_seed.values()))}
    return result


def resolve_device(name: str) -> torch.device:
    """``"auto"`` -> CUDA when available, else CPU; otherwise the named device."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda was requested but CUDA is not available")
    return device


def dataset_record(data: LongTailedData) -> dict[str, Any]:
    return {
        "name": data.name,
        "class_counts": data.class_counts.tolist(),
        "class_names": list(data.class_names),
        "groups": data.groups,
        "probe": data.probe_note,
        "test_per_class": np.bincount(data.y_test, minlength=data.num_classes).tolist(),
    }


def run_experiment(
    data: LongTailedData,
    config: ExperimentConfig,
    log: Callable[[str], None] = lambda line: print(line, file=sys.stderr),
    on_run_done: Optional[Callable[[dict[str, Any]], None]] = None,
) -> dict[str, Any]:
    """Every method x seed of ``config`` on ``data``; returns the JSON-ready results."""
    device = resolve_device(config.device)
    runs = []
    # Seeds outside, methods inside: an interrupted grid still compares the methods.
    for seed in config.seeds:
        for method in config.methods:
            run = run_single(method, seed, data, config, device)
            log(
                f"{method} seed {seed}: linear All {100 * run['linear']['all']:.1f} "
                f"Few {100 * run['linear']['few']:.1f} Std {100 * run['linear']['std']:.1f} "
                f"kNN {100 * run['knn']['all']:.1f} ({run['epochs_completed']} epochs)"
            )
            runs.append(run)
            if on_run_done is not None:
                on_run_done(run)
    config_record = dataclasses.asdict(config)
    config_record["device"] = str(device)
    return {
        "dataset": dataset_record(data),
        "config": config_record,
        "summary": summarize(runs, config.methods),
        "differences": paired_differences(runs, config.methods),
        "runs": runs,
    }


def check_results_file(part: object, name: str) -> dict[str, Any]:
    """Require a finished results file of the runner; ``name`` is what errors call it.

    Raises:
        ValueError: if ``part`` says ``partial`` (its run is unfinished) or is not an
            object with ``dataset`` and a ``runs`` list.
    """
    if isinstance(part, dict) and part.get("partial"):
        raise ValueError(f"{name} is an unfinished results file (it says partial): resume its run first")
    if not (isinstance(part, dict) and isinstance(part.get("runs"), list) and "dataset" in part):
        raise ValueError(f"{name} is not a results JSON of {PROGRAM} (an object with 'dataset' and 'runs')")
    return part


def merge_results(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """Combine results of the same dataset run as separate jobs (e.g. one per method).

    The result keeps one ``config``, ``commands`` and ``job_seconds`` entry per job. A
    part may itself be a merge (a ``--merge`` output, or a ``--parallel`` run's, whose
    ``command`` and ``wall_seconds`` are the parent's): its per-job entries are carried
    over, so seeds can be added to a committed table later.

    Raises:
        ValueError: if a part is no finished results file (:func:`check_results_file`),
            the parts differ in dataset, or two parts hold the same (method, seed) run.
    """
    if not parts:
        raise ValueError("nothing to merge")
    for number, part in enumerate(parts, 1):
        check_results_file(part, f"part {number} of the merge")
        if part["dataset"] != parts[0]["dataset"]:
            raise ValueError("cannot merge results of different datasets")
    runs = [run for part in parts for run in part["runs"]]
    seen: set[tuple[str, int]] = set()
    for run in runs:
        key = (run["method"], run["seed"])
        if key in seen:
            raise ValueError(f"cannot merge: method {key[0]!r} seed {key[1]} appears twice")
        seen.add(key)
    methods = list(dict.fromkeys(run["method"] for run in runs))

    def per_job(part: dict[str, Any], merged_key: str, key: str) -> list[Any]:
        if "commands" not in part:
            return [part.get(key)]
        if not isinstance(part.get(merged_key), list):
            raise ValueError(f"cannot merge: a merged results file has no {merged_key!r} list (an older format)")
        return list(part[merged_key])

    return {
        "dataset": parts[0]["dataset"],
        "config": [config for part in parts for config in per_job(part, "config", "config")],
        "commands": [command for part in parts for command in per_job(part, "commands", "command")],
        "job_seconds": [seconds for part in parts for seconds in per_job(part, "job_seconds", "wall_seconds")],
        "summary": summarize(runs, methods),
        "differences": paired_differences(runs, methods),
        "runs": runs,
    }
