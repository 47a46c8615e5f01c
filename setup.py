"""Packaging for tase-loss.

The compiled extension (csrc/) is optional and never required for ``pip install .``.
"""

from setuptools import find_packages, setup

EXTRAS = {
    "test": ["pytest>=7", "scikit-learn>=1.3", "numpy>=1.24"],
    "bench": ["pytest>=7", "pytest-benchmark>=4", "scikit-learn>=1.3"],
    "examples": ["scikit-learn>=1.3", "matplotlib>=3.7", "tqdm>=4.60", "kornia>=0.7"],
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
)
