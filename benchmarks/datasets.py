"""Where the benchmark scripts find data files: an option, ``TASE_LOSS_DATA``, or ``../shared/data``.

A data file named by its option is used as given. Otherwise it is looked up in the data
folder: ``$TASE_LOSS_DATA`` when set, else the ``shared/data`` folder beside the
repository (``<repository>/../shared/data``, resolved from this file, not from the
working directory). No path of one machine is written anywhere.

Example:
    >>> from benchmarks.datasets import find_data_file
    >>> find_data_file("x.npz", "missing/x.npz", "--data")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    FileNotFoundError: x.npz not found at missing/x.npz (given by --data): pass --data PATH, or set TASE_LOSS_DATA ...
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

DATA_ENV = "TASE_LOSS_DATA"
"""Environment variable naming the folder of the data files."""

REPO_ROOT = Path(__file__).resolve().parent.parent
CIFAR10_LT = "cifar10_lt_r100.npz"
"""CIFAR-10-LT (ratio 100) as ``x (N, 32, 32, 3) uint8, y, x_test, y_test``."""


def data_dir() -> Path:
    """The data folder: ``$TASE_LOSS_DATA`` when set, else ``../shared/data`` beside the repository."""
    configured = os.environ.get(DATA_ENV)
    return Path(configured) if configured else REPO_ROOT.parent / "shared" / "data"


def find_data_file(name: str, path: Optional[str], option: str) -> Path:
    """The data file ``path`` if given, else ``name`` in :func:`data_dir`; it must exist.

    Args:
        name: file name inside the data folder, e.g. :data:`CIFAR10_LT`.
        path: the value of ``option`` (``None`` when not given).
        option: the command-line option that names the file, for the error message.

    Raises:
        FileNotFoundError: the file does not exist; the message names ``option`` and
            :data:`DATA_ENV`.
    """
    candidate = Path(path) if path is not None else data_dir() / name
    if not candidate.is_file():
        source = f"given by {option}" if path is not None else f"looked up in the data folder {data_dir()}"
        raise FileNotFoundError(
            f"{name} not found at {candidate} ({source}): pass {option} PATH, or set {DATA_ENV} to the "
            f"folder that holds {name} (default: ../shared/data beside the repository)"
        )
    return candidate
