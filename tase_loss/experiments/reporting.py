"""Results out: a table a person can read, strict JSON, and a plot that answers "does it help?"."""

from __future__ import annotations

import json
import math
import os
import warnings
from typing import Any

import numpy as np

__all__ = ["format_table", "mean_and_spread", "plot_results", "write_json"]

COLUMNS = (("many", "Many"), ("medium", "Medium"), ("few", "Few"), ("all", "All"), ("std", "Std"), ("knn", "kNN"))
ORACLE = "tase-oracle"
GROUP_COLORS = {"many": "#d9e8f5", "medium": "#eeeeee", "few": "#f8e0d0"}
TITLE_PAD = 16  # room for the Many / Medium / Few labels above each panel


def mean_and_spread(values: list[float]) -> dict[str, float]:
    """Mean, sample std (``ddof=1``; 0 for one run), min and max of per-seed values."""
    array = np.asarray(values, dtype=np.float64)
    return {
        "mean": float(array.mean()),
        "std": float(array.std(ddof=1)) if array.size > 1 else 0.0,
        "min": float(array.min()),
        "max": float(array.max()),
        "n": int(array.size),
    }


def _cells(metrics: dict[str, dict[str, float]], signed: bool) -> list[str]:
    sign = "+" if signed else ""
    return [
        f"{100 * metrics[key]['mean']:{sign}5.1f} ± {100 * metrics[key]['std']:.1f}".ljust(12) for key, _ in COLUMNS
    ]


def format_table(summary: dict[str, dict[str, dict[str, float]]], differences: dict[str, Any] | None = None) -> str:
    """Method x Many/Medium/Few/All/Std/kNN in percent: mean ± std over seeds, then the
    paired differences to the baseline (mean ± std over seeds of ``method - ntxent``).

    Example:
        >>> cell = {"mean": 0.5, "std": 0.01, "n": 2}
        >>> print(format_table({"ntxent": {name: cell for name, _ in COLUMNS}}))
        method (linear probe, % mean ± std over seeds)   Many          Medium        Few           All           Std           kNN
        ntxent (2 seeds)                                  50.0 ± 1.0    50.0 ± 1.0    50.0 ± 1.0    50.0 ± 1.0    50.0 ± 1.0    50.0 ± 1.0
    """
    rows = [
        (f"{method} ({next(iter(metrics.values()))['n']} seeds)", _cells(metrics, False))
        for method, metrics in summary.items()
    ]
    for method, metrics in (differences or {}).items():
        rows.append((f"{method} - ntxent (paired, {next(iter(metrics.values()))['n']})", _cells(metrics, True)))
    header_name = "method (linear probe, % mean ± std over seeds)"
    width = max([len(header_name)] + [len(name) for name, _ in rows]) + 3
    lines = [header_name.ljust(width) + "  ".join(title.ljust(12) for _, title in COLUMNS).rstrip()]
    lines += [name.ljust(width) + "  ".join(cells).rstrip() for name, cells in rows]
    return "\n".join(lines + _oracle_shares(differences or {}))


def _oracle_shares(differences: dict[str, Any]) -> list[str]:
    """One line per method: the share of ``tase-oracle``'s paired gain it recovers.

    Computed on the seeds both share, for Few and All. A share is given only where the
    oracle's mean gain is positive and larger than its seed spread (sample std);
    otherwise the line says the oracle's gain is inside the spread, since a share of
    noise means nothing.
    """
    oracle = differences.get(ORACLE)
    if oracle is None:
        return []
    lines = []
    for method, metrics in differences.items():
        if method == ORACLE:
            continue
        # Every metric of a method is paired on the same seeds.
        seeds = sorted(set(metrics["all"]["per_seed"]) & set(oracle["all"]["per_seed"]), key=int)
        if not seeds:
            continue
        parts = []
        for key in ("few", "all"):
            gain = mean_and_spread([oracle[key]["per_seed"][seed] for seed in seeds])
            if gain["mean"] > gain["std"]:
                share = float(np.mean([metrics[key]["per_seed"][seed] for seed in seeds])) / gain["mean"]
                parts.append(f"{key.capitalize()} {100 * share:.0f} % of {100 * gain['mean']:+.1f}")
            else:
                parts.append(
                    f"{key.capitalize()} none: the oracle's {100 * gain['mean']:+.1f} ± {100 * gain['std']:.1f} "
                    "is inside the spread"
                )
        lines.append(f"{method}: share of {ORACLE}'s gain over ntxent ({len(seeds)} paired seeds): " + ", ".join(parts))
    return lines


def _strict(value: Any, path: str, replaced: list[str]) -> Any:
    """``value`` with every NaN/Inf float replaced by ``None`` (strict JSON), noting where."""
    if isinstance(value, float) and not math.isfinite(value):
        replaced.append(path)
        return None
    if isinstance(value, dict):
        return {key: _strict(item, f"{path}.{key}", replaced) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_strict(item, f"{path}[{position}]", replaced) for position, item in enumerate(value)]
    return value


def write_json(results: dict[str, Any], path: str) -> None:
    """Write ``results`` as indented, strict JSON (creating the folder).

    A NaN or infinite number becomes ``null`` with a warning that names where.
    """
    replaced: list[str] = []
    strict = _strict(results, "results", replaced)
    if replaced:
        warnings.warn(f"{len(replaced)} non-finite value(s) written as null, e.g. {replaced[0]}", stacklevel=2)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(strict, handle, indent=1, allow_nan=False)


def _group_bands(axis: Any, groups: dict[str, list[int]], position: dict[int, int]) -> None:
    for name, members in groups.items():
        where = [position[c] for c in members]
        if where:
            axis.axvspan(min(where) - 0.5, max(where) + 0.5, color=GROUP_COLORS.get(name, "#eeeeee"), zorder=0)
            axis.text(
                (min(where) + max(where)) / 2,
                1.0,
                name.capitalize(),
                transform=axis.get_xaxis_transform(),
                ha="center",
                va="bottom",
                fontsize=9,
            )


def _plot_estimates_over_epochs(axis: Any, results: dict[str, Any], colors: dict[str, str]) -> None:
    """The estimates of each guided method over training (first seed): the temperature range
    (band), the log-frequency span and the number of groups (right axis)."""
    groups_axis = axis.twinx()
    drawn = False
    for method in results["summary"]:
        run = next(run for run in results["runs"] if run["method"] == method)
        records = [record for record in run["history"] if "log_frequency_span" in record]
        if not records:
            continue
        epochs = [record["epoch"] + 1 for record in records]
        if "temperature_min" in records[0]:
            axis.fill_between(
                epochs,
                [record["temperature_min"] for record in records],
                [record["temperature_max"] for record in records],
                color=colors[method],
                alpha=0.25,
                label=f"{method}: temperature range",
            )
        axis.plot(
            epochs,
            [record["log_frequency_span"] / 10 for record in records],
            color=colors[method],
            label=f"{method}: log-frequency span / 10",
        )
        if "num_groups" in records[0]:
            groups_axis.plot(
                epochs, [record["num_groups"] for record in records], color=colors[method], linestyle=":", marker="."
            )
        drawn = True
    axis.set_xlabel("epoch (estimate made at its end)")
    axis.set_ylabel("temperature; log-frequency span / 10")
    groups_axis.set_ylabel("groups (dotted)")
    axis.set_title("the estimates over training (first seed)", pad=TITLE_PAD)
    if drawn:
        axis.legend(fontsize=7)
    else:
        estimated = any("spearman" in record for run in results["runs"] for record in run["history"])
        message = (
            "estimates were made, but these runs' history has no summary (recorded from 2026-12-06 on)"
            if estimated
            else "no estimate in this run"
        )
        axis.text(0.5, 0.5, message, ha="center", va="center", transform=axis.transAxes)


def plot_results(results: dict[str, Any], path: str) -> None:
    """Five panels; the first four over the classes, from the most to the least frequent:

    1. linear-probe accuracy per class (mean ± std over seeds) of every method;
    2. each method's paired difference to NT-Xent per class (mean ± std over seeds);
    3. / 4. the mean per-sample temperature and weight each class got (first seed);
    5. over epochs, each guided method's estimates (first seed): the temperature range,
       the log-frequency span and the number of groups.

    Many / Medium / Few are shaded; the axis names each class with its training count.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    dataset = results["dataset"]
    counts = np.asarray(dataset["class_counts"])
    names = dataset.get("class_names") or [str(c) for c in range(counts.size)]
    order = np.argsort(-counts, kind="stable")
    position = {int(c): p for p, c in enumerate(order)}
    x = np.arange(counts.size)
    labels = [f"{names[c]}\n{counts[c]}" for c in order]
    methods = list(results["summary"])
    colors = {method: f"C{index}" for index, method in enumerate(methods)}
    per_class = {
        method: np.array([run["linear_per_class"] for run in results["runs"] if run["method"] == method])
        for method in methods
    }
    figure = plt.figure(figsize=(15, 13))
    grid = figure.add_gridspec(3, 2)
    accuracy = figure.add_subplot(grid[0, 0])
    difference = figure.add_subplot(grid[0, 1], sharex=accuracy)
    temperature = figure.add_subplot(grid[1, 0], sharex=accuracy)
    weight = figure.add_subplot(grid[1, 1], sharex=accuracy)
    for axis in (accuracy, difference, temperature, weight):
        _group_bands(axis, dataset["groups"], position)
    for method in methods:
        mean, spread = per_class[method].mean(axis=0), per_class[method].std(axis=0)
        accuracy.errorbar(
            x, 100 * mean[order], yerr=100 * spread[order], marker="o", capsize=3, label=method, color=colors[method]
        )
    accuracy.set_ylabel("linear-probe accuracy (%)")
    accuracy.set_title("per-class accuracy (mean ± std over seeds)", pad=TITLE_PAD)
    accuracy.legend(fontsize=8)

    baseline = {
        run["seed"]: np.asarray(run["linear_per_class"]) for run in results["runs"] if run["method"] == "ntxent"
    }
    drawn = False
    for method in methods:
        paired = [
            np.asarray(run["linear_per_class"]) - baseline[run["seed"]]
            for run in results["runs"]
            if run["method"] == method and method != "ntxent" and run["seed"] in baseline
        ]
        if paired:
            stacked = 100 * np.array(paired)
            difference.errorbar(
                x,
                stacked.mean(axis=0)[order],
                yerr=stacked.std(axis=0)[order],
                marker="o",
                capsize=3,
                label=f"{method} ({len(paired)} seeds)",
                color=colors[method],
            )
            drawn = True
    difference.axhline(0.0, color="black", linewidth=0.8)
    difference.set_ylabel("accuracy - NT-Xent, same seed (points)")
    difference.set_title("paired difference to NT-Xent per class", pad=TITLE_PAD)
    if drawn:
        difference.legend(fontsize=8)
    else:
        difference.text(
            0.5, 0.5, "no NT-Xent run to compare with", ha="center", va="center", transform=difference.transAxes
        )

    for axis, statistic, label, neutral in (
        (temperature, "temperature", "mean per-sample temperature", None),
        (weight, "weight", "mean per-sample weight", 1.0),
    ):
        drawn = False
        for method in methods:
            run = next(run for run in results["runs"] if run["method"] == method)
            values = run["sample_statistics"].get(statistic)
            if values is None:
                continue
            axis.plot(x, np.asarray(values["per_class_mean"])[order], marker="s", label=method, color=colors[method])
            drawn = True
        if neutral is not None:
            axis.axhline(neutral, color="black", linewidth=0.8)
        axis.set_ylabel(label)
        axis.set_title(f"{label} per true class (end of training, first seed)", pad=TITLE_PAD)
        if drawn:
            axis.legend(fontsize=8)
        else:
            axis.text(0.5, 0.5, "no guided method in this run", ha="center", va="center", transform=axis.transAxes)
    for axis in (temperature, weight):
        axis.set_xticks(x, labels, fontsize=8)
        axis.set_xlabel("class (training images), most frequent first")
    for axis in (accuracy, difference):
        axis.tick_params(labelbottom=False)
    _plot_estimates_over_epochs(figure.add_subplot(grid[2, :]), results, colors)
    figure.suptitle(f"{dataset['name']}: {', '.join(methods)}")
    figure.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    figure.savefig(path, dpi=100)
    plt.close(figure)
