"""How long should TASE's warm-up be? The study behind ``PseudoLabeler``'s default.

The warm-up is the number of plain NT-Xent epochs before the first frequency estimate.
Too short, and the first estimate comes from an untrained encoder; too long, and a short
run never uses an estimate at all (a run of ``epochs <= warmup_epochs`` is plain NT-Xent).
For each warm-up ``W`` this trains the runner's ``tase`` on digits-LT (the embedded
default: 5 seeds x 40 epochs, the default estimator) and reports, mean ± sample std over
seeds:

- ``first``: the per-sample Spearman of the first estimate with the true class
  frequency (made at the end of epoch ``W``), and ``last``: of the estimate in use at
  the end of training;
- ``few`` / ``all`` / ``knn``: the linear-probe Few and All accuracy and the kNN
  accuracy, and their paired difference to ``W = 10`` (0.2's default) by seed.

The selection rule, written before the runs: the default is the smallest ``W`` whose
``last`` Spearman is within 0.05 of the best ``W``'s and whose paired Few difference to
``W = 10`` is not below minus one seed-std of that difference.

Usage (the command behind docs/results.md)::

    python studies/warmup.py --output runs/warmup
    cp runs/warmup/warmup.{md,json} docs/results/warmup/

``--epochs 2 --seeds 0 --warmups 1`` runs it tiny (the test suite does).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from typing import Any

import numpy as np

REPOSITORY = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REFERENCE_WARMUP = 10
"""0.2.0's default, the baseline of the paired differences."""


def _train(output: str, warmup: int, epochs: int, seeds: str) -> dict[str, Any]:
    """One runner call (``tase`` only) unless its results exist; its results.json."""
    results_path = os.path.join(output, "results.json")
    if not os.path.isfile(results_path):
        command = [
            sys.executable,
            "-m",
            "tase_loss.experiments",
            "--methods",
            "tase",
            "--warmup-epochs",
            str(warmup),
            "--epochs",
            str(epochs),
            "--seeds",
            seeds,
            "--output",
            output,
            "--no-progress",
            "--no-checkpoints",
        ]
        subprocess.run(command, check=True, cwd=REPOSITORY)
    with open(results_path, encoding="utf-8") as handle:
        return json.load(handle)


def _per_seed(results: dict[str, Any]) -> dict[int, dict[str, float]]:
    rows = {}
    for run in results["runs"]:
        estimates = [record for record in run["history"] if "spearman" in record]
        rows[run["seed"]] = {
            "first": estimates[0]["spearman"] if estimates else float("nan"),
            "last": estimates[-1]["spearman"] if estimates else float("nan"),
            "few": 100 * run["linear"]["few"],
            "all": 100 * run["linear"]["all"],
            "knn": 100 * run["knn"]["all"],
        }
    return rows


def _mean_std(values: list[float]) -> dict[str, float]:
    array = np.asarray(values, dtype=float)
    return {"mean": float(array.mean()), "std": float(array.std(ddof=1)) if array.size > 1 else 0.0}


def summarize(per_warmup: dict[int, dict[int, dict[str, float]]]) -> list[dict[str, Any]]:
    """One entry per warm-up: each metric's mean/std and the paired differences to W = 10."""
    reference = per_warmup.get(REFERENCE_WARMUP)
    table = []
    for warmup, seeds in sorted(per_warmup.items()):
        entry: dict[str, Any] = {"warmup": warmup, "seeds": sorted(seeds)}
        for metric in ("first", "last", "few", "all", "knn"):
            entry[metric] = _mean_std([row[metric] for row in seeds.values()])
        if reference is not None:
            for metric in ("few", "all", "knn"):
                paired = [seeds[seed][metric] - reference[seed][metric] for seed in seeds if seed in reference]
                entry[f"{metric}_minus_w{REFERENCE_WARMUP}"] = _mean_std(paired)
        table.append(entry)
    return table


def select_default(table: list[dict[str, Any]]) -> int:
    """The module docstring's rule."""
    estimated = [entry for entry in table if np.isfinite(entry["last"]["mean"])]  # runs past their warm-up
    best_last = max(entry["last"]["mean"] for entry in estimated)
    key = f"few_minus_w{REFERENCE_WARMUP}"
    for entry in estimated:  # smallest warm-up first
        paired = entry.get(key, {"mean": 0.0, "std": 0.0})
        if entry["last"]["mean"] >= best_last - 0.05 and paired["mean"] >= -paired["std"]:
            return int(entry["warmup"])
    return REFERENCE_WARMUP


def markdown(table: list[dict[str, Any]], chosen: int) -> str:
    def cell(value: dict[str, float], digits: int, sign: str = "+") -> str:
        return f"{value['mean']:{sign}.{digits}f} ± {value['std']:.{digits}f}"

    lines = [
        f"Selection rule (studies/warmup.py): warm-up **{chosen}**.",
        "",
        f"| warm-up | first estimate Spearman | last estimate Spearman | Few | All | kNN | "
        f"Few - W{REFERENCE_WARMUP} | All - W{REFERENCE_WARMUP} | kNN - W{REFERENCE_WARMUP} |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for entry in table:
        differences = [entry.get(f"{metric}_minus_w{REFERENCE_WARMUP}") for metric in ("few", "all", "knn")]
        paired = [cell(value, 1) if value is not None else "-" for value in differences]
        accuracies = [cell(entry[metric], 1, "") for metric in ("few", "all", "knn")]
        lines.append(
            f"| {entry['warmup']} | {cell(entry['first'], 2)} | {cell(entry['last'], 2)} | "
            + " | ".join(accuracies + paired)
            + " |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", default="warmup_study")
    parser.add_argument("--warmups", default="1,2,3,5,10", help="comma-separated warm-ups to train")
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--seeds", default="0,1,2,3,4")
    arguments = parser.parse_args()
    os.makedirs(arguments.output, exist_ok=True)
    per_warmup = {}
    for warmup in (int(value) for value in arguments.warmups.split(",")):
        results = _train(os.path.join(arguments.output, f"warmup_{warmup}"), warmup, arguments.epochs, arguments.seeds)
        per_warmup[warmup] = _per_seed(results)
        print(f"warm-up {warmup}: done", file=sys.stderr)
    table = summarize(per_warmup)
    chosen = select_default(table)
    text = markdown(table, chosen) + "\n"
    command = " ".join(["python", "studies/warmup.py", *sys.argv[1:]])
    with open(os.path.join(arguments.output, "warmup.json"), "w", encoding="utf-8") as handle:
        json.dump({"command": command, "chosen": chosen, "table": table}, handle, indent=1)
    with open(os.path.join(arguments.output, "warmup.md"), "w", encoding="utf-8") as handle:
        handle.write(text)
    print(text)


if __name__ == "__main__":
    main()
