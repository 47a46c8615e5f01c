"""The pre-training loop: shuffling, views, the method's hooks, cosine LR, checkpoint/resume.

The loop knows nothing about losses; everything method-specific happens in
:class:`~tase_loss.experiments.methods.Method`'s hooks. A checkpoint holds the model,
optimizer, method (criterion buffers, pseudo-labeler, grad scaler), the shuffling
generator and torch's RNG state, so a resumed run repeats the uninterrupted one exactly
(on the same device and thread count).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any, Callable, Optional

import torch
from torch import Tensor, nn

from tase_loss.experiments.encoders import ContrastiveModel
from tase_loss.experiments.methods import Batch, Method

__all__ = ["TrainingConfig", "cosine_learning_rate", "train"]

EpochCallback = Callable[[int, Method], dict[str, float]]


@dataclass
class TrainingConfig:
    """How long and how to optimize.

    Attributes:
        epochs: total epochs (the cosine schedule spans them).
        batch_size: images per batch (each gives two views).
        learning_rate: peak learning rate.
        weight_decay: decoupled (AdamW) or L2 (SGD) weight decay.
        optimizer: ``"adamw"`` or ``"sgd"`` (momentum 0.9).
        seed: seeds the shuffling generator.
        checkpoint_path: file written after every ``checkpoint_every`` epochs and at the
            end; an existing file is resumed from.
        checkpoint_every: epochs between checkpoints.
        stop_after_epochs: stop once this many epochs are done in total (to split a long
            run into jobs); ``None`` runs to ``epochs``.
        progress: show a tqdm progress bar.
    """

    epochs: int
    batch_size: int = 256
    learning_rate: float = 1e-3
    weight_decay: float = 1e-5
    optimizer: str = "adamw"
    seed: int = 0
    checkpoint_path: Optional[str] = None
    checkpoint_every: int = 1
    stop_after_epochs: Optional[int] = None
    progress: bool = True


def cosine_learning_rate(peak: float, epoch: int, epochs: int) -> float:
    """Cosine decay from ``peak`` at epoch 0 towards 0 at ``epochs``.

    Example:
        >>> cosine_learning_rate(1.0, 0, 10), cosine_learning_rate(1.0, 5, 10)
        (1.0, 0.5)
    """
    return peak * 0.5 * (1.0 + math.cos(math.pi * epoch / epochs))


def _build_optimizer(parameters: list[nn.Parameter], config: TrainingConfig) -> torch.optim.Optimizer:
    if config.optimizer == "adamw":
        return torch.optim.AdamW(parameters, lr=config.learning_rate, weight_decay=config.weight_decay)
    if config.optimizer == "sgd":
        return torch.optim.SGD(
            parameters, lr=config.learning_rate, momentum=0.9, weight_decay=config.weight_decay
        )
    raise ValueError(f"optimizer must be 'adamw' or 'sgd', got {config.optimizer!r}")


def _batches(permutation: Tensor, batch_size: int) -> list[Tensor]:
    """Split a permutation into batches; a trailing batch of one sample is dropped (BatchNorm)."""
    batches = list(permutation.split(batch_size))
    if len(batches) > 1 and batches[-1].numel() < 2:
        batches.pop()
    return batches


def _save(path: str, state: dict[str, Any]) -> None:
    temporary = f"{path}.tmp"
    torch.save(state, temporary)
    os.replace(temporary, path)


def train(
    model: ContrastiveModel,
    method: Method,
    images: Tensor,
    augment: nn.Module,
    config: TrainingConfig,
    epoch_callback: Optional[EpochCallback] = None,
    description: str = "",
) -> list[dict[str, float]]:
    """Pre-train ``model`` with ``method`` on ``images`` and return the per-epoch history.

    Args:
        model: encoder + projection head, on the device of ``images``.
        method: the registered method (criterion and hooks), same device.
        images: ``(N, C, H, W)`` float training images in ``[0, 1]``.
        augment: batch augmentation producing one view per call.
        config: schedule, optimizer, checkpointing.
        epoch_callback: ``(epoch, method) -> dict`` of extra per-epoch measurements
            (e.g. pseudo-label quality), stored in the history.
        description: label of the progress bar.

    Returns:
        One dict per completed epoch: ``epoch``, ``loss`` (mean over batches), ``lr`` and
        whatever the method's ``on_epoch_end`` and ``epoch_callback`` reported.
    """
    from tqdm.auto import tqdm

    if config.epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {config.epochs}")
    parameters = list(model.parameters()) + list(method.trainable_parameters())
    optimizer = _build_optimizer(parameters, config)
    generator = torch.Generator().manual_seed(config.seed)
    history: list[dict[str, float]] = []
    start_epoch = 0
    if config.checkpoint_path and os.path.isfile(config.checkpoint_path):
        # RNG states must stay CPU tensors; load_state_dict copies the rest to its device.
        state = torch.load(config.checkpoint_path, map_location="cpu", weights_only=False)
        model.load_state_dict(state["model"])
        method.load_checkpoint_state(state["method"])
        optimizer.load_state_dict(state["optimizer"])
        generator.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        if images.device.type == "cuda" and state.get("cuda_rng") is not None:
            torch.cuda.set_rng_state(state["cuda_rng"], images.device)
        history = state["history"]
        start_epoch = state["epoch"]
    last_epoch = min(config.epochs, config.stop_after_epochs or config.epochs)

    progress = tqdm(
        total=config.epochs, initial=start_epoch, desc=description, disable=not config.progress, leave=False
    )
    for epoch in range(start_epoch, last_epoch):
        learning_rate = cosine_learning_rate(config.learning_rate, epoch, config.epochs)
        for group in optimizer.param_groups:
            group["lr"] = learning_rate
        model.train()
        method.train()
        losses = []
        for batch_index in _batches(torch.randperm(images.shape[0], generator=generator), config.batch_size):
            batch_images = images[batch_index.to(images.device)]
            with torch.no_grad():
                batch = Batch(augment(batch_images), augment(batch_images), batch_index.to(images.device))
            losses.append(method.training_step(batch, model, optimizer)["loss"])
        record = {"epoch": float(epoch), "loss": sum(losses) / len(losses), "lr": learning_rate}
        record.update(method.on_epoch_end(epoch))
        if epoch_callback is not None:
            record.update(epoch_callback(epoch, method))
        history.append(record)
        progress.update(1)
        progress.set_postfix(loss=f"{record['loss']:.3f}")
        done = epoch + 1
        if config.checkpoint_path and (done % config.checkpoint_every == 0 or done == last_epoch):
            _save(
                config.checkpoint_path,
                {
                    "epoch": done,
                    "model": model.state_dict(),
                    "method": method.checkpoint_state(),
                    "optimizer": optimizer.state_dict(),
                    "generator": generator.get_state(),
                    "torch_rng": torch.get_rng_state(),
                    "cuda_rng": torch.cuda.get_rng_state(images.device) if images.device.type == "cuda" else None,
                    "history": history,
                },
            )
    progress.close()
    return history
