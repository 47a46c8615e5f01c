"""The command line's options: ``build_parser()`` and the argument types that validate them.

Every numeric option is checked by its type, so a bad value is one line naming the
option (``argument --ratio: must be a finite number >= 1 and <= 130, got '0'``).
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence
from typing import Any, Callable, NoReturn, Optional, Union

__all__ = ["PROGRAM", "UsageError", "build_parser"]

PROGRAM = "tase-experiment"


class _OneLineParser(argparse.ArgumentParser):
    """argparse that reports a usage error as a single line."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(message)


class UsageError(Exception):
    """A usage error, reported as one line."""


class _RenamedOption(argparse.Action):
    """0.1's spelling of an option (hidden from ``--help``): says so on stderr, then acts as ``new``."""

    def __init__(self, option_strings: Sequence[str], dest: str, new: str, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, default=argparse.SUPPRESS, help=argparse.SUPPRESS, **kwargs)
        self.new = new

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Union[str, Sequence[Any], None],
        option_string: Optional[str] = None,
    ) -> None:
        print(
            f"{PROGRAM}: warning: {option_string} was renamed {self.new} in 0.2.0; the old name will be removed",
            file=sys.stderr,
        )
        setattr(namespace, self.dest, True if self.nargs == 0 else values)


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


def _seed_list(text: str) -> list[int]:
    """Distinct seeds in ``[0, MAX_SEED]`` (a repeated seed would pair a run with itself)."""
    from tase_loss.estimators import MAX_SEED

    seeds = _int_list(text)
    outside = [seed for seed in seeds if not 0 <= seed <= MAX_SEED]
    if outside:
        raise argparse.ArgumentTypeError(f"seeds must lie in [0, {MAX_SEED}], got {outside}")
    if len(set(seeds)) < len(seeds):
        raise argparse.ArgumentTypeError(f"seeds must be distinct, got {text!r}")
    return seeds


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
        "ntxent,tase,tase-oracle,tase-input,ts,rwsam); --list-methods shows them",
    )
    run.add_argument("--list-methods", action="store_true", help="print the available methods and exit")
    run.add_argument("--losses", dest="methods", action=_RenamedOption, new="--methods")
    run.add_argument("--list-losses", dest="list_methods", action=_RenamedOption, new="--list-methods", nargs=0)
    run.add_argument(
        "--seeds",
        type=_seed_list,
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
        help="with --budget-minutes: drop rwSAM, then TS, rather than run fewer epochs",
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
        "(default: PseudoLabeler's, 1, chosen by studies/warmup.py)",
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
