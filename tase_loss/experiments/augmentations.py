"""SimCLR augmentations on batches of tensors, vectorized in plain PyTorch.

One ``affine_grid``/``grid_sample`` call does every image's random resized crop, flip
and (for digits) rotation; colour jitter is per-image arithmetic (brightness, contrast,
saturation, and hue as a rotation in YIQ space). On 2 busy CPU cores this is several
times faster than the equivalent kornia pipeline, which matters when augmentation is a
third of a training step. Random draws use torch's global generator, so a seeded run is
reproducible and a checkpoint holding the RNG state resumes the same augmentations.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["SimCLRAugmentation", "simclr_augmentation"]

_LUMA = (0.299, 0.587, 0.114)


def _uniform(low: float, high: float, count: int, like: Tensor) -> Tensor:
    return torch.rand(count, device=like.device, dtype=like.dtype) * (high - low) + low


def _per_image(mask: Tensor, new: Tensor, old: Tensor) -> Tensor:
    return torch.where(mask[:, None, None, None], new, old)


class SimCLRAugmentation(nn.Module):
    """Random resized crop (+ flip, rotation), colour jitter, grayscale, noise on ``(B, C, H, W)``.

    Args:
        crop_scale: range of the crop's area fraction.
        crop_ratio: range of the crop's aspect ratio.
        flip: horizontal flip with probability 0.5.
        max_rotation: rotation angle range in degrees (``0`` for none).
        jitter: brightness, contrast, saturation, hue strengths (SimCLR: 0.4, 0.4, 0.4, 0.1).
        jitter_probability: probability of colour jitter per image.
        grayscale_probability: probability of grayscale per image.
        noise_std: std of additive Gaussian pixel noise (applied with probability 0.5).

    Example:
        >>> torch.manual_seed(0) is not None
        True
        >>> augment = SimCLRAugmentation()
        >>> views = augment(torch.rand(4, 3, 32, 32))
        >>> views.shape, bool(views.min() >= 0), bool(views.max() <= 1)
        (torch.Size([4, 3, 32, 32]), True, True)
    """

    def __init__(
        self,
        crop_scale: tuple[float, float] = (0.2, 1.0),
        crop_ratio: tuple[float, float] = (3 / 4, 4 / 3),
        flip: bool = True,
        max_rotation: float = 0.0,
        jitter: tuple[float, float, float, float] = (0.4, 0.4, 0.4, 0.1),
        jitter_probability: float = 0.8,
        grayscale_probability: float = 0.2,
        noise_std: float = 0.0,
    ) -> None:
        super().__init__()
        self.crop_scale = crop_scale
        self.crop_ratio = crop_ratio
        self.flip = flip
        self.max_rotation = max_rotation
        self.jitter = jitter
        self.jitter_probability = jitter_probability
        self.grayscale_probability = grayscale_probability
        self.noise_std = noise_std

    def _geometry(self, images: Tensor) -> Tensor:
        count = images.shape[0]
        area = _uniform(*self.crop_scale, count, images)
        log_ratio = _uniform(math.log(self.crop_ratio[0]), math.log(self.crop_ratio[1]), count, images)
        ratio = log_ratio.exp()
        # Half-widths of the crop in normalized coordinates ([-1, 1] spans the image).
        half_width = (area * ratio).sqrt().clamp(max=1.0)
        half_height = (area / ratio).sqrt().clamp(max=1.0)
        center_x = (1 - half_width) * _uniform(-1.0, 1.0, count, images)
        center_y = (1 - half_height) * _uniform(-1.0, 1.0, count, images)
        angle = _uniform(-self.max_rotation, self.max_rotation, count, images) * (math.pi / 180)
        flip = torch.ones_like(area)
        if self.flip:
            flip = torch.where(torch.rand_like(area) < 0.5, -flip, flip)
        cosine, sine = angle.cos(), angle.sin()
        theta = torch.stack(
            [
                torch.stack([half_width * cosine * flip, -half_height * sine, center_x], dim=1),
                torch.stack([half_width * sine * flip, half_height * cosine, center_y], dim=1),
            ],
            dim=1,
        )
        grid = F.affine_grid(theta, list(images.shape), align_corners=False)
        return F.grid_sample(images, grid, mode="bilinear", padding_mode="reflection", align_corners=False)

    def _color(self, images: Tensor) -> Tensor:
        count = images.shape[0]
        brightness, contrast, saturation, hue = self.jitter
        apply = torch.rand(count, device=images.device) < self.jitter_probability
        luma_weights = images.new_tensor(_LUMA)[None, :, None, None]
        jittered = images * _uniform(1 - brightness, 1 + brightness, count, images)[:, None, None, None]
        mean_luma = (jittered * luma_weights).sum(1, keepdim=True).mean((2, 3), keepdim=True)
        factor = _uniform(1 - contrast, 1 + contrast, count, images)[:, None, None, None]
        jittered = (factor * jittered + (1 - factor) * mean_luma).clamp(0, 1)
        luma = (jittered * luma_weights).sum(1, keepdim=True)
        factor = _uniform(1 - saturation, 1 + saturation, count, images)[:, None, None, None]
        jittered = (factor * jittered + (1 - factor) * luma).clamp(0, 1)
        if hue > 0:
            jittered = self._rotate_hue(jittered, _uniform(-hue, hue, count, images) * 2 * math.pi)
        images = _per_image(apply, jittered, images)
        gray = torch.rand(count, device=images.device) < self.grayscale_probability
        luma = (images * luma_weights).sum(1, keepdim=True).expand_as(images)
        return _per_image(gray, luma, images)

    @staticmethod
    def _rotate_hue(images: Tensor, angle: Tensor) -> Tensor:
        """Rotate chroma in YIQ space by ``angle`` radians per image."""
        to_yiq = images.new_tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
        to_rgb = torch.linalg.inv(to_yiq)
        cosine, sine = angle.cos(), angle.sin()
        rotation = torch.zeros(images.shape[0], 3, 3, device=images.device, dtype=images.dtype)
        rotation[:, 0, 0] = 1
        rotation[:, 1, 1], rotation[:, 1, 2] = cosine, -sine
        rotation[:, 2, 1], rotation[:, 2, 2] = sine, cosine
        matrix = to_rgb @ rotation @ to_yiq
        return torch.einsum("bij,bjhw->bihw", matrix, images).clamp(0, 1)

    def forward(self, images: Tensor) -> Tensor:
        """One random view of each ``(B, C, H, W)`` image in ``[0, 1]``."""
        views = self._geometry(images)
        if images.shape[1] == 3:
            views = self._color(views)
        if self.noise_std > 0:
            noisy = torch.rand(images.shape[0], device=images.device) < 0.5
            views = _per_image(noisy, (views + self.noise_std * torch.randn_like(views)).clamp(0, 1), views)
        return views


def simclr_augmentation(image_size: int, channels: int) -> nn.Module:
    """The view generator for ``(B, channels, image_size, image_size)`` batches in ``[0, 1]``.

    RGB images get SimCLR's CIFAR recipe: random resized crop (scale 0.2-1), horizontal
    flip, colour jitter (0.4, 0.4, 0.4, 0.1, p=0.8), grayscale (p=0.2). Grayscale images
    (digits) get a crop (scale 0.5-1), a rotation of up to 12 degrees and pixel noise:
    flips and colour changes would destroy or not affect them.

    Example:
        >>> simclr_augmentation(8, 1)(torch.rand(4, 1, 8, 8)).shape
        torch.Size([4, 1, 8, 8])
    """
    if channels == 3:
        return SimCLRAugmentation()
    del image_size  # the sampling grid follows the input size
    return SimCLRAugmentation(crop_scale=(0.5, 1.0), flip=False, max_rotation=12.0, noise_std=0.05)
