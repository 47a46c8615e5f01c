"""Packaging for tase-loss.

The compiled extension (csrc/) is optional and never required for ``pip install .``.
``TASE_LOSS_BUILD_EXT=1`` builds it (needs torch and a C++ compiler in the build
environment, so use ``pip install --no-build-isolation .`` or
``python setup.py build_ext --inplace``); ``TASE_LOSS_BUILD_CUDA=0/1`` overrides whether
the CUDA kernel is compiled (default: when torch has CUDA).
"""

import os
import runpy

from setuptools import find_packages, setup


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


# Pillow: scikit-learn's load_sample_images() (the OOD patches of tase_loss.ood) needs it.
EXAMPLES = ["scikit-learn>=1.3", "matplotlib>=3.7", "tqdm>=4.60", "pillow>=9"]
EXTRAS = {
    # The tests run the experiment runner and the recipes, so they need what they import.
    "test": ["pytest>=7", *EXAMPLES],
    "bench": [
        "pytest>=7",
        "scikit-learn>=1.3",
        "threadpoolctl>=3",
        # Its own requirements (numpy, scikit-learn, tqdm, torch>=1.6) are met by the
        # CPU torch installed first, so this pulls no new torch.
        "pytorch-metric-learning>=2",
    ],
    "examples": EXAMPLES,
}
EXTRAS["all"] = sorted({requirement for group in EXTRAS.values() for requirement in group})

setup(
    name="tase-loss",
    version="0.1.0",
    description=(
        "TASE: per-sample temperature and re-weighting from pseudo-labels for "
        "contrastive self-supervised learning on long-tailed data"
    ),
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="MIT",
    python_requires=">=3.9",
    packages=find_packages(include=["tase_loss", "tase_loss.*"]),
    package_data={"tase_loss": ["py.typed"]},
    install_requires=["torch>=2.1", "numpy>=1.24", "faiss-cpu>=1.7.4"],
    extras_require=EXTRAS,
    entry_points={"console_scripts": ["tase-experiment=tase_loss.experiments.cli:main"]},
    classifiers=[
        "License :: OSI Approved :: MIT License",
        "Programming Language :: Python :: 3",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
        "Typing :: Typed",
    ],
    **_extension_options(),
)
