"""Runs the grid losses x seeds: build, pre-train, evaluate, collect results."""

from __future__ import annotations

import dataclasses
import os
import random
import sys
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import numpy as np
import torch

from tase_loss.experiments.augmentations import simclr_augmentation
from tase_loss.experiments.data import LongTailedData
from tase_loss.experiments.encoders import build_model
from tase_loss.experiments.evaluation import (
    extract_features,
    group_accuracies,
    knn_predict,
    linear_probe,
    per_class_accuracy,
    pseudo_label_diagnostics,
)
from tase_loss.experiments.methods import Method, MethodContext, MethodSettings, build_method
from tase_loss.experiments.training import TrainingConfig, train

__all__ = ["ExperimentConfig", "merge_results", "run_experiment", "run_single", "summarize"]

HISTOGRAM_BINS = 30


@dataclass
class ExperimentConfig:
    """One experiment: which losses and seeds, the encoder, the schedule, the settings.

    ``training.seed`` and ``training.checkpoint_path`` are filled per run.
    """

    losses: list[str]
    seeds: list[int]
    encoder: str
    training: TrainingConfig
    method: MethodSettings = field(default_factory=MethodSettings)
    device: str = "cpu"
    amp: bool = True
    knn_k: int = 20
    output_dir: str = "tase_experiment_output"
    resume: bool = False


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _label_quality(data: LongTailedData) -> Callable[[int, Method], dict[str, float]]:
    """Epoch callback measuring pseudo-label quality after each clustering."""

    def measure(epoch: int, method: Method) -> dict[str, float]:
        labeler = method.labeler
        if labeler is None or not labeler.is_fitted or not labeler.should_recluster(epoch):
            return {}
        frequency = labeler.frequency(torch.arange(labeler.num_samples)).numpy()
        return pseudo_label_diagnostics(labeler.labels.numpy(), frequency, data.y_train, data.groups)

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


def run_single(
    loss: str, seed: int, data: LongTailedData, config: ExperimentConfig, device: torch.device
) -> dict[str, Any]:
    """Pre-train one encoder with ``loss`` and ``seed`` and evaluate it."""
    _seed_everything(seed)
    model = build_model(config.encoder, data.x_train.shape[1]).to(device)
    augment = simclr_augmentation(data.x_train.shape[2], data.x_train.shape[1]).to(device)
    context = MethodContext(
        data.x_train.shape[0],
        seed,
        device,
        amp=config.amp,
        settings=config.method,
        train_labels=data.y_train,
        epochs=config.training.epochs,
        image_shape=tuple(data.x_train.shape[1:]),
        augment=augment,
    )
    method = build_method(loss, context, model)
    checkpoint_folder = os.path.join(config.output_dir, "checkpoints")
    os.makedirs(checkpoint_folder, exist_ok=True)
    checkpoint_path = os.path.join(checkpoint_folder, f"{loss}_seed{seed}.pt")
    if not config.resume and os.path.exists(checkpoint_path):
        os.remove(checkpoint_path)
    training = dataclasses.replace(config.training, seed=seed, checkpoint_path=checkpoint_path)
    images = torch.from_numpy(data.x_train).to(device)
    history = train(model, method, images, augment, training, _label_quality(data), f"{loss} seed {seed}")
    completed = len(history) == training.epochs

    probe_features = extract_features(model.backbone, data.x_probe, device)
    test_features = extract_features(model.backbone, data.x_test, device)
    linear_per_class = per_class_accuracy(
        linear_probe(probe_features, data.y_probe, test_features), data.y_test, data.num_classes
    )
    knn_per_class = per_class_accuracy(
        knn_predict(probe_features, data.y_probe, test_features, data.num_classes, config.knn_k),
        data.y_test,
        data.num_classes,
    )
    return {
        "loss": loss,
        "seed": seed,
        "epochs_completed": len(history),
        "completed": completed,
        "linear": group_accuracies(linear_per_class, data.groups),
        "linear_per_class": linear_per_class.tolist(),
        "knn": group_accuracies(knn_per_class, data.groups),
        "history": history,
        "sample_statistics": _summarize_statistics(method.sample_statistics(), data.y_train, data.num_classes),
    }


def _mean_and_spread(values: list[float]) -> dict[str, float]:
    """Mean, sample std (``ddof=1``; 0 for one run), min and max of per-seed values."""
    array = np.asarray(values, dtype=np.float64)
    return {
        "mean": float(array.mean()),
        "std": float(array.std(ddof=1)) if array.size > 1 else 0.0,
        "min": float(array.min()),
        "max": float(array.max()),
        "n": int(array.size),
    }


def summarize(runs: list[dict[str, Any]], losses: list[str]) -> dict[str, dict[str, dict[str, float]]]:
    """Per loss: mean and spread over seeds of linear-probe groups, Std, All and kNN All."""
    summary = {}
    for loss in losses:
        selected = [run for run in runs if run["loss"] == loss]
        if not selected:
            continue
        metrics = {name: [run["linear"][name] for run in selected] for name in selected[0]["linear"]}
        metrics["knn"] = [run["knn"]["all"] for run in selected]
        summary[loss] = {name: _mean_and_spread(values) for name, values in metrics.items()}
    return summary


def resolve_device(name: str) -> torch.device:
    """``"auto"`` -> CUDA when available, else CPU; otherwise the named device."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda was requested but CUDA is not available")
    return device


def run_experiment(
    data: LongTailedData,
    config: ExperimentConfig,
    log: Callable[[str], None] = lambda line: print(line, file=sys.stderr),
    on_run_done: Optional[Callable[[dict[str, Any]], None]] = None,
) -> dict[str, Any]:
    """Every loss x seed of ``config`` on ``data``; returns the JSON-ready results."""
    device = resolve_device(config.device)
    runs = []
    # Seeds outside, losses inside: an interrupted grid still compares the losses.
    for seed in config.seeds:
        for loss in config.losses:
            run = run_single(loss, seed, data, config, device)
            log(
                f"{loss} seed {seed}: linear All {100 * run['linear']['all']:.1f} "
                f"Few {100 * run['linear']['few']:.1f} Std {100 * run['linear']['std']:.1f} "
                f"kNN {100 * run['knn']['all']:.1f} ({run['epochs_completed']} epochs)"
            )
            runs.append(run)
            if on_run_done is not None:
                on_run_done(run)
    config_record = dataclasses.asdict(config)
    config_record["device"] = str(device)
    return {
        "dataset": {
            "name": data.name,
            "class_counts": data.class_counts.tolist(),
            "groups": data.groups,
            "probe": data.probe_note,
            "test_per_class": np.bincount(data.y_test, minlength=data.num_classes).tolist(),
        },
        "config": config_record,
        "summary": summarize(runs, config.losses),
        "runs": runs,
    }


def merge_results(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """Combine results of the same dataset run as separate jobs (e.g. one per loss).

    Raises:
        ValueError: if the parts differ in dataset or a part is unfinished.
    """
    if not parts:
        raise ValueError("nothing to merge")
    for part in parts:
        if part.get("partial") or "dataset" not in part:
            raise ValueError("cannot merge an unfinished results file (it says partial)")
        if part["dataset"] != parts[0]["dataset"]:
            raise ValueError("cannot merge results of different datasets")
    runs = [run for part in parts for run in part["runs"]]
    losses = list(dict.fromkeys(run["loss"] for run in runs))
    return {
        "dataset": parts[0]["dataset"],
        "config": [part["config"] for part in parts],
        "commands": [part.get("command") for part in parts],
        "wall_seconds": [part.get("wall_seconds") for part in parts],
        "summary": summarize(runs, losses),
        "runs": runs,
    }
