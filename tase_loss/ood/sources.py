"""OOD data for the embedded digits default, shipped with scikit-learn (no download).

Our choice of OOD source: 8x8 grayscale patches cut from the two photographs that
scikit-learn bundles (``load_sample_images()``: ``china.jpg`` and ``flower.jpg``).
They are real images, unlabeled and outside the digit classes, and they are built the
way the digits were: scikit-learn's digits are 32x32 bitmaps reduced to 8x8 by
counting pixels in 4x4 blocks, values 0..16. So a patch is a random 32x32 grayscale
crop, averaged over 4x4 blocks and stretched to ``[0, 16]``: same input space and
range as the ID data, different semantics (natural textures and edges).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from tase_loss._validation import check_int

__all__ = ["sample_image_patches"]

MIN_CONTRAST = 16.0
"""Smallest range of gray levels (out of 255) a kept 8x8 patch spans."""


def sample_image_patches(num_patches: int, seed: int = 0) -> Tensor:
    """Digit-like 8x8 patches of scikit-learn's sample photographs.

    Needs scikit-learn (and Pillow, which its image loader uses).

    Crops whose 8x8 reduction spans fewer than :data:`MIN_CONTRAST` gray levels are
    drawn again.

    Args:
        num_patches: how many patches; crops are drawn uniformly from both images.
        seed: seed of the crop positions.

    Returns:
        ``(num_patches, 64)`` float32 tensor with values in ``[0, 16]``.

    Example:
        >>> patches = sample_image_patches(5)
        >>> tuple(patches.shape), float(patches.min()), float(patches.max())
        ((5, 64), 0.0, 16.0)
    """
    check_int("num_patches", num_patches, minimum=1)
    try:
        from sklearn.datasets import load_sample_images
    except ImportError as error:  # pragma: no cover - exercised only without scikit-learn
        raise ImportError("sample_image_patches needs scikit-learn") from error
    luma = np.array([0.299, 0.587, 0.114])
    grayscale = [image.astype(np.float64) @ luma for image in load_sample_images().images]
    rng = np.random.default_rng(seed)
    patches = np.empty((num_patches, 8, 8))
    row = 0
    while row < num_patches:
        image = grayscale[rng.integers(len(grayscale))]
        top = rng.integers(image.shape[0] - 32 + 1)
        left = rng.integers(image.shape[1] - 32 + 1)
        patch = image[top : top + 32, left : left + 32].reshape(8, 4, 8, 4).mean(axis=(1, 3))
        # Near-flat crops (sky, blur) would be stretched noise: draw again.
        if np.ptp(patch) >= MIN_CONTRAST:
            patches[row] = patch
            row += 1
    low = patches.min(axis=(1, 2), keepdims=True)
    span = np.maximum(patches.max(axis=(1, 2), keepdims=True) - low, 1e-12)
    return torch.from_numpy(16.0 * (patches - low) / span).float().reshape(num_patches, 64)
