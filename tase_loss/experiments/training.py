"""The pre-training loop: device-resident data, both views in one call, hooks, resume.

The loop knows nothing about losses; everything method-specific happens in the
:class:`~tase_loss.experiments.methods.base.Method` hooks. The whole training set sits
on the training device (uint8 where the pixels allow, 4x smaller than float32); each
step indexes a batch there, draws both views with one batched augmentation call and
hands them to the method. Nothing in a step reads a value back to the host: the batch
order comes from a generator on the device, the logged losses are summed on the
device and read once per epoch.

A checkpoint holds the model, optimizer, method (criterion buffers, pseudo-labeler,
grad scaler), the order generator, torch's RNG state and the run's settings, so a
resumed run repeats the uninterrupted one exactly (on the same device and thread
count), and a checkpoint written under other settings is refused
(:class:`CheckpointError`) instead of silently continuing.
"""

from __future__ import annotations

import math
import os
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Callable, Optional

import torch
from torch import Tensor, nn

from tase_loss.experiments.encoders import ContrastiveModel
from tase_loss.experiments.methods import Batch, Method

__all__ = ["CheckpointError", "TrainingConfig", "cosine_learning_rate", "load_checkpoint", "to_device_images", "train"]

EpochCallback = Callable[[int, Method], dict[str, float]]


class CheckpointError(ValueError):
    """A checkpoint that cannot be resumed: unreadable, or written under other settings."""


@dataclass
class TrainingConfig:
    """How long and how to optimize.

    Attributes:
        epochs: total epochs (the cosine schedule spans them).
        batch_size: images per batch (each gives two views).
        learning_rate: peak learning rate.
        weight_decay: decoupled (AdamW) or L2 (SGD) weight decay.
        optimizer: ``"adamw"`` or ``"sgd"`` (momentum 0.9).
        seed: seeds the batch-order generator.
        checkpoint_path: file written after every ``checkpoint_every`` epochs and at the
            end; an existing file is resumed from; ``None``: no checkpoints.
        checkpoint_every: epochs between checkpoints.
        stop_after_epochs: stop once this many epochs are done in total (to split a long
            run into jobs); ``None`` runs to ``epochs``.
        progress: a progress bar on a terminal, else one line per epoch; ``False``: silent.
        channels_last: keep images in channels-last layout (faster convolutions on GPUs).
        settings: the run's settings (data, method, hyper-parameters, versions), stored in
            checkpoints; resuming under different settings raises :class:`CheckpointError`.
        ignore_settings: resume even if the stored settings differ.
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
    channels_last: bool = False
    settings: Optional[dict[str, Any]] = None
    ignore_settings: bool = False


def cosine_learning_rate(peak: float, epoch: int, epochs: int) -> float:
    """Cosine decay from ``peak`` at epoch 0 towards 0 at ``epochs``.

    Example:
        >>> cosine_learning_rate(1.0, 0, 10), cosine_learning_rate(1.0, 5, 10)
        (1.0, 0.5)
    """
    return peak * 0.5 * (1.0 + math.cos(math.pi * epoch / epochs))


def to_device_images(images: Any, device: torch.device) -> Tensor:
    """``(N, C, H, W)`` images in ``[0, 1]`` as a tensor on ``device``: uint8 when exact.

    Images that are multiples of ``1/255`` (decoded JPEG/PNG pixels) are stored as
    uint8, a quarter of the memory; anything else (resized images, digits) as float32.

    Example:
        >>> import numpy as np
        >>> to_device_images(np.array([[[[0.0, 1.0]]]], dtype=np.float32), torch.device("cpu")).dtype
        torch.uint8
    """
    tensor = torch.as_tensor(images)
    if tensor.dtype == torch.uint8:
        return tensor.to(device)
    levels = tensor.double() * 255.0
    if bool((levels - levels.round()).abs().max() < 1e-4):
        return levels.round().to(torch.uint8).to(device)
    return tensor.float().to(device)


def _as_float(batch: Tensor) -> Tensor:
    return batch.float().div_(255.0) if batch.dtype == torch.uint8 else batch


def _build_optimizer(parameters: list[nn.Parameter], config: TrainingConfig) -> torch.optim.Optimizer:
    if config.optimizer == "adamw":
        return torch.optim.AdamW(parameters, lr=config.learning_rate, weight_decay=config.weight_decay)
    if config.optimizer == "sgd":
        return torch.optim.SGD(parameters, lr=config.learning_rate, momentum=0.9, weight_decay=config.weight_decay)
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


def settings_difference(stored: Mapping[str, Any], current: Mapping[str, Any], prefix: str = "") -> list[str]:
    """The dotted keys whose values differ between two nested settings dicts.

    Example:
        >>> settings_difference({"a": 1, "b": {"c": 2}}, {"a": 1, "b": {"c": 3}})
        ['b.c: 2 -> 3']
    """
    differences = []
    for key in sorted(set(stored) | set(current), key=str):
        name = f"{prefix}{key}"
        old, new = stored.get(key, "<absent>"), current.get(key, "<absent>")
        if isinstance(old, Mapping) and isinstance(new, Mapping):
            differences += settings_difference(old, new, f"{name}.")
        elif old != new:
            differences.append(f"{name}: {old!r} -> {new!r}")
    return differences


def load_checkpoint(path: str, settings: Optional[dict[str, Any]], ignore_settings: bool = False) -> dict[str, Any]:
    """Read a checkpoint safely (``weights_only=True``) and check its settings.

    Raises:
        CheckpointError: unreadable file, or settings that differ from ``settings``
            (unless ``ignore_settings``); the message names the differences.
    """
    try:
        # RNG states must stay CPU tensors; load_state_dict copies the rest to its device.
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch.load raises many types for a damaged or foreign file
        raise CheckpointError(
            f"cannot resume from {path}: not a readable checkpoint of this runner ({type(error).__name__}); "
            "it is loaded with weights_only=True, so files holding code are refused"
        ) from None
    if not isinstance(state, dict) or "epoch" not in state:
        raise CheckpointError(f"cannot resume from {path}: not a checkpoint of this runner")
    if settings is not None and not ignore_settings:
        differences = settings_difference(state.get("settings") or {}, settings)
        if differences:
            raise CheckpointError(
                f"{path} was written with other settings ({'; '.join(differences[:4])}"
                f"{'; ...' if len(differences) > 4 else ''}); use another --output, or --resume-anyway"
            )
    return state


def _progress_reporter(
    config: TrainingConfig, description: str, start_epoch: int
) -> tuple[Callable[[dict], None], Callable[[], None]]:
    """A tqdm bar on a terminal; one plain line per epoch otherwise; nothing if disabled."""
    if not config.progress:
        return (lambda record: None), (lambda: None)
    if sys.stderr.isatty():
        from tqdm.auto import tqdm

        bar = tqdm(total=config.epochs, initial=start_epoch, desc=description, leave=False)

        def update(record: dict) -> None:
            bar.update(1)
            bar.set_postfix(loss=f"{record['loss']:.3f}")

        return update, bar.close

    def line(record: dict) -> None:
        print(
            f"{description} epoch {int(record['epoch']) + 1}/{config.epochs}: loss {record['loss']:.4f} "
            f"({record['seconds']:.1f} s)",
            file=sys.stderr,
            flush=True,
        )

    return line, (lambda: None)


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
        method: the method (criterion and hooks), same device.
        images: ``(N, C, H, W)`` training images on the training device, uint8 or float
            in ``[0, 1]`` (:func:`to_device_images`).
        augment: batch augmentation producing one view per image.
        config: schedule, optimizer, checkpointing.
        epoch_callback: ``(epoch, method) -> dict`` of extra per-epoch measurements
            (e.g. frequency-estimate quality), stored in the history.
        description: label of the progress output.

    Returns:
        One dict per completed epoch: ``epoch``, ``loss`` (mean over batches), ``lr``,
        ``seconds`` (training time of the epoch), ``epoch_end_seconds`` (the method's
        epoch-end hook: re-estimation) and whatever the method's ``on_epoch_end`` and
        ``epoch_callback`` reported.
    """
    if config.epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {config.epochs}")
    device = images.device
    parameters = list(model.parameters()) + list(method.trainable_parameters())
    optimizer = _build_optimizer(parameters, config)
    generator = torch.Generator(device=device).manual_seed(config.seed)
    history: list[dict[str, float]] = []
    start_epoch = 0
    if config.checkpoint_path and os.path.isfile(config.checkpoint_path):
        state = load_checkpoint(config.checkpoint_path, config.settings, config.ignore_settings)
        try:
            model.load_state_dict(state["model"])
            method.load_checkpoint_state(state["method"])
            optimizer.load_state_dict(state["optimizer"])
            generator.set_state(state["generator"])
        except (KeyError, RuntimeError, ValueError, TypeError) as error:
            message = str(error).splitlines()[0] if str(error) else type(error).__name__
            raise CheckpointError(f"cannot resume from {config.checkpoint_path}: {message}") from None
        torch.set_rng_state(state["torch_rng"])
        if device.type == "cuda" and state.get("cuda_rng") is not None:
            torch.cuda.set_rng_state(state["cuda_rng"], device)
        history = list(state["history"])
        start_epoch = int(state["epoch"])
    last_epoch = min(config.epochs, config.stop_after_epochs or config.epochs)
    memory_format = torch.channels_last if config.channels_last else torch.contiguous_format

    report, close = _progress_reporter(config, description, start_epoch)
    for epoch in range(start_epoch, last_epoch):
        started = time.perf_counter()
        learning_rate = cosine_learning_rate(config.learning_rate, epoch, config.epochs)
        for group in optimizer.param_groups:
            group["lr"] = learning_rate
        model.train()
        method.train()
        totals: dict[str, Tensor] = {}
        order = torch.randperm(images.shape[0], generator=generator, device=device)
        batches = _batches(order, config.batch_size)
        for batch_index in batches:
            batch_images = _as_float(images[batch_index])
            with torch.no_grad():
                views = augment(torch.cat([batch_images, batch_images])).contiguous(memory_format=memory_format)
            view0, view1 = views.chunk(2)
            logged = method.training_step(Batch(view0, view1, batch_index), model, optimizer)
            for name, value in logged.items():
                totals[name] = totals[name] + value.float() if name in totals else value.float()
        record: dict[str, float] = {"epoch": float(epoch), "lr": learning_rate}
        # The one read of the epoch: the summed losses.
        values = torch.stack(list(totals.values())).cpu().tolist()
        record.update({name: value / len(batches) for name, value in zip(totals, values)})
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        record["seconds"] = time.perf_counter() - started
        hooks_started = time.perf_counter()
        record.update(method.on_epoch_end(epoch))
        record["epoch_end_seconds"] = time.perf_counter() - hooks_started
        if epoch_callback is not None:
            record.update(epoch_callback(epoch, method))
        history.append(record)
        report(record)
        done = epoch + 1
        if config.checkpoint_path and (done % config.checkpoint_every == 0 or done == last_epoch):
            _save(
                config.checkpoint_path,
                {
                    "epoch": done,
                    "settings": config.settings,
                    "model": model.state_dict(),
                    "method": method.checkpoint_state(),
                    "optimizer": optimizer.state_dict(),
                    "generator": generator.get_state(),
                    "torch_rng": torch.get_rng_state(),
                    "cuda_rng": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
                    "history": history,
                },
            )
    close()
    return history
