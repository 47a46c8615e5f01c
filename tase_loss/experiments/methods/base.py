"""What every pre-training method shares: the batch, the context, precision, the base class.

A :class:`Method` is an ``nn.Module`` that owns everything a way of pre-training needs
beyond the encoder: the criterion, the pseudo-labeler, a predictor or momentum encoder.
The training loop only calls these hooks, so a new method (a two-pass SAM-style step, a
temperature schedule, a two-stage method) is a new class and one entry in
:data:`tase_loss.experiments.methods.METHODS`; the loop does not change:

- ``training_step(batch, model, optimizer) -> dict`` does forward, backward and the
  optimizer step (it may run forward/backward more than once) and returns detached
  0-dim tensors to log, so that the step never waits for the device;
- ``on_epoch_end(epoch) -> dict`` (re-estimation, schedules);
- ``sample_statistics() -> dict`` per-sample temperatures/weights/frequencies in use;
- ``checkpoint_state()`` / ``load_checkpoint_state(state)`` for exact resume.

Trainable parameters of the method (predictors) are optimized with the encoder's;
frozen ones (momentum encoders) have ``requires_grad=False``.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Optional

import numpy as np
import torch
from torch import Tensor, nn

from tase_loss import Guidance, PseudoLabeler
from tase_loss.experiments.encoders import ContrastiveModel

if TYPE_CHECKING:
    from tase_loss.experiments.methods import MethodSettings

__all__ = ["Batch", "Method", "MethodContext", "MixedPrecision", "faiss_threads", "frozen_copy", "momentum_update"]


@dataclass
class Batch:
    """Two augmented views ``(B, C, H, W)`` of the same images and their dataset indices ``(B,)``."""

    view0: Tensor
    view1: Tensor
    index: Tensor


@dataclass
class MethodContext:
    """What a method factory may read: dataset size, seed, device, settings, the run.

    Attributes:
        num_samples: training-set size ``N``.
        seed: the run's seed.
        device: the training device.
        settings: every method family's settings (:class:`~tase_loss.experiments.methods.MethodSettings`).
        precision: ``"bf16"``, ``"fp16"`` or ``"fp32"`` autocast on CUDA (CPU: fp32).
        train_labels: true training labels; only oracle methods (upper bounds) read them.
        epochs: the run's total epochs (schedules and stage splits read it).
        image_shape: ``(C, H, W)`` of the training images (sizes extra inputs, OOD data).
        augment: the run's augmentation, one view per image (methods that augment extra data).
        train_images: ``(N, C, H, W)`` un-augmented training images as the runner loaded
            them (label-free methods that estimate from the inputs read them).
    """

    num_samples: int
    seed: int
    device: torch.device
    settings: MethodSettings
    precision: str = "fp32"
    train_labels: Optional[np.ndarray] = None
    epochs: Optional[int] = None
    image_shape: Optional[tuple[int, int, int]] = None
    augment: Optional[nn.Module] = None
    train_images: Optional[np.ndarray] = None


PRECISIONS = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}


class MixedPrecision:
    """autocast on CUDA (bf16 needs no loss scaling; fp16 gets a GradScaler), fp32 otherwise.

    Example:
        >>> precision = MixedPrecision(torch.device("cpu"), "bf16")
        >>> layer = nn.Linear(2, 1)
        >>> optimizer = torch.optim.SGD(layer.parameters(), lr=0.1)
        >>> with precision.autocast():
        ...     loss = layer(torch.ones(1, 2)).sum()
        >>> precision.backward_step(loss, optimizer)
    """

    def __init__(self, device: torch.device, precision: str) -> None:
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {sorted(PRECISIONS)}, got {precision!r}")
        self.dtype = PRECISIONS[precision] if device.type == "cuda" else None
        self.device_type = device.type
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.dtype == torch.float16)

    def autocast(self) -> AbstractContextManager:
        return torch.autocast(self.device_type, dtype=self.dtype, enabled=self.dtype is not None)

    def backward_step(self, loss: Tensor, optimizer: torch.optim.Optimizer) -> None:
        """``zero_grad``, (scaled) backward and optimizer step."""
        optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(optimizer)
        self.scaler.update()


class Method(nn.Module):
    """Base class: one way of pre-training an encoder. See the module docstring.

    Attributes:
        labeler: the method's :class:`~tase_loss.PseudoLabeler`, if it uses one.
        guidance: its :class:`~tase_loss.Guidance` (the per-sample temperatures and
            weights it trains with), if any.
    """

    def __init__(self, context: MethodContext) -> None:
        super().__init__()
        self.context = context
        self.precision = MixedPrecision(context.device, context.precision)
        self.labeler: Optional[PseudoLabeler] = None
        self.guidance: Optional[Guidance] = None

    def training_step(
        self, batch: Batch, model: ContrastiveModel, optimizer: torch.optim.Optimizer
    ) -> dict[str, Tensor]:
        """Forward, backward and step on one batch; returns detached 0-dim tensors (``"loss"``)."""
        raise NotImplementedError

    def on_epoch_end(self, epoch: int) -> dict[str, float]:
        """Called after every epoch (0-based); re-estimates the frequencies when due."""
        if self.labeler is not None and self.labeler.end_epoch(epoch):
            return {"estimated": 1.0}
        return {}

    def sample_statistics(self) -> dict[str, np.ndarray]:
        """Per-sample ``frequency``, ``temperature`` and ``weight`` over the training set.

        Empty before the first estimate and for unguided methods.
        """
        return {} if self.guidance is None else self.guidance.sample_statistics()

    def checkpoint_state(self) -> dict[str, Any]:
        """Module buffers/parameters (the criterion's labeler included) and grad-scaler state."""
        return {"module": self.state_dict(), "scaler": self.precision.scaler.state_dict()}

    def load_checkpoint_state(self, state: dict[str, Any]) -> None:
        self.load_state_dict(state["module"])
        self.precision.scaler.load_state_dict(state["scaler"])

    def trainable_parameters(self) -> Iterator[nn.Parameter]:
        return (parameter for parameter in self.parameters() if parameter.requires_grad)


def faiss_threads() -> int:
    """The OpenMP threads every estimator of the runner gives FAISS: torch's own count.

    FAISS's own pool next to torch's oversubscribes a small CPU.
    """
    return torch.get_num_threads()


def frozen_copy(module: nn.Module) -> nn.Module:
    """A deep copy whose parameters take no gradient (a momentum encoder's start)."""
    duplicate = copy.deepcopy(module)
    for parameter in duplicate.parameters():
        parameter.requires_grad_(False)
    return duplicate


@torch.no_grad()
def momentum_update(online: nn.Module, target: nn.Module, momentum: float) -> None:
    """``target <- momentum * target + (1 - momentum) * online``; buffers are copied."""
    online_parameters = [parameter.detach() for parameter in online.parameters()]
    torch._foreach_lerp_(list(target.parameters()), online_parameters, 1.0 - momentum)
    for online_buffer, target_buffer in zip(online.buffers(), target.buffers()):
        target_buffer.copy_(online_buffer)
