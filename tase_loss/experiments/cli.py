"""Command line: ``tase-experiment`` / ``python -m tase_loss.experiments``.

With no arguments it runs the embedded default: digits-LT (scikit-learn's handwritten
digits, exponential profile, ratio 10), NT-Xent vs TASE, 5 seeds of 40 epochs, about
a minute of CPU time. ``--data PATH`` runs on a long-tailed ``.npz`` (``x, y,
x_test, y_test``) or an image folder (``PATH/train/<class>/``, ``PATH/test/<class>/``).
``--budget-minutes M`` sizes a suite of methods to a wall-clock budget, ``--parallel N``
runs its jobs side by side (docs/experiments.md).

Bad input ends with one line on stderr (``tase-experiment: error: ...``), exit code 2,
and no results file.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
from typing import Optional

from tase_loss.experiments.arguments import PROGRAM, UsageError, build_parser

__all__ = ["build_parser", "main"]

SUITE_OPTIONS = (
    "--budget-minutes",
    "--parallel",
    "--min-epochs",
    "--methods",
    "--losses",  # 0.1's name of --methods
    "--seeds",
    "--output",
    "--epochs",
    "--warmup-epochs",
    "--resume",
    "--threads",
)


def _load_data(arguments: argparse.Namespace):
    from tase_loss.experiments.data import DataError, load_digits_lt, load_image_folder, load_npz, resize_images

    if arguments.data == "digits":
        if arguments.probe is not None:
            raise DataError("--probe does not apply to the embedded digits data")
        return load_digits_lt(ratio=arguments.ratio)
    if os.path.isdir(arguments.data):
        data = load_image_folder(arguments.data, arguments.probe)
    elif os.path.exists(arguments.data):
        data = load_npz(arguments.data, arguments.probe, arguments.num_classes, arguments.class_names)
    else:
        raise DataError(f"no such file or folder: {arguments.data}")
    return data if arguments.image_size is None else resize_images(data, arguments.image_size)


def _report(results: dict, output_dir: str, knn_k: int) -> None:
    from tase_loss.experiments.reporting import format_table, plot_results, write_json

    json_path = os.path.join(output_dir, "results.json")
    png_path = os.path.join(output_dir, "results.png")
    write_json(results, json_path)
    plot_results(results, png_path)
    print(format_table(results["summary"], results.get("differences", {})))
    groups = results["dataset"]["groups"]
    print(
        f"Many/Medium/Few = classes {groups['many']}/{groups['medium']}/{groups['few']} ranked by training count; "
        f"Std = std of the three group accuracies; kNN = cosine {knn_k}-NN accuracy; "
        "'- ntxent' rows: paired by seed"
    )
    print(f"wrote {json_path} and {png_path}")


def _merge(paths: list[str], output_dir: str, knn_k: int) -> int:
    import json

    from tase_loss.experiments.runner import check_results_file, merge_results

    parts = []
    for path in paths:
        if not os.path.isfile(path):
            raise FileNotFoundError(f"no such file: {path}")
        try:
            with open(path, encoding="utf-8") as handle:
                part = json.load(handle)
        except json.JSONDecodeError as error:
            raise ValueError(f"{path} is not a results JSON: {error}") from None
        parts.append(check_results_file(part, path))
    _report(merge_results(parts), output_dir, knn_k)
    return 0


def _default_methods(arguments: argparse.Namespace) -> list[str]:
    from tase_loss.experiments.methods import parse_methods
    from tase_loss.experiments.suite import SUITE_METHODS

    if arguments.methods is not None:
        return parse_methods(arguments.methods)
    return list(SUITE_METHODS) if arguments.budget_minutes else ["ntxent", "tase"]


def _configure(arguments: argparse.Namespace, data, methods: list[str], epochs: Optional[int] = None):
    import dataclasses

    import torch

    from tase_loss.experiments.encoders import ENCODERS
    from tase_loss.experiments.methods import MethodSettings
    from tase_loss.experiments.methods.contrastive import MoCoSettings, TASESettings
    from tase_loss.experiments.methods.rwsam import RwSAMSettings
    from tase_loss.experiments.methods.schedule import ScheduleSettings
    from tase_loss.experiments.runner import ExperimentConfig, resolve_device
    from tase_loss.experiments.training import TrainingConfig
    from tase_loss.pseudo_labeler import DEFAULT_WARMUP_EPOCHS
    from tase_loss.reweighting import TemperatureMap

    digits = arguments.data == "digits"
    device = resolve_device(arguments.device)
    encoder = arguments.encoder
    if encoder == "auto":
        encoder = "digits-cnn" if digits else ("resnet18" if device.type == "cuda" else "small-cnn")
    if encoder not in ENCODERS:
        raise ValueError(f"unknown encoder {encoder!r}; choose from auto, {', '.join(sorted(ENCODERS))}")
    epochs = epochs or arguments.epochs or (40 if digits else 200)
    warmup = arguments.warmup_epochs or DEFAULT_WARMUP_EPOCHS
    sgd = arguments.optimizer == "sgd"
    clusters = tuple(arguments.clusters or [data.num_classes])
    if any(k < 1 or k > data.x_train.shape[0] for k in clusters):
        raise ValueError(f"--clusters must lie in [1, {data.x_train.shape[0]}], got {list(clusters)}")
    threads = arguments.threads or (1 if digits else None)
    if threads:
        torch.set_num_threads(threads)
    tase = TASESettings(
        temperature=arguments.temperature,
        gamma=arguments.gamma,
        min_temperature=arguments.min_temperature,
        max_temperature=arguments.max_temperature,
        mapping=arguments.mapping,
        alpha=arguments.alpha,
        max_weight=arguments.max_weight,
        estimator=arguments.estimator,
        num_clusters=clusters,
        warmup_epochs=warmup,
        estimate_every=arguments.estimate_every,
        momentum=arguments.momentum,
    )
    # Build the map once now: a clip range that excludes the temperature fails here, not mid-run.
    TemperatureMap(tase.temperature, tase.gamma, tase.min_temperature, tase.max_temperature, tase.mapping)
    settings = MethodSettings(
        tase=tase,
        moco=MoCoSettings(queue_size=arguments.queue_size, encoder_momentum=arguments.encoder_momentum),
        rwsam=dataclasses.replace(RwSAMSettings(), rho=arguments.sam_rho),
        schedule=dataclasses.replace(ScheduleSettings(), period=arguments.ts_period),
    )
    training = TrainingConfig(
        epochs=epochs,
        batch_size=arguments.batch_size or (128 if digits else 256),
        learning_rate=arguments.lr if arguments.lr is not None else (0.5 if sgd else 1e-3),
        weight_decay=arguments.weight_decay if arguments.weight_decay is not None else (5e-4 if sgd else 1e-5),
        optimizer=arguments.optimizer,
        checkpoint_every=arguments.checkpoint_every,
        stop_after_epochs=arguments.stop_after_epochs,
        progress=not arguments.no_progress,
    )
    default_seeds = [0, 1] if arguments.budget_minutes else ([0, 1, 2, 3, 4] if digits else [0, 1, 2])
    return ExperimentConfig(
        methods=methods,
        seeds=arguments.seeds if arguments.seeds is not None else default_seeds,
        encoder=encoder,
        training=training,
        settings=settings,
        device=str(device),
        precision=arguments.precision,
        compile=arguments.compile,
        knn_k=arguments.knn_k,
        output_dir=arguments.output,
        resume=arguments.resume,
        resume_anyway=arguments.resume_anyway,
        checkpoints=not arguments.no_checkpoints,
    )


def _check_output(folder: str) -> None:
    """Create the output folder now, so that a bad path fails before any training."""
    if os.path.exists(folder) and not os.path.isdir(folder):
        raise ValueError(f"--output {folder} is a file, not a folder")
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as error:
        raise ValueError(f"--output {folder} cannot be created: {error.strerror or error}") from None
    if not os.access(folder, os.W_OK):
        raise ValueError(f"--output {folder} is not writable")


def _check_resumable(data, config) -> None:
    """With --resume, read every existing checkpoint now: a mismatch fails before training."""
    from tase_loss.experiments.runner import run_settings
    from tase_loss.experiments.training import load_checkpoint

    if not config.resume or not config.checkpoints:
        return
    for seed in config.seeds:
        for method in config.methods:
            path = os.path.join(config.output_dir, "checkpoints", f"{method}_seed{seed}.pt")
            if os.path.isfile(path):
                load_checkpoint(path, run_settings(method, seed, data, config), config.resume_anyway)


def _child_arguments(argv: Sequence[str], parser: argparse.ArgumentParser, overrides: list[str]) -> list[str]:
    """The command's own arguments minus the suite's (``SUITE_OPTIONS``), plus ``overrides``."""
    takes_value = {
        option: action.nargs != 0
        for action in parser._actions  # argparse keeps no public list of its actions
        for option in action.option_strings
    }
    kept, skip = [], False
    for token in argv:
        if skip:
            skip = False
            continue
        option = token.split("=", 1)[0]
        if option in SUITE_OPTIONS:
            skip = takes_value.get(option, False) and "=" not in token
            continue
        kept.append(token)
    return kept + overrides


def _run(argv: Optional[list[str]]) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser()
    arguments = parser.parse_args(argv)
    from tase_loss.experiments.methods import METHODS

    if arguments.list_methods:
        for name, entry in sorted(METHODS.items()):
            print(f"{name:18s} {entry.description}")
        return 0
    if arguments.merge:
        return _merge(arguments.merge, arguments.output, arguments.knn_k)
    if arguments.resume_anyway and not arguments.resume:
        raise ValueError("--resume-anyway needs --resume")
    from tase_loss.experiments.reporting import write_json
    from tase_loss.experiments.runner import merge_results, resolve_device, run_experiment

    methods = _default_methods(arguments)  # fail before loading data
    data = _load_data(arguments)
    config = _configure(arguments, data, methods)
    _check_output(config.output_dir)
    _check_resumable(data, config)
    print(
        f"{data.name}: {data.x_train.shape[0]} training images, class counts "
        f"{data.class_counts.tolist()}; probe: {data.probe_note}; test: {data.x_test.shape[0]} images",
        file=sys.stderr,
    )
    started = time.time()
    command = " ".join([PROGRAM, *argv])
    budget_record = None
    if arguments.budget_minutes is not None:
        from tase_loss.experiments.suite import plan_budget, time_epochs

        epoch_seconds = time_epochs(methods, data, config, resolve_device(config.device))
        plan = plan_budget(
            epoch_seconds,
            len(config.seeds),
            arguments.budget_minutes * 60 - (time.time() - started),
            parallel=arguments.parallel,
            run_overhead_seconds=10.0,
            min_epochs=arguments.min_epochs,
        )
        budget_record = {"minutes": arguments.budget_minutes, "epoch_seconds": epoch_seconds, "plan": plan.__dict__}
        print(
            f"budget: {plan.epochs} epochs for {', '.join(plan.methods)}"
            + (f" (dropped {', '.join(plan.dropped)})" if plan.dropped else "")
            + f", about {plan.estimated_seconds / 60:.1f} minutes",
            file=sys.stderr,
        )
        config = _configure(arguments, data, list(plan.methods), epochs=plan.epochs)
    _check_resumable(data, config)
    print(
        f"encoder {config.encoder}, {config.training.epochs} epochs, batch {config.training.batch_size}, "
        f"{config.training.optimizer} lr {config.training.learning_rate:g}, device {config.device}, "
        f"methods {config.methods}, seeds {config.seeds}, TASE warm-up {config.settings.tase.warmup_epochs} epochs, "
        f"estimator {config.settings.tase.estimator}",
        file=sys.stderr,
    )
    if arguments.parallel > 1:
        import torch

        from tase_loss.experiments.suite import run_parallel

        jobs = [(method, seed) for seed in config.seeds for method in config.methods]
        overrides = [
            "--epochs",
            str(config.training.epochs),
            "--warmup-epochs",
            str(config.settings.tase.warmup_epochs),
        ]
        if config.resume:
            overrides.append("--resume")
        threads = max(1, (arguments.threads or torch.get_num_threads()) // arguments.parallel)
        parts = run_parallel(
            jobs, arguments.parallel, _child_arguments(argv, parser, overrides), config.output_dir, threads
        )
        results = merge_results(parts)
    else:
        json_path = os.path.join(config.output_dir, "results.json")
        finished_runs = []

        def save_partial(run: dict) -> None:
            finished_runs.append(run)
            write_json({"command": command, "partial": True, "runs": finished_runs}, json_path)

        results = run_experiment(data, config, on_run_done=save_partial)
    results["wall_seconds"] = time.time() - started
    results["command"] = command
    if budget_record is not None:
        results["budget"] = budget_record
    _report(results, config.output_dir, config.knn_k)
    print(f"total {results['wall_seconds']:.0f} s")
    return 0


def main(argv: Optional[list[str]] = None) -> int:
    """Entry point; returns the exit code (0 success, 2 bad input, 1 a failed job)."""
    try:
        return _run(argv)
    except UsageError as error:
        print(f"{PROGRAM}: error: {error} (see --help)", file=sys.stderr)
    except (ValueError, TypeError, OSError) as error:
        message = str(error).splitlines()[0] if str(error) else type(error).__name__
        print(f"{PROGRAM}: error: {message}", file=sys.stderr)
    except RuntimeError as error:
        print(f"{PROGRAM}: error: {str(error).splitlines()[0]}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{PROGRAM}: interrupted (resume with --resume)", file=sys.stderr)
        return 130
    return 2
