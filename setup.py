"""The build steps pyproject.toml cannot declare; all metadata is in pyproject.toml.

The C++/CUDA sources live in ``csrc/`` at the top of the repository. Every build copies
them into the package as ``tase_loss/ops/csrc`` (the ``build_py`` step below; MANIFEST.in
puts ``csrc/`` in the sdist), so that a wheel carries them and an installed copy can
compile the op on first use with ``TASE_LOSS_JIT=1``. Editable installs read ``csrc/``
in the checkout instead.

The extension itself is never required for ``pip install .``. ``TASE_LOSS_BUILD_EXT=1``
builds it at install (it needs torch and a C++ compiler in the build environment, so use
``pip install --no-build-isolation .`` or ``python setup.py build_ext --inplace``);
``TASE_LOSS_BUILD_CUDA=0/1`` overrides whether the CUDA kernel is compiled (default: when
torch has CUDA).
"""

import os
import runpy

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = os.path.dirname(os.path.abspath(__file__))
BUILD = runpy.run_path(os.path.join(HERE, "tase_loss", "ops", "_build.py"))


class BuildPyWithSources(build_py):
    """``build_py`` that also copies ``csrc/`` into the built package's ``tase_loss/ops/csrc``."""

    def _source_copies(self):
        checkout = str(BUILD["CHECKOUT_SOURCE_ROOT"])
        if not os.path.isdir(checkout):
            raise FileNotFoundError(f"the extension's sources are missing: no folder {checkout}")
        target = os.path.join(self.build_lib, os.path.relpath(str(BUILD["PACKAGED_SOURCE_ROOT"]), HERE))
        for folder, _, names in os.walk(checkout):
            for name in sorted(names):
                if name.endswith(BUILD["SOURCE_SUFFIXES"]):
                    source = os.path.join(folder, name)
                    yield source, os.path.join(target, os.path.relpath(source, checkout))

    def run(self):
        super().run()
        if getattr(self, "editable_mode", False):
            return
        for source, target in self._source_copies():
            self.mkpath(os.path.dirname(target))
            self.copy_file(source, target, preserve_mode=False)

    def get_outputs(self, include_bytecode=1):
        copies = [] if getattr(self, "editable_mode", False) else [target for _, target in self._source_copies()]
        return super().get_outputs(include_bytecode) + copies


def _extension_options():
    """``ext_modules`` and the ``build_ext`` command, empty unless TASE_LOSS_BUILD_EXT=1."""
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
    with_cuda = BUILD["wants_cuda"](torch)
    extension_type = cpp_extension.CUDAExtension if with_cuda else cpp_extension.CppExtension
    # Relative paths: setuptools refuses absolute source paths.
    sources = [os.path.relpath(path, HERE) for path in BUILD["sources"](with_cuda)]
    extension = extension_type(
        "tase_loss._C", sources, **BUILD["extension_arguments"](torch.__version__, with_cuda)
    )
    return {
        "ext_modules": [extension],
        "cmdclass": {"build_ext": cpp_extension.BuildExtension.with_options(use_ninja=True)},
    }


options = _extension_options()
options["cmdclass"] = {"build_py": BuildPyWithSources, **options.get("cmdclass", {})}
setup(**options)
