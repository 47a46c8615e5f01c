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
import math
import os
import sys
import time
from collections.abc import Sequence
from typing import Any, Callable, NoReturn, Optional

__all__ = ["build_parser", "main"]

PROGRAM = "tase-experiment"
SUITE_OPTIONS = (
    "--budget-minutes",
    "--parallel",
    "--min-epochs",
    "--methods",
    "--seeds",
    "--output",
    "--epochs",
    "--warmup-epochs",
    "--resume",
    "--threads",
)


class _OneLineParser(argparse.ArgumentParser):
    """argparse that reports a usage error as a single line."""

    def error(self, message: str) -> NoReturn:
        raise _UsageError(message)


class _UsageError(Exception):
    pass


def _number(
    minimum: Optional[float] = None,
    maximum: Optional[float] = None,
    *,
    integer: bool = False,
    exclusive_minimum: bool = False,
) -> Callable[[str], Any]:
    """An argparse type: a finite number (or integer) within bounds, with a message that says so."""
    low = "" if minimum is None else f"{'>' if exclusive_minimum else '>='} {minimum:g}"
    high = "" if maximum is None else f"<= {maximum:g}"
    bounds = " and ".join(part for part in (low, high) if part)
    kind = "an integer" if integer else "a finite number"
    expected = f"{kind} {bounds}".strip()

    def parse(text: str) -> Any:
        try:
            value = int(text) if integer else float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {expected}, got {text!r}") from None
        below = minimum is not None and (value <= minimum if exclusive_minimum else value < minimum)
        if not math.isfinite(value) or below or (maximum is not None and value > maximum):
            raise argparse.ArgumentTypeError(f"must be {expected}, got {text!r}")
        return value

    return parse


def _int_list(text: str) -> list[int]:
    try:
        values = [int(item) for item in text.split(",") if item.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values:
        raise argparse.ArgumentTypeError(f"expected at least one integer, got {text!r}")
    return values


def _name_list(text: str) -> tuple[str, ...]:
    names = tuple(name.strip() for name in text.split(",") if name.strip())
    if not names:
        raise argparse.ArgumentTypeError(f"expected comma-separated names, got {text!r}")
    return names


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (``--help`` documents every option)."""
    from tase_loss.estimators import DEFAULT_ESTIMATOR, ESTIMATORS

    positive = _number(1, integer=True)
    parser = _OneLineParser(
        prog=PROGRAM,
        description=(
            "Pre-train an encoder with self-supervised methods on long-tailed data and evaluate it: "
            "linear probe (Many/Medium/Few/All/Std), kNN, several seeds, paired differences to NT-Xent; "
            "writes results.json and results.png. No arguments: digits-LT, NT-Xent vs TASE."
        ),
    )
    data = parser.add_argument_group("data")
    data.add_argument(
        "--data",
        default="digits",
        help="'digits' (embedded digits-LT), a .npz with x, y, x_test, y_test, "
        "or a folder with train/<class>/ and test/<class>/ images",
    )
    data.add_argument(
        "--probe",
        default=None,
        help="balanced probe set (.npz with x, y, or a <class>/ folder) for the linear "
        "probe and kNN, e.g. cifar10_probe_100shot.npz (100-shot protocol)",
    )
    data.add_argument(
        "--ratio", type=_number(1, 130), default=10.0, help="digits-LT imbalance ratio n_max/n_min, in [1, 130]"
    )
    data.add_argument(
        "--image-size",
        type=_number(4, integer=True),
        default=None,
        help="resize images to SIZE x SIZE (a CPU-budget knob; default: as stored)",
    )
    data.add_argument(
        "--num-classes", type=positive, default=None, help="number of classes of a .npz (default: max(y) + 1)"
    )
    data.add_argument(
        "--class-names", type=_name_list, default=(), help="comma-separated class names of a .npz, for the report"
    )

    run = parser.add_argument_group("run")
    run.add_argument(
        "--methods",
        default=None,
        help="comma-separated method names (default ntxent,tase; with --budget-minutes "
        "ntxent,tase,tase-oracle,ts,rwsam); --list-methods shows them",
    )
    run.add_argument("--list-methods", action="store_true", help="print the available methods and exit")
    run.add_argument(
        "--seeds",
        type=_int_list,
        default=None,
        help="comma-separated seeds (default 0,1,2,3,4 for digits, 0,1,2 otherwise, 0,1 with --budget-minutes)",
    )
    run.add_argument(
        "--encoder",
        default="auto",
        help="digits-cnn, tiny-cnn, small-cnn or resnet18 (auto: digits-cnn for digits, "
        "resnet18 on CUDA, small-cnn on CPU)",
    )
    run.add_argument(
        "--epochs", type=positive, default=None, help="pre-training epochs (default 40 for digits, 200 otherwise)"
    )
    run.add_argument(
        "--batch-size", type=_number(2, integer=True), default=None, help="default 128 for digits, 256 otherwise"
    )
    run.add_argument("--optimizer", choices=("adamw", "sgd"), default="adamw")
    run.add_argument(
        "--lr",
        type=_number(0, exclusive_minimum=True),
        default=None,
        help="peak learning rate, cosine decay (default 1e-3 AdamW, 0.5 SGD)",
    )
    run.add_argument("--weight-decay", type=_number(0), default=None, help="default 1e-5 AdamW, 5e-4 SGD")
    run.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    run.add_argument(
        "--precision",
        choices=("bf16", "fp16", "fp32"),
        default="bf16",
        help="autocast dtype on CUDA (the loss itself is computed in fp32); CPU runs fp32",
    )
    run.add_argument("--compile", action="store_true", help="torch.compile the encoder")
    run.add_argument(
        "--threads",
        type=positive,
        default=None,
        help="torch CPU threads (default: 1 for digits, whose tiny model gains nothing "
        "from more and loses much on a busy CPU; torch's default otherwise)",
    )
    run.add_argument(
        "--output",
        default="tase_experiment_output",
        help="folder for results.json, results.png and (unless --no-checkpoints) checkpoints/",
    )
    run.add_argument(
        "--no-checkpoints",
        action="store_true",
        help="write no OUTPUT/checkpoints/ (then --resume has nothing to resume)",
    )
    run.add_argument("--resume", action="store_true", help="resume runs from the checkpoints in OUTPUT/checkpoints")
    run.add_argument(
        "--resume-anyway", action="store_true", help="with --resume, accept checkpoints written under other settings"
    )
    run.add_argument("--checkpoint-every", type=positive, default=5, help="epochs between checkpoints")
    run.add_argument(
        "--stop-after-epochs",
        type=positive,
        default=None,
        help="stop each run after this many epochs in total (resume later with --resume)",
    )
    run.add_argument("--knn-k", type=positive, default=20, help="neighbours of the kNN evaluation")
    run.add_argument("--no-progress", action="store_true", help="no progress output")
    run.add_argument(
        "--merge",
        nargs="+",
        metavar="RESULTS_JSON",
        default=None,
        help="do not train: merge results.json files of separate jobs into OUTPUT",
    )

    suite = parser.add_argument_group("suite (docs/experiments.md)")
    suite.add_argument(
        "--budget-minutes",
        type=_number(0, exclusive_minimum=True),
        default=None,
        help="time each method, then give all of them the same epochs that fit this budget",
    )
    suite.add_argument(
        "--parallel", type=positive, default=1, help="run this many (method, seed) jobs at once, as separate processes"
    )
    suite.add_argument(
        "--min-epochs",
        type=positive,
        default=20,
        help="with --budget-minutes: drop TS, then rwSAM, rather than run fewer epochs",
    )

    tase = parser.add_argument_group("TASE (see docs/METHOD.md)")
    tase.add_argument("--temperature", type=_number(1e-4, 1e4), default=0.2, help="base temperature t_base")
    tase.add_argument("--gamma", type=_number(), default=0.25, help="power-map exponent")
    tase.add_argument(
        "--min-temperature",
        type=_number(1e-4, 1e4),
        default=None,
        help="clip of the temperature map (default temperature / 4)",
    )
    tase.add_argument(
        "--max-temperature",
        type=_number(1e-4, 1e4),
        default=None,
        help="clip of the temperature map (default 5 x temperature)",
    )
    tase.add_argument("--mapping", choices=("power", "range"), default="power")
    tase.add_argument("--alpha", type=_number(0), default=0.5, help="re-weighting exponent")
    tase.add_argument("--max-weight", type=_number(1, 1e6), default=10.0)
    tase.add_argument(
        "--estimator",
        choices=sorted(ESTIMATORS),
        default=DEFAULT_ESTIMATOR,
        help=f"frequency estimator (default {DEFAULT_ESTIMATOR}, chosen in docs/results.md)",
    )
    tase.add_argument(
        "--clusters",
        type=_int_list,
        default=None,
        help="k of the clustering estimators (comma-separated for an ensemble; default: #classes)",
    )
    tase.add_argument(
        "--warmup-epochs",
        type=positive,
        default=None,
        help="epochs of NT-Xent before the first estimate, which ends epoch W (1-based) "
        "(default: a quarter of --epochs, at most 10)",
    )
    tase.add_argument("--estimate-every", type=positive, default=1, help="epochs between estimates")
    tase.add_argument(
        "--momentum", type=_number(0, 0.999), default=0.5, help="moving average of the log-frequency across estimates"
    )
    tase.add_argument("--queue-size", type=positive, default=4096, help="MoCo queue length")
    tase.add_argument(
        "--encoder-momentum",
        type=_number(0, 1),
        default=0.99,
        help="momentum of MoCo's key encoder and BYOL's target encoder",
    )

    baselines = parser.add_argument_group("baselines (see docs/plugins.md)")
    baselines.add_argument(
        "--sam-rho",
        type=_number(0),
        default=0.5,
        help="rwsam: neighbourhood radius (adaptive SAM, as in the official runs)",
    )
    baselines.add_argument(
        "--ts-period",
        type=_number(0, exclusive_minimum=True),
        default=None,
        help="ts, tase-ts: period of the cosine temperature schedule in epochs "
        "(default: --epochs, one cycle 1.0 -> 0.1 -> 1.0)",
    )
    return parser


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

    from tase_loss.experiments.runner import merge_results

    parts = []
    for path in paths:
        if not os.path.isfile(path):
            raise FileNotFoundError(f"no such file: {path}")
        try:
            with open(path, encoding="utf-8") as handle:
                parts.append(json.load(handle))
        except json.JSONDecodeError as error:
            raise ValueError(f"{path} is not a results JSON: {error}") from None
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
    from tase_loss.reweighting import TemperatureMap

    digits = arguments.data == "digits"
    device = resolve_device(arguments.device)
    encoder = arguments.encoder
    if encoder == "auto":
        encoder = "digits-cnn" if digits else ("resnet18" if device.type == "cuda" else "small-cnn")
    if encoder not in ENCODERS:
        raise ValueError(f"unknown encoder {encoder!r}; choose from auto, {', '.join(sorted(ENCODERS))}")
    epochs = epochs or arguments.epochs or (40 if digits else 200)
    warmup = arguments.warmup_epochs or max(1, min(10, epochs // 4))
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
    except _UsageError as error:
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
