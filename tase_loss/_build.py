"""How the compiled extension is built: one description for ``setup.py`` and the JIT.

``setup.py`` reads this file by path (it cannot import the package before it is built),
so it depends on nothing but the standard library at import time.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

SOURCE_ROOT = Path(__file__).resolve().parent / "csrc"
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


def sources(with_cuda: bool, root: Path = SOURCE_ROOT) -> list[str]:
    names = CPU_SOURCES + (CUDA_SOURCES if with_cuda else ())
    return [str(root / name) for name in names]


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
