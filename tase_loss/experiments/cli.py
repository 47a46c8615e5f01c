"""Command line: ``tase-experiment`` / ``python -m tase_loss.experiments``.

With no arguments it runs the embedded default: digits-LT (scikit-learn's handwritten
digits, exponential profile, ratio 10), NT-Xent vs TASE, 5 seeds of 40 epochs, about
two minutes of CPU time. ``--data PATH`` runs on a long-tailed ``.npz`` (``x, y,
x_test, y_test``) or an image folder (``PATH/train/<class>/``, ``PATH/test/<class>/``).

Bad input ends with one line on stderr (``tase-experiment: error: ...``) and exit code 2.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import NoReturn, Optional

__all__ = ["build_parser", "main"]

PROGRAM = "tase-experiment"


class _OneLineParser(argparse.ArgumentParser):
    """argparse that reports a usage error as a single line."""

    def error(self, message: str) -> NoReturn:
        raise _UsageError(message)


class _UsageError(Exception):
    pass


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {text}")
    return value


def _int_list(text: str) -> list[int]:
    try:
        return [int(item) for item in text.split(",") if item.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (``--help`` documents every option)."""
    parser = _OneLineParser(
        prog=PROGRAM,
        description=(
            "Pre-train an encoder with contrastive losses on long-tailed data and evaluate it: "
            "linear probe (Many/Medium/Few/All/Std), kNN, several seeds; writes results.json "
            "and results.png. No arguments: digits-LT, NT-Xent vs TASE."
        ),
    )
    data = parser.add_argument_group("data")
    data.add_argument("--data", default="digits",
                      help="'digits' (embedded digits-LT), a .npz with x, y, x_test, y_test, "
                           "or a folder with train/<class>/ and test/<class>/ images")
    data.add_argument("--probe", default=None,
                      help="balanced probe set (.npz with x, y, or a <class>/ folder) for the linear "
                           "probe and kNN, e.g. cifar10_probe_100shot.npz (100-shot protocol)")
    data.add_argument("--ratio", type=float, default=10.0, help="digits-LT imbalance ratio n_max/n_min")
    data.add_argument("--image-size", type=_positive_int, default=None,
                      help="resize images to SIZE x SIZE (a CPU-budget knob; default: as stored)")
    data.add_argument("--num-classes", type=_positive_int, default=None,
                      help="number of classes of a .npz (default: max(y) + 1)")

    run = parser.add_argument_group("run")
    run.add_argument("--losses", default="ntxent,tase",
                     help="comma-separated loss names; --list-losses shows them")
    run.add_argument("--list-losses", action="store_true", help="print the registered losses and exit")
    run.add_argument("--seeds", type=_int_list, default=None,
                     help="comma-separated seeds (default 0,1,2,3,4 for digits, 0,1,2 otherwise)")
    run.add_argument("--encoder", default="auto",
                     help="digits-cnn, small-cnn or resnet18 (auto: digits-cnn for digits, "
                          "resnet18 on CUDA, small-cnn on CPU)")
    run.add_argument("--epochs", type=_positive_int, default=None,
                     help="pre-training epochs (default 40 for digits, 200 otherwise)")
    run.add_argument("--batch-size", type=_positive_int, default=None,
                     help="default 128 for digits, 256 otherwise")
    run.add_argument("--optimizer", choices=("adamw", "sgd"), default="adamw")
    run.add_argument("--lr", type=float, default=None,
                     help="peak learning rate, cosine decay (default 1e-3 AdamW, 0.5 SGD)")
    run.add_argument("--weight-decay", type=float, default=None,
                     help="default 1e-5 AdamW, 5e-4 SGD")
    run.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    run.add_argument("--no-amp", action="store_true", help="disable mixed precision on CUDA")
    run.add_argument("--threads", type=_positive_int, default=None,
                     help="torch CPU threads (default: 1 for digits, whose tiny model gains nothing "
                          "from more and loses much on a busy CPU; torch's default otherwise)")
    run.add_argument("--output", default="tase_experiment_output",
                     help="folder for results.json, results.png and checkpoints/")
    run.add_argument("--resume", action="store_true",
                     help="resume runs from the checkpoints in OUTPUT/checkpoints")
    run.add_argument("--checkpoint-every", type=_positive_int, default=5, help="epochs between checkpoints")
    run.add_argument("--stop-after-epochs", type=_positive_int, default=None,
                     help="stop each run after this many epochs in total (resume later with --resume)")
    run.add_argument("--knn-k", type=_positive_int, default=20, help="neighbours of the kNN evaluation")
    run.add_argument("--no-progress", action="store_true", help="no progress bar")
    run.add_argument("--merge", nargs="+", metavar="RESULTS_JSON", default=None,
                     help="do not train: merge results.json files of separate jobs into OUTPUT")

    tase = parser.add_argument_group("TASE (see TASE_METHOD.md)")
    tase.add_argument("--temperature", type=float, default=0.2, help="base temperature t_base")
    tase.add_argument("--gamma", type=float, default=0.25, help="power-map exponent")
    tase.add_argument("--min-temperature", type=float, default=0.05)
    tase.add_argument("--max-temperature", type=float, default=1.0)
    tase.add_argument("--mapping", choices=("power", "range"), default="power")
    tase.add_argument("--alpha", type=float, default=0.5, help="re-weighting exponent")
    tase.add_argument("--max-weight", type=float, default=10.0)
    tase.add_argument("--clusters", type=_int_list, default=None,
                      help="k of the pseudo-labeler (comma-separated for an ensemble; default: #classes)")
    tase.add_argument("--warmup-epochs", type=int, default=None,
                      help="epochs of NT-Xent before the first clustering (default: a quarter of --epochs, at most 10)")
    tase.add_argument("--recluster-every", type=_positive_int, default=1)
    tase.add_argument("--label-momentum", type=float, default=0.5)
    tase.add_argument("--queue-size", type=_positive_int, default=4096, help="MoCo queue length")

    baselines = parser.add_argument_group("baselines (see docs/plugins.md)")
    baselines.add_argument("--sam-rho", type=float, default=0.5,
                           help="rwsam: neighbourhood radius (adaptive SAM, as in the official runs)")
    baselines.add_argument("--ts-period", type=float, default=None,
                           help="ts, tase-ts: period of the cosine temperature schedule in epochs "
                                "(default: --epochs, one cycle 1.0 -> 0.1 -> 1.0)")
    return parser


def _load_data(arguments: argparse.Namespace):
    from tase_loss.experiments.data import (
        DataError,
        load_digits_lt,
        load_image_folder,
        load_npz,
        resize_images,
    )

    if arguments.data == "digits":
        if arguments.probe is not None:
            raise DataError("--probe does not apply to the embedded digits data")
        return load_digits_lt(ratio=arguments.ratio)
    if os.path.isdir(arguments.data):
        data = load_image_folder(arguments.data, arguments.probe)
    elif os.path.exists(arguments.data):
        data = load_npz(arguments.data, arguments.probe, arguments.num_classes)
    else:
        raise DataError(f"no such file or folder: {arguments.data}")
    return data if arguments.image_size is None else resize_images(data, arguments.image_size)


def _parse_losses(text: str) -> list[str]:
    from tase_loss.experiments.methods import METHODS

    losses = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in losses if name not in METHODS]
    if unknown or not losses:
        raise ValueError(
            f"unknown loss {', '.join(unknown) or '(none given)'}; choose from {', '.join(sorted(METHODS))}"
        )
    return losses


def _report(results: dict, output_dir: str, knn_k: int) -> None:
    from tase_loss.experiments.reporting import format_table, plot_results, write_json

    json_path = os.path.join(output_dir, "results.json")
    png_path = os.path.join(output_dir, "results.png")
    write_json(results, json_path)
    plot_results(results, png_path)
    print(format_table(results["summary"]))
    groups = results["dataset"]["groups"]
    print(
        f"Many/Medium/Few = classes {groups['many']}/{groups['medium']}/{groups['few']} ranked by training count; "
        f"Std = std of the three group accuracies; kNN = cosine {knn_k}-NN accuracy"
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


def _configure(arguments: argparse.Namespace, data):
    import torch

    from tase_loss.experiments.encoders import ENCODERS
    from tase_loss.experiments.methods import MethodSettings
    from tase_loss.experiments.runner import ExperimentConfig, resolve_device
    from tase_loss.experiments.training import TrainingConfig

    losses = _parse_losses(arguments.losses)
    digits = arguments.data == "digits"
    device = resolve_device(arguments.device)
    encoder = arguments.encoder
    if encoder == "auto":
        encoder = "digits-cnn" if digits else ("resnet18" if device.type == "cuda" else "small-cnn")
    if encoder not in ENCODERS:
        raise ValueError(f"unknown encoder {encoder!r}; choose from auto, {', '.join(sorted(ENCODERS))}")
    epochs = arguments.epochs or (40 if digits else 200)
    warmup = arguments.warmup_epochs if arguments.warmup_epochs is not None else min(10, epochs // 4)
    sgd = arguments.optimizer == "sgd"
    clusters = tuple(arguments.clusters or [data.num_classes])
    if any(k < 1 or k > data.x_train.shape[0] for k in clusters):
        raise ValueError(f"--clusters must lie in [1, {data.x_train.shape[0]}], got {list(clusters)}")
    threads = arguments.threads or (1 if digits else None)
    if threads:
        torch.set_num_threads(threads)
    settings = MethodSettings(
        temperature=arguments.temperature,
        gamma=arguments.gamma,
        min_temperature=arguments.min_temperature,
        max_temperature=arguments.max_temperature,
        mapping=arguments.mapping,
        alpha=arguments.alpha,
        max_weight=arguments.max_weight,
        num_clusters=clusters,
        warmup_epochs=warmup,
        recluster_every=arguments.recluster_every,
        label_momentum=arguments.label_momentum,
        queue_size=arguments.queue_size,
        sam_rho=arguments.sam_rho,
        ts_period=arguments.ts_period,
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
    return ExperimentConfig(
        losses=losses,
        seeds=arguments.seeds if arguments.seeds is not None else ([0, 1, 2, 3, 4] if digits else [0, 1, 2]),
        encoder=encoder,
        training=training,
        method=settings,
        device=str(device),
        amp=not arguments.no_amp,
        knn_k=arguments.knn_k,
        output_dir=arguments.output,
        resume=arguments.resume,
    )


def _run(argv: Optional[list[str]]) -> int:
    arguments = build_parser().parse_args(argv)
    from tase_loss.experiments.methods import METHODS

    if arguments.list_losses:
        for name, (_, description) in sorted(METHODS.items()):
            print(f"{name:18s} {description}")
        return 0
    if arguments.merge:
        return _merge(arguments.merge, arguments.output, arguments.knn_k)
    from tase_loss.experiments.reporting import write_json
    from tase_loss.experiments.runner import run_experiment

    _parse_losses(arguments.losses)  # fail before loading data
    data = _load_data(arguments)
    config = _configure(arguments, data)
    print(
        f"{data.name}: {data.x_train.shape[0]} training images, class counts "
        f"{data.class_counts.tolist()}; probe: {data.probe_note}; test: {data.x_test.shape[0]} images",
        file=sys.stderr,
    )
    print(
        f"encoder {config.encoder}, {config.training.epochs} epochs, batch {config.training.batch_size}, "
        f"{config.training.optimizer} lr {config.training.learning_rate:g}, device {config.device}, "
        f"losses {config.losses}, seeds {config.seeds}, TASE warm-up {config.method.warmup_epochs} epochs, "
        f"k={list(config.method.num_clusters)}",
        file=sys.stderr,
    )
    started = time.time()
    command = " ".join([PROGRAM] + (sys.argv[1:] if argv is None else list(argv)))
    json_path = os.path.join(config.output_dir, "results.json")
    finished_runs = []

    def save_partial(run: dict) -> None:
        finished_runs.append(run)
        write_json({"command": command, "partial": True, "runs": finished_runs}, json_path)

    results = run_experiment(data, config, on_run_done=save_partial)
    results["wall_seconds"] = time.time() - started
    results["command"] = command
    _report(results, config.output_dir, config.knn_k)
    print(f"total {results['wall_seconds']:.0f} s")
    return 0


def main(argv: Optional[list[str]] = None) -> int:
    """Entry point; returns the exit code (0 success, 2 bad input)."""
    try:
        return _run(argv)
    except _UsageError as error:
        print(f"{PROGRAM}: error: {error} (see --help)", file=sys.stderr)
    except (ValueError, TypeError, FileNotFoundError, IsADirectoryError, PermissionError) as error:
        message = str(error).splitlines()[0] if str(error) else type(error).__name__
        print(f"{PROGRAM}: error: {message}", file=sys.stderr)
    except KeyboardInterrupt:
        print(f"{PROGRAM}: interrupted (resume with --resume)", file=sys.stderr)
        return 130
    return 2
