"""Which frequency estimator sees the long tail? The study that chose TASE's default.

For every estimator of :mod:`tase_loss.estimators` (with its default options) and a
per-sample oracle where one exists, it measures against the true class frequencies:

- ``spearman``: rank correlation of each sample's estimated ``f_i`` with its class's
  true frequency;
- ``gap``: the share of the true log Few/Many gap the estimate recovers (1 = right
  scale, 0 = no signal; Few/Many = the 4 rarest / 3 most frequent classes);
- ``nmi`` of the estimator's groups with the classes (clustering estimators);
- ``seconds`` per estimate.

On three kinds of data:

(a) planted long-tailed mixtures on the sphere (10 classes, ratio 100, D = 64,
    ``tase_loss.experiments.data.planted_mixture``) at three overlaps, several seeds,
    with the Bayes posterior (true means, concentration and priors) as the reference
    a label-free estimator cannot beat;
(b) digits-LT (the runner's embedded default): raw pixels, and the backbone features
    and projections of NT-Xent encoders trained by the runner (40 epochs);
(c) CIFAR-10-LT: raw 16x16 pixels and the features of the CPU encoders given;
(d) during training (digits-LT, the runner's ``tase`` method): the quality of the last
    estimate of each estimator, including BCL's momentum loss, which needs the
    training signal.

Usage (the command behind docs/results.md)::

    python studies/frequency_estimators.py --output docs/results/frequency_estimators \\
        --cifar-checkpoints runs/cifar_learning/jobs/ntxent_seed*/checkpoints/*.pt
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import subprocess
import sys
import time
from typing import Any, Optional

import numpy as np
import torch

from tase_loss import build_estimator
from tase_loss.estimators import ESTIMATORS, KNNDensityEstimator
from tase_loss.experiments.data import (
    OVERLAPS,
    LongTailedData,
    group_classes,
    load_digits_lt,
    load_npz,
    planted_mixture,
    resize_images,
)
from tase_loss.experiments.encoders import build_model
from tase_loss.experiments.evaluation import extract_features, frequency_quality

FEATURE_ESTIMATORS = [name for name, estimator in ESTIMATORS.items() if not estimator.uses_loss]
REPOSITORY = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _quality(name: str, points: np.ndarray, labels: np.ndarray, seed: int = 0) -> dict[str, Any]:
    groups = group_classes(np.bincount(labels))
    unit = torch.nn.functional.normalize(torch.as_tensor(points, dtype=torch.float32), dim=1)
    estimator = build_estimator(name)
    started = time.perf_counter()
    estimate = estimator.estimate(unit, seed=seed, num_threads=torch.get_num_threads())
    seconds = time.perf_counter() - started
    pseudo = None if estimate.labels is None else estimate.labels.numpy()
    return {**frequency_quality(estimate.log_frequency.numpy(), labels, groups, pseudo), "seconds": seconds}


def _bayes_posterior(points: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """``log sum_c P(c | x) pi_c`` with the true means, vMF concentration and priors."""
    counts = np.bincount(labels)
    prior = counts / counts.sum()
    means = np.stack([points[labels == c].mean(axis=0) for c in range(counts.size)])
    resultant = np.linalg.norm(means, axis=1).mean()
    means /= np.linalg.norm(means, axis=1, keepdims=True)
    dim = points.shape[1]
    concentration = resultant * (dim - resultant**2) / (1 - resultant**2)
    logits = concentration * points @ means.T + np.log(prior)
    logits -= logits.max(axis=1, keepdims=True)
    posterior = np.exp(logits)
    posterior /= posterior.sum(axis=1, keepdims=True)
    return np.log(posterior @ prior), (posterior.argmax(axis=1) == labels).mean()


def planted(seeds: list[int]) -> list[dict[str, Any]]:
    rows = []
    for overlap in OVERLAPS:
        for seed in seeds:
            points, labels = planted_mixture(seed, overlap)
            bayes, accuracy = _bayes_posterior(points, labels)
            groups = group_classes(np.bincount(labels))
            rows.append(
                {
                    "data": f"planted {overlap}",
                    "seed": seed,
                    "features": "points",
                    "estimator": "bayes-posterior",
                    "bayes_accuracy": float(accuracy),
                    **frequency_quality(bayes, labels, groups),
                }
            )
            for name in FEATURE_ESTIMATORS:
                rows.append(
                    {
                        "data": f"planted {overlap}",
                        "seed": seed,
                        "features": "points",
                        "estimator": name,
                        **_quality(name, points, labels, seed),
                    }
                )
            print(f"planted {overlap} seed {seed}: done (Bayes accuracy {accuracy:.3f})", file=sys.stderr)
    return rows


def _encoder_features(data: LongTailedData, encoder: str, checkpoint: str) -> tuple[np.ndarray, np.ndarray]:
    """Backbone features and projections of the training images under a runner checkpoint."""
    model = build_model(encoder, data.x_train.shape[1])
    model.load_state_dict(torch.load(checkpoint, map_location="cpu", weights_only=True)["model"])
    model.eval()
    features = extract_features(model.backbone, data.x_train, torch.device("cpu"))
    with torch.no_grad():
        projections = model.projector(torch.from_numpy(features)).numpy()
    return features, projections


def _encoder_rows(data: LongTailedData, dataset: str, encoder: str, checkpoints: list[str]) -> list[dict[str, Any]]:
    labels = data.y_train
    rows = [
        {
            "data": dataset,
            "seed": 0,
            "features": "raw pixels",
            "estimator": name,
            **_quality(name, data.x_train.reshape(len(labels), -1), labels),
        }
        for name in FEATURE_ESTIMATORS
    ]
    for position, checkpoint in enumerate(checkpoints):
        features, projections = _encoder_features(data, encoder, checkpoint)
        for kind, points in (("backbone", features), ("projection", projections)):
            for name in FEATURE_ESTIMATORS:
                rows.append(
                    {
                        "data": dataset,
                        "seed": position,
                        "features": kind,
                        "estimator": name,
                        "checkpoint": os.path.relpath(checkpoint, REPOSITORY),
                        **_quality(name, points, labels),
                    }
                )
            # the knn-density smoothing, ablated
            for rounds in (0, 6):
                estimator = KNNDensityEstimator(smoothing_rounds=rounds)
                unit = torch.nn.functional.normalize(torch.as_tensor(points, dtype=torch.float32), dim=1)
                estimate = estimator.estimate(unit)
                rows.append(
                    {
                        "data": dataset,
                        "seed": position,
                        "features": kind,
                        "estimator": f"knn-density (smoothing {rounds})",
                        **frequency_quality(estimate.log_frequency.numpy(), labels, data.groups),
                    }
                )
        print(f"{dataset} encoder {position}: done", file=sys.stderr)
    return rows


def _train_digits(output: str, methods: str, estimator: Optional[str] = None) -> str:
    """Train with the runner (the embedded default's 5 seeds x 40 epochs) unless done already."""
    if not os.path.isfile(os.path.join(output, "results.json")):
        command = [
            sys.executable,
            "-m",
            "tase_loss.experiments",
            "--methods",
            methods,
            "--output",
            output,
            "--no-progress",
        ]
        if estimator is not None:
            command += ["--estimator", estimator]
        subprocess.run(command, check=True, cwd=REPOSITORY)
    return output


def during_training(folder: str) -> list[dict[str, Any]]:
    """The last estimate's quality in each digits ``tase`` run, for every estimator."""
    rows = []
    for name in ESTIMATORS:
        output = _train_digits(os.path.join(folder, f"digits_tase_{name}"), "tase", name)
        with open(os.path.join(output, "results.json"), encoding="utf-8") as handle:
            results = json.load(handle)
        for run in results["runs"]:
            last = [record for record in run["history"] if "spearman" in record][-1]
            rows.append(
                {
                    "data": "digits-LT, during TASE training",
                    "seed": run["seed"],
                    "features": "backbone",
                    "estimator": name,
                    "spearman": last["spearman"],
                    "gap_recovered": last["gap_recovered"],
                    "nmi": last.get("nmi"),
                    "seconds": last["epoch_end_seconds"],
                    "few": run["linear"]["few"],
                    "all": run["linear"]["all"],
                }
            )
    return rows


def summarize(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean and min/max over seeds per (data, features, estimator)."""
    table: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for row in rows:
        table.setdefault((row["data"], row["features"], row["estimator"]), []).append(row)
    summary = []
    for (data, features, estimator), group in table.items():
        entry: dict[str, Any] = {"data": data, "features": features, "estimator": estimator, "n": len(group)}
        for metric in ("spearman", "gap_recovered", "nmi", "seconds"):
            values = [row[metric] for row in group if row.get(metric) is not None]
            if values:
                entry[metric] = {
                    "mean": float(np.mean(values)),
                    "min": float(np.min(values)),
                    "max": float(np.max(values)),
                }
        summary.append(entry)
    return summary


def markdown(summary: list[dict[str, Any]]) -> str:
    def cell(entry: dict[str, Any], metric: str, digits: int = 2) -> str:
        if metric not in entry:
            return "-"
        value = entry[metric]
        if entry["n"] == 1 or metric == "seconds":
            return f"{value['mean']:+.{digits}f}" if metric != "seconds" else f"{value['mean']:.2f}"
        return f"{value['mean']:+.{digits}f} ({value['min']:+.{digits}f} .. {value['max']:+.{digits}f})"

    lines = [
        "| data | features | estimator | n | Spearman | gap recovered | NMI | s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for entry in summary:
        lines.append(
            f"| {entry['data']} | {entry['features']} | {entry['estimator']} | {entry['n']} | "
            f"{cell(entry, 'spearman')} | {cell(entry, 'gap_recovered')} | {cell(entry, 'nmi')} | "
            f"{cell(entry, 'seconds')} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", default="frequency_estimator_study")
    parser.add_argument("--seeds", default="0,1,2", help="planted-mixture seeds")
    parser.add_argument("--cifar", default=os.path.join(REPOSITORY, "..", "shared", "data", "cifar10_lt_r100.npz"))
    parser.add_argument("--cifar-image-size", type=int, default=16)
    parser.add_argument("--cifar-checkpoints", nargs="*", default=[], help="runner checkpoints of small-cnn encoders")
    parser.add_argument("--skip-training", action="store_true", help="leave out part (d)")
    arguments = parser.parse_args()
    os.makedirs(arguments.output, exist_ok=True)
    torch.set_num_threads(min(2, torch.get_num_threads()))

    rows = planted([int(seed) for seed in arguments.seeds.split(",")])
    digits_runs = _train_digits(os.path.join(arguments.output, "digits_ntxent"), "ntxent")
    checkpoints = sorted(glob.glob(os.path.join(digits_runs, "checkpoints", "*.pt")))
    rows += _encoder_rows(load_digits_lt(), "digits-LT", "digits-cnn", checkpoints)
    if os.path.isfile(arguments.cifar):
        cifar = resize_images(load_npz(arguments.cifar), arguments.cifar_image_size)
        rows += _encoder_rows(
            cifar,
            f"CIFAR-10-LT {arguments.cifar_image_size}x{arguments.cifar_image_size}",
            "small-cnn",
            sorted(arguments.cifar_checkpoints),
        )
    if not arguments.skip_training:
        rows += during_training(arguments.output)
    summary = summarize(rows)
    table = markdown(summary)
    with open(os.path.join(arguments.output, "frequency_estimators.json"), "w", encoding="utf-8") as handle:
        json.dump({"command": " ".join(sys.argv), "rows": rows, "summary": summary}, handle, indent=1)
    with open(os.path.join(arguments.output, "frequency_estimators.md"), "w", encoding="utf-8") as handle:
        handle.write(table + "\n")
    print(table)


if __name__ == "__main__":
    main()
