"""How the compiled extension is built: one description for ``setup.py``, the JIT and CI.

The C++/CUDA sources live in ``csrc/`` at the repository's top level. A build (wheel,
regular install) copies them into the package as ``tase_loss/ops/csrc`` (``setup.py``'s
``build_py`` step; ``MANIFEST.in`` puts ``csrc/`` in the sdist), so that an installed copy
can compile the op with ``TASE_LOSS_JIT=1``; :func:`source_root` finds either.

``setup.py`` reads this file by path (it cannot import the package before it is built),
so it depends on nothing but the standard library at import time.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

PACKAGED_SOURCE_ROOT = Path(__file__).resolve().parent / "csrc"
"""Where an installed copy holds the sources (``build_py`` copies ``csrc/`` there)."""
CHECKOUT_SOURCE_ROOT = Path(__file__).resolve().parent.parent.parent / "csrc"
"""Where a source checkout (or an unpacked sdist) holds them: ``csrc/`` beside ``tase_loss/``."""
SOURCE_SUFFIXES = (".cpp", ".h", ".cu")
"""The files of ``csrc/`` that a build ships inside the package."""
CPU_SOURCES = ("contrastive.cpp", "cpu/contrastive_cpu.cpp")
CUDA_SOURCES = ("cuda/contrastive_cuda.cu",)
# -fopenmp: at::parallel_for's OpenMP loop lives in a header and the row loops use
# `omp simd`; torch's own build uses OpenMP too, so both share one libgomp.
CXX_FLAGS = ("-O3", "-fopenmp")
NVCC_FLAGS = ("-O3",)


def version_define(torch_version: str) -> str:
    """The macro that records which torch the extension was compiled against.

    Unquoted (the C++ side stringizes it): setuptools and the JIT quote differently.
    """
    return f"-DTASE_LOSS_TORCH_VERSION={torch_version}"


def source_root() -> Path:
    """The folder holding the sources: the installed copy's, else the source checkout's.

    Raises:
        FileNotFoundError: neither holds every source file, naming both folders.
    """
    names = CPU_SOURCES + CUDA_SOURCES
    for root in (PACKAGED_SOURCE_ROOT, CHECKOUT_SOURCE_ROOT):
        if all((root / name).is_file() for name in names):
            return root
    raise FileNotFoundError(
        f"the extension's C++ sources {list(names)} are in neither {PACKAGED_SOURCE_ROOT} (an installed "
        f"copy) nor {CHECKOUT_SOURCE_ROOT} (a source checkout)"
    )


def sources(with_cuda: bool) -> list[str]:
    """Absolute paths of the files to compile, CPU first (see :func:`source_root`)."""
    root = source_root()
    return [str(root / name) for name in CPU_SOURCES + (CUDA_SOURCES if with_cuda else ())]


def extension_arguments(torch_version: str, with_cuda: bool) -> dict[str, Any]:
    """Keyword arguments shared by ``CppExtension``/``CUDAExtension`` and ``load``."""
    defines = [version_define(torch_version)] + (["-DTASE_LOSS_WITH_CUDA"] if with_cuda else [])
    return {
        "extra_compile_args": {
            "cxx": [*CXX_FLAGS, *defines],
            "nvcc": [*NVCC_FLAGS, *defines],
        },
        "extra_link_args": ["-fopenmp"],
    }


def wants_cuda(torch_module: Any) -> bool:
    """Build the CUDA kernel when torch has CUDA, or when TASE_LOSS_BUILD_CUDA=1 forces it."""
    forced = os.environ.get("TASE_LOSS_BUILD_CUDA")
    if forced is not None:
        return forced == "1"
    return torch_module.version.cuda is not None
