"""Results out: a table a person can read, the JSON file, the PNG plot."""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np

__all__ = ["format_table", "plot_results", "write_json"]

COLUMNS = (("many", "Many"), ("medium", "Medium"), ("few", "Few"), ("all", "All"), ("std", "Std"), ("knn", "kNN"))


def format_table(summary: dict[str, dict[str, dict[str, float]]]) -> str:
    """Loss x Many/Medium/Few/All/Std/kNN, mean ± std over seeds, in percent.

    Example:
        >>> cell = {"mean": 0.5, "std": 0.01, "n": 2}
        >>> print(format_table({"ntxent": {name: cell for name, _ in COLUMNS}}))
        loss (linear probe, % mean ± std over seeds)   Many        Medium      Few         All         Std         kNN
        ntxent (2 seeds)                               50.0 ± 1.0  50.0 ± 1.0  50.0 ± 1.0  50.0 ± 1.0  50.0 ± 1.0  50.0 ± 1.0
    """
    names = {loss: f"{loss} ({next(iter(metrics.values()))['n']} seeds)" for loss, metrics in summary.items()}
    header_name = "loss (linear probe, % mean ± std over seeds)"
    width = max([len(header_name)] + [len(name) for name in names.values()]) + 3
    lines = [header_name.ljust(width) + "  ".join(title.ljust(10) for _, title in COLUMNS).rstrip()]
    for loss, metrics in summary.items():
        cells = [f"{100 * metrics[key]['mean']:4.1f} ± {100 * metrics[key]['std']:.1f}".ljust(10) for key, _ in COLUMNS]
        lines.append(names[loss].ljust(width) + "  ".join(cells).rstrip())
    return "\n".join(lines)


def write_json(results: dict[str, Any], path: str) -> None:
    """Write ``results`` as indented JSON (creating the folder)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(results, handle, indent=1)


def plot_results(results: dict[str, Any], path: str) -> None:
    """Per-class accuracy vs class frequency (one line per loss) and the TASE distributions.

    Left: linear-probe accuracy per class (mean ± std over seeds) against the class's
    training count, log scale. Middle / right: histograms of the per-sample
    temperatures and weights the guided losses ended with (first seed of each loss).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    counts = np.asarray(results["dataset"]["class_counts"])
    order = np.argsort(-counts, kind="stable")
    figure, axes = plt.subplots(1, 3, figsize=(16, 4.5))
    losses = list(results["summary"])
    # One colour per loss across all three panels.
    colors = {loss: f"C{position}" for position, loss in enumerate(losses)}
    for loss in losses:
        per_class = np.array([run["linear_per_class"] for run in results["runs"] if run["loss"] == loss])
        mean, spread = per_class.mean(axis=0), per_class.std(axis=0)
        axes[0].errorbar(counts[order], 100 * mean[order], yerr=100 * spread[order], marker="o", capsize=3, label=loss, color=colors[loss])
    axes[0].set_xscale("log")
    axes[0].xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
    axes[0].xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    axes[0].set_xlabel("training images of the class (log)")
    axes[0].set_ylabel("linear-probe accuracy (%)")
    axes[0].set_title("per-class accuracy vs class frequency")
    axes[0].legend()
    for axis, statistic, label in ((axes[1], "temperature", "per-sample temperature"), (axes[2], "weight", "per-sample weight")):
        drawn = False
        for loss in losses:
            run = next(run for run in results["runs"] if run["loss"] == loss)
            histogram = run["sample_statistics"].get(statistic)
            if histogram is None:
                continue
            edges, bins = np.asarray(histogram["histogram"]["edges"]), histogram["histogram"]["counts"]
            axis.stairs(bins, edges, label=loss, color=colors[loss])
            drawn = True
        axis.set_xlabel(label)
        axis.set_ylabel("training samples")
        axis.set_title(f"learned {label}s (end of training)")
        if drawn:
            axis.legend()
        else:
            axis.text(0.5, 0.5, "no guided loss in this run", ha="center", va="center", transform=axis.transAxes)
    figure.suptitle(f"{results['dataset']['name']}: {', '.join(losses)}")
    figure.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
