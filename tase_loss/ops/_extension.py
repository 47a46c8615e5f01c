"""The only code that imports the compiled module ``tase_loss._C``.

Importing ``_C`` registers ``torch.ops.tase_loss`` (the fused contrastive-rows op). The
extension is optional: without it every loss runs pure PyTorch;
:func:`tase_loss.backend_info` says which path runs and why.

Environment variables (read once, at the first :func:`has_ext` call):

- ``TASE_LOSS_DISABLE_EXT=1``: never load it; the pure-PyTorch paths are used.
- ``TASE_LOSS_REQUIRE_EXT=1``: raise ``RuntimeError`` with the reason when it cannot be
  used, instead of falling back silently (CI sets it for the op tests).
- ``TASE_LOSS_JIT=1``: when no built ``_C`` is importable, compile it on first use with
  ``torch.utils.cpp_extension.load`` from the C++ sources (``tase_loss/ops/csrc`` in an
  installed copy, ``csrc/`` in a source checkout; see
  :func:`tase_loss.ops._build.source_root`), cached in ``TASE_LOSS_JIT_CACHE`` (default
  ``~/.cache/tase_loss/<torch version>``); one line on stderr says so while it compiles.
"""

from __future__ import annotations

import importlib
import os
import sys
from pathlib import Path
from types import ModuleType
from typing import Optional

import torch

from tase_loss.ops import _build

__all__ = ["has_ext", "load_error"]

DISABLE_VARIABLE = "TASE_LOSS_DISABLE_EXT"
REQUIRE_VARIABLE = "TASE_LOSS_REQUIRE_EXT"
JIT_VARIABLE = "TASE_LOSS_JIT"
JIT_CACHE_VARIABLE = "TASE_LOSS_JIT_CACHE"

_module: Optional[ModuleType] = None
_error: Optional[str] = None
_loaded = False


def _flag(name: str) -> bool:
    return os.environ.get(name, "") == "1"


def _jit_compile() -> ModuleType:
    """Compile ``_C`` from the C++ sources into a cached build directory."""
    from torch.utils import cpp_extension

    with_cuda = _build.wants_cuda(torch)
    sources = _build.sources(with_cuda)
    default_cache = Path.home() / ".cache" / "tase_loss" / torch.__version__
    build_directory = Path(os.environ.get(JIT_CACHE_VARIABLE, default_cache))
    build_directory.mkdir(parents=True, exist_ok=True)
    arguments = _build.extension_arguments(torch.__version__, with_cuda)
    if not any(build_directory.glob("_C*.so")):
        print(
            f"tase-loss: compiling the fused op once ({'CPU + CUDA' if with_cuda else 'CPU'}, about a minute "
            f"or two); cached in {build_directory}",
            file=sys.stderr,
            flush=True,
        )
    return cpp_extension.load(
        name="_C",
        sources=sources,
        extra_cflags=arguments["extra_compile_args"]["cxx"],
        extra_cuda_cflags=arguments["extra_compile_args"]["nvcc"],
        extra_ldflags=arguments["extra_link_args"],
        build_directory=str(build_directory),
        with_cuda=with_cuda,
        is_python_module=True,
    )


def _import_module() -> tuple[Optional[ModuleType], Optional[str]]:
    if _flag(DISABLE_VARIABLE):
        return None, f"disabled by {DISABLE_VARIABLE}=1"
    try:
        module = importlib.import_module("tase_loss._C")
    except ImportError as import_error:
        if not _flag(JIT_VARIABLE):
            return None, (
                f"tase_loss._C is not importable ({import_error}); build it with "
                "`TASE_LOSS_BUILD_EXT=1 pip install --no-build-isolation .` or set "
                f"{JIT_VARIABLE}=1 to compile it on first use"
            )
        try:
            module = _jit_compile()
        except Exception as jit_error:  # a compiler error must not break the fallback
            return None, f"JIT build of tase_loss._C failed: {jit_error}"
    built_for = getattr(module, "torch_version", "unknown")
    if built_for != torch.__version__:
        return None, (
            f"tase_loss._C was built for torch {built_for} but torch {torch.__version__} is "
            "running; rebuild the extension"
        )
    return module, None


def has_ext() -> bool:
    """Whether the compiled op is loaded and usable.

    Returns:
        ``True`` when ``torch.ops.tase_loss`` is registered by a build that matches the
        running torch; ``False`` otherwise (see :func:`load_error` for why).

    Raises:
        RuntimeError: ``TASE_LOSS_REQUIRE_EXT=1`` and the extension cannot be used.

    Example:
        >>> isinstance(has_ext(), bool)
        True
    """
    global _module, _error, _loaded
    if not _loaded:
        _module, _error = _import_module()
        _loaded = True
    if _module is None and _flag(REQUIRE_VARIABLE):
        raise RuntimeError(
            f"{REQUIRE_VARIABLE}=1 but the tase_loss extension is unusable: {_error}"
        )
    return _module is not None


def load_error() -> Optional[str]:
    """Why the extension is not in use, or ``None`` when it is loaded.

    Example:
        >>> (load_error() is None) == has_ext()
        True
    """
    has_ext()
    return _error
