"""The optional compiled extension; all metadata is in pyproject.toml.

The extension (``tase_loss/csrc/``) is never required for ``pip install .``.
``TASE_LOSS_BUILD_EXT=1`` builds it at install (it needs torch and a C++ compiler in the
build environment, so use ``pip install --no-build-isolation .`` or
``python setup.py build_ext --inplace``); ``TASE_LOSS_BUILD_CUDA=0/1`` overrides whether
the CUDA kernel is compiled (default: when torch has CUDA). Without it, an installed copy
can still compile the op on first use with ``TASE_LOSS_JIT=1``.
"""

import os
import runpy

from setuptools import setup


def _extension_options():
    """``ext_modules``/``cmdclass`` for setup(), empty unless TASE_LOSS_BUILD_EXT=1."""
    if os.environ.get("TASE_LOSS_BUILD_EXT") != "1":
        return {}
    try:
        import torch
        from torch.utils import cpp_extension
    except ImportError as error:
        raise RuntimeError(
            "TASE_LOSS_BUILD_EXT=1 needs torch importable at build time; install torch first "
            "and build with `pip install --no-build-isolation .`"
        ) from error
    here = os.path.dirname(os.path.abspath(__file__))
    build = runpy.run_path(os.path.join(here, "tase_loss", "_build.py"))
    with_cuda = build["wants_cuda"](torch)
    extension_type = cpp_extension.CUDAExtension if with_cuda else cpp_extension.CppExtension
    # Relative paths: setuptools refuses absolute source paths.
    sources = [os.path.relpath(path, here) for path in build["sources"](with_cuda)]
    extension = extension_type(
        "tase_loss._C", sources, **build["extension_arguments"](torch.__version__, with_cuda)
    )
    return {
        "ext_modules": [extension],
        "cmdclass": {"build_ext": cpp_extension.BuildExtension.with_options(use_ninja=True)},
    }


setup(**_extension_options())
