"""Peer libraries' NT-Xent losses, loaded without their heavy package imports.

* pytorch-metric-learning installs cleanly next to the CPU torch
  (``pip install --no-deps pytorch-metric-learning``; its other requirements, numpy,
  scikit-learn and tqdm, are already there), so it is imported normally.
* lightly's package ``__init__`` imports torchvision (through ``lightly.models``),
  which has no CPU build here, and ``pip install lightly`` would pull a CUDA torch.
  Its loss, ``lightly/loss/ntx_ent_loss.py``, needs only torch and two small lightly
  modules. So the wheel is fetched with ``pip download lightly==1.6.0 --no-deps``
  (cached under :data:`PEER_CACHE`) and three source files are executed from it:

  - ``lightly/utils/dist.py`` (real; pure torch),
  - ``lightly/models/modules/memory_bank.py`` (real; ``MemoryBankModule``, which with
    ``memory_bank_size=0`` returns ``(out1, None)`` and is used as such),
  - ``lightly/loss/ntx_ent_loss.py`` (real; ``NTXentLoss``).

  Stubbed: the package ``__init__`` files of ``lightly``, ``lightly.loss``,
  ``lightly.models``, ``lightly.models.modules`` and ``lightly.utils`` are never run
  (empty namespace modules stand in for them), and ``lightly.models.utils`` (which
  imports torchvision) is an empty module: memory_bank.py only calls its
  ``concat_all_gather`` when gathering across several processes, which a
  single-process benchmark never does.

If lightly is importable for real (e.g. installed with torchvision on a GPU machine),
that import is used instead.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import subprocess
import sys
import types
import zipfile
from pathlib import Path
from typing import Any

LIGHTLY_VERSION = "1.6.0"
PEER_CACHE = Path(
    os.environ.get("TASE_BENCH_PEER_CACHE", Path.home() / ".cache" / "tase-loss-bench")
)

_LIGHTLY_SOURCES = (
    ("lightly.utils.dist", "lightly/utils/dist.py"),
    ("lightly.models.modules.memory_bank", "lightly/models/modules/memory_bank.py"),
    ("lightly.loss.ntx_ent_loss", "lightly/loss/ntx_ent_loss.py"),
)
_LIGHTLY_PACKAGES = ("lightly", "lightly.loss", "lightly.models", "lightly.models.modules", "lightly.utils")


class PeerUnavailable(RuntimeError):
    """A peer library cannot be loaded here; the message says why."""


def pml_ntxent_class() -> Any:
    """``pytorch_metric_learning.losses.NTXentLoss``."""
    try:
        from pytorch_metric_learning.losses import NTXentLoss
    except ImportError as error:
        raise PeerUnavailable(
            f"pytorch-metric-learning is not installed ({error}); "
            "`pip install --no-deps pytorch-metric-learning` (needs numpy, scikit-learn, tqdm)"
        ) from error
    return NTXentLoss


def pml_version() -> str:
    import pytorch_metric_learning

    return pytorch_metric_learning.__version__


def _lightly_source_root() -> Path:
    """Directory holding lightly's unpacked wheel; downloads it on first use."""
    root = PEER_CACHE / f"lightly-{LIGHTLY_VERSION}"
    if (root / _LIGHTLY_SOURCES[-1][1]).is_file():
        return root
    PEER_CACHE.mkdir(parents=True, exist_ok=True)
    wheel = PEER_CACHE / f"lightly-{LIGHTLY_VERSION}-py3-none-any.whl"
    if not wheel.is_file():
        command = [
            sys.executable, "-m", "pip", "download", f"lightly=={LIGHTLY_VERSION}",
            "--no-deps", "--quiet", "-d", str(PEER_CACHE),
        ]
        try:
            subprocess.run(command, check=True, capture_output=True, timeout=180)
        except (subprocess.SubprocessError, OSError) as error:
            raise PeerUnavailable(
                f"could not download lightly {LIGHTLY_VERSION} ({' '.join(command)}): {error}"
            ) from error
    with zipfile.ZipFile(wheel) as archive:
        for _, relative in _LIGHTLY_SOURCES:
            archive.extract(relative, root)
    return root


def _load_lightly_from_wheel() -> Any:
    root = _lightly_source_root()
    for package in _LIGHTLY_PACKAGES:
        module = types.ModuleType(package)
        module.__path__ = []  # a package with nothing importable unless registered below
        sys.modules.setdefault(package, module)
    sys.modules.setdefault("lightly.models.utils", types.ModuleType("lightly.models.utils"))
    for name, relative in _LIGHTLY_SOURCES:
        if name in sys.modules:
            continue
        spec = importlib.util.spec_from_file_location(name, root / relative)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
        parent, _, child = name.rpartition(".")
        setattr(sys.modules[parent], child, module)
    return sys.modules["lightly.loss.ntx_ent_loss"].NTXentLoss


def lightly_ntxent_class() -> Any:
    """lightly's ``NTXentLoss``: a real install if importable, else from the wheel."""
    loaded = sys.modules.get("lightly.loss.ntx_ent_loss")
    if loaded is not None:
        return loaded.NTXentLoss
    try:
        return importlib.import_module("lightly.loss.ntx_ent_loss").NTXentLoss
    except ImportError:
        # A failed real import can leave half-initialized lightly modules behind.
        for name in [name for name in sys.modules if name.split(".")[0] == "lightly"]:
            del sys.modules[name]
    try:
        return _load_lightly_from_wheel()
    except PeerUnavailable:
        raise
    except Exception as error:
        raise PeerUnavailable(f"could not load lightly's ntx_ent_loss.py: {error!r}") from error


def lightly_version() -> str:
    module = sys.modules.get("lightly")
    return getattr(module, "__version__", f"{LIGHTLY_VERSION} (ntx_ent_loss.py from the wheel)")
