"""Pre-training methods: a registry of name -> how to build the criterion and train one step.

A :class:`Method` is an ``nn.Module`` that owns everything a way of pre-training needs
beyond the encoder: the criterion, the pseudo-labeler, a predictor or momentum encoder.
The training loop only calls four hooks, so a new method (a two-pass SAM-style step, a
temperature schedule, a two-stage method) is a new class and one
:func:`register_method` call; the loop does not change:

- ``training_step(batch, model, optimizer) -> dict`` does forward, backward and the
  optimizer step (it may run forward/backward more than once);
- ``on_epoch_end(epoch) -> dict`` (re-clustering, schedules);
- ``sample_statistics() -> dict`` per-sample temperatures/weights/frequencies in use;
- ``checkpoint_state()`` / ``load_checkpoint_state(state)`` for exact resume.

Trainable parameters of the method (predictors) are optimized with the encoder's;
frozen ones (momentum encoders) have ``requires_grad=False``.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import numpy as np
import torch
from torch import Tensor, nn

from tase_loss import (
    PseudoLabeler,
    SampleReweighter,
    TASEContrastiveLoss,
    TASECosineLoss,
    TemperatureMap,
)
from tase_loss.experiments.encoders import ContrastiveModel

__all__ = [
    "METHODS",
    "Batch",
    "ContrastiveMethod",
    "CosineMethod",
    "Method",
    "MethodContext",
    "MethodSettings",
    "MixedPrecision",
    "build_method",
    "register_method",
]


@dataclass
class Batch:
    """Two augmented views ``(B, C, H, W)`` of the same images and their dataset indices ``(B,)``."""

    view0: Tensor
    view1: Tensor
    index: Tensor


@dataclass
class MethodSettings:
    """Hyper-parameters shared by the registered methods (TASE's measured choices included).

    Attributes:
        temperature: base temperature ``t_base`` (NT-Xent's ``t``).
        gamma: exponent of the power temperature map.
        min_temperature, max_temperature: temperature clip range.
        mapping: ``"power"`` or ``"range"``.
        alpha: re-weighting exponent; ``max_weight`` its clip.
        num_clusters: k of the pseudo-labeler's k-means (a tuple is an ensemble).
        warmup_epochs: epochs of plain NT-Xent before the first clustering.
        recluster_every: epochs between clusterings.
        label_momentum: EMA factor of the log-frequency across clusterings.
        queue_size: MoCo queue length.
        ema_momentum: momentum of MoCo's key encoder and BYOL's target encoder.
        sam_rho, sam_adaptive: rwSAM's neighbourhood radius and ASAM switch (the official
            rwSAM runs: 0.5, adaptive).
        ts_min_temperature, ts_max_temperature: ``t_lo``, ``t_hi`` of the TS schedule.
        ts_period: the TS schedule's period ``T`` in epochs; ``None``: the run's number
            of epochs (one cycle, ``t_hi -> t_lo -> t_hi``).
    """

    temperature: float = 0.2
    gamma: float = 0.25
    min_temperature: float = 0.05
    max_temperature: float = 1.0
    mapping: str = "power"
    alpha: float = 0.5
    max_weight: float = 10.0
    num_clusters: tuple[int, ...] = (10,)
    warmup_epochs: int = 10
    recluster_every: int = 1
    label_momentum: float = 0.5
    queue_size: int = 4096
    ema_momentum: float = 0.99
    sam_rho: float = 0.5
    sam_adaptive: bool = True
    ts_min_temperature: float = 0.1
    ts_max_temperature: float = 1.0
    ts_period: Optional[float] = None


@dataclass
class MethodContext:
    """What a method factory may read: dataset size, seed, device, settings, the run."""

    num_samples: int
    seed: int
    device: torch.device
    amp: bool = False
    settings: MethodSettings = field(default_factory=MethodSettings)
    train_labels: Optional[np.ndarray] = None
    """True training labels; only oracle methods (upper bounds) read them."""
    epochs: Optional[int] = None
    """The run's total epochs (schedules and stage splits read it)."""
    image_shape: Optional[tuple[int, int, int]] = None
    """``(C, H, W)`` of the training images (in ``[0, 1]``); sizes extra inputs (OOD data)."""
    augment: Optional[nn.Module] = None
    """The run's augmentation, one view per call (methods that augment extra data)."""


class MixedPrecision:
    """autocast + GradScaler when enabled (CUDA), plain fp32 otherwise.

    Example:
        >>> precision = MixedPrecision(torch.device("cpu"), enabled=False)
        >>> layer = nn.Linear(2, 1)
        >>> optimizer = torch.optim.SGD(layer.parameters(), lr=0.1)
        >>> with precision.autocast():
        ...     loss = layer(torch.ones(1, 2)).sum()
        >>> precision.backward_step(loss, optimizer)
    """

    def __init__(self, device: torch.device, enabled: bool) -> None:
        self.enabled = bool(enabled) and device.type == "cuda"
        self.device_type = device.type
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.enabled)

    def autocast(self) -> AbstractContextManager:
        return torch.autocast(self.device_type, enabled=self.enabled)

    def backward_step(self, loss: Tensor, optimizer: torch.optim.Optimizer) -> None:
        """``zero_grad``, (scaled) backward and optimizer step."""
        optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(optimizer)
        self.scaler.update()


class Method(nn.Module):
    """Base class: one way of pre-training an encoder. See the module docstring.

    Args:
        context: dataset size, seed, device, settings.
        feature_dim: backbone feature size (what the pseudo-labeler clusters).
        guided: whether a :class:`~tase_loss.PseudoLabeler` drives the criterion.
    """

    def __init__(self, context: MethodContext, feature_dim: int, guided: bool) -> None:
        super().__init__()
        settings = context.settings
        self.settings = settings
        self.precision = MixedPrecision(context.device, context.amp)
        self.labeler: Optional[PseudoLabeler] = None
        if guided:
            self.labeler = PseudoLabeler(
                context.num_samples,
                feature_dim,
                settings.num_clusters,
                warmup_epochs=settings.warmup_epochs,
                recluster_every=settings.recluster_every,
                momentum=settings.label_momentum,
                seed=context.seed,
                # FAISS's own OpenMP pool next to torch's oversubscribes a small CPU.
                num_threads=torch.get_num_threads(),
            )
        self.temperature_map: Optional[TemperatureMap] = None
        self.reweighter: Optional[SampleReweighter] = None

    def training_step(self, batch: Batch, model: ContrastiveModel, optimizer: torch.optim.Optimizer) -> dict[str, float]:
        """Forward, backward and step on one batch; returns scalars to log (``"loss"``)."""
        raise NotImplementedError

    def on_epoch_end(self, epoch: int) -> dict[str, float]:
        """Called after every epoch (0-based); re-clusters the pseudo-labels when due."""
        if self.labeler is not None and self.labeler.maybe_recluster(epoch):
            return {"reclustered": 1.0}
        return {}

    def observe(self, index: Tensor, features: Tensor) -> None:
        """Store the batch's backbone features in the pseudo-labeler's bank."""
        if self.labeler is not None:
            self.labeler.update(index, features.float())

    def sample_statistics(self) -> dict[str, np.ndarray]:
        """Per-sample ``frequency``, ``temperature`` and ``weight`` over the training set.

        Empty before the first clustering and for unguided methods.
        """
        if self.labeler is None or not self.labeler.is_fitted:
            return {}
        index = torch.arange(self.labeler.num_samples)
        frequency = self.labeler.frequency(index)
        reference = self.labeler.frequency_reference()
        statistics = {"frequency": frequency.numpy()}
        if self.temperature_map is not None:
            statistics["temperature"] = self.temperature_map(frequency, reference).numpy()
        if self.reweighter is not None:
            statistics["weight"] = self.reweighter(frequency, reference).numpy()
        return statistics

    def checkpoint_state(self) -> dict[str, Any]:
        """Module buffers/parameters, pseudo-labeler and grad-scaler state."""
        return {
            "module": self.state_dict(),
            "labeler": None if self.labeler is None else self.labeler.state_dict(),
            "scaler": self.precision.scaler.state_dict(),
        }

    def load_checkpoint_state(self, state: dict[str, Any]) -> None:
        self.load_state_dict(state["module"])
        if self.labeler is not None:
            self.labeler.load_state_dict(state["labeler"])
        self.precision.scaler.load_state_dict(state["scaler"])

    def trainable_parameters(self) -> Iterator[nn.Parameter]:
        return (parameter for parameter in self.parameters() if parameter.requires_grad)


def _frozen_copy(module: nn.Module) -> nn.Module:
    duplicate = copy.deepcopy(module)
    for parameter in duplicate.parameters():
        parameter.requires_grad_(False)
    return duplicate


@torch.no_grad()
def _momentum_update(online: nn.Module, target: nn.Module, momentum: float) -> None:
    for online_parameter, target_parameter in zip(online.parameters(), target.parameters()):
        target_parameter.mul_(momentum).add_(online_parameter.detach(), alpha=1 - momentum)
    for online_buffer, target_buffer in zip(online.buffers(), target.buffers()):
        target_buffer.copy_(online_buffer)


class ContrastiveMethod(Method):
    """SimCLR (NT-Xent) or MoCo v2 (queue + momentum key encoder), optionally TASE-guided.

    Args:
        context: see :class:`Method`.
        model: the encoder being trained (MoCo copies it as its key encoder).
        guidance: ``None`` (plain loss), ``"both"`` (TASE), ``"temperature"`` (per-sample
            temperature, unit weights) or ``"weight"`` (re-weighting, one temperature).
        moco: use a queue and a momentum key encoder.
    """

    GUIDANCE = (None, "both", "temperature", "weight")

    def __init__(
        self, context: MethodContext, model: ContrastiveModel, guidance: Optional[str], moco: bool = False
    ) -> None:
        if guidance not in self.GUIDANCE:
            raise ValueError(f"guidance must be one of {self.GUIDANCE}, got {guidance!r}")
        super().__init__(context, model.feature_dim, guided=guidance is not None)
        settings = context.settings
        if guidance is not None:
            self.temperature_map = TemperatureMap(
                settings.temperature,
                gamma=0.0 if guidance == "weight" else settings.gamma,
                min_temperature=min(settings.min_temperature, settings.temperature),
                max_temperature=max(settings.max_temperature, settings.temperature),
                mapping="power" if guidance == "weight" else settings.mapping,
            )
            self.reweighter = SampleReweighter(
                alpha=0.0 if guidance == "temperature" else settings.alpha,
                max_weight=settings.max_weight,
            )
        self.criterion = TASEContrastiveLoss(
            settings.temperature,
            pseudo_labeler=self.labeler,
            temperature_map=self.temperature_map,
            reweighter=self.reweighter,
            queue_size=settings.queue_size if moco else 0,
            embedding_dim=model.projection_dim if moco else None,
        )
        self.key_encoder = _frozen_copy(model) if moco else None

    def _loss(self, out0: Tensor, out1: Tensor, index: Tensor) -> Tensor:
        if self.labeler is None:
            return self.criterion(out0.float(), out1.float())
        return self.criterion(out0.float(), out1.float(), index=index)

    def training_step(self, batch: Batch, model: ContrastiveModel, optimizer: torch.optim.Optimizer) -> dict[str, float]:
        with self.precision.autocast():
            if self.key_encoder is None:
                features, projections = model(torch.cat([batch.view0, batch.view1]))
                features0 = features[: batch.index.shape[0]]
                out0, out1 = projections.chunk(2)
            else:
                features0, out0 = model(batch.view0)
                with torch.no_grad():
                    _momentum_update(model, self.key_encoder, self.settings.ema_momentum)
                    _, out1 = self.key_encoder(batch.view1)
        loss = self._loss(out0, out1, batch.index)
        self.precision.backward_step(loss, optimizer)
        self.observe(batch.index, features0.detach())
        return {"loss": float(loss.detach())}


class OracleContrastiveMethod(ContrastiveMethod):
    """TASE with the true class frequencies in place of the k-means estimates (an upper bound).

    At the end of the warm-up the pseudo-labeler's state is set to the true labels and
    ``f_i = n_class(i) / N``, and it is never re-clustered. Separates "the estimates are
    poor" from "the temperature/weight mechanism does not help".
    """

    def __init__(self, context: MethodContext, model: ContrastiveModel) -> None:
        if context.train_labels is None:
            raise ValueError("the oracle method needs the true training labels (MethodContext.train_labels)")
        super().__init__(context, model, guidance="both")
        self.train_labels = torch.as_tensor(context.train_labels, dtype=torch.int64)

    def on_epoch_end(self, epoch: int) -> dict[str, float]:
        labeler = self.labeler
        if labeler.is_fitted or not labeler.should_recluster(epoch):
            return {}
        counts = torch.bincount(self.train_labels).double()
        state = labeler.state_dict()
        state.update(
            labels=self.train_labels.clone(),
            log_frequency=(counts / counts.sum()).log()[self.train_labels],
            has_estimate=torch.ones_like(state["has_estimate"]),
            num_fits=1,
        )
        labeler.load_state_dict(state)
        return {"reclustered": 1.0}


class CosineMethod(Method):
    """BYOL (EMA target) or SimSiam (shared encoder, stop-gradient), optionally re-weighted.

    The per-sample loss is symmetrized over the two views; TASE enters only as weights.
    """

    def __init__(self, context: MethodContext, model: ContrastiveModel, variant: str, guided: bool) -> None:
        super().__init__(context, model.feature_dim, guided=guided)
        if guided:
            self.reweighter = SampleReweighter(context.settings.alpha, context.settings.max_weight)
        width = model.projection_dim
        self.predictor = nn.Sequential(
            nn.Linear(width, width, bias=False), nn.BatchNorm1d(width), nn.ReLU(inplace=True), nn.Linear(width, width)
        )
        self.criterion = TASECosineLoss(variant, pseudo_labeler=self.labeler, reweighter=self.reweighter)
        self.target_encoder = _frozen_copy(model) if variant == "byol" else None

    def _loss(self, prediction: Tensor, target: Tensor, index: Tensor) -> Tensor:
        if self.labeler is None:
            return self.criterion(prediction.float(), target.float())
        return self.criterion(prediction.float(), target.float(), index=index)

    def training_step(self, batch: Batch, model: ContrastiveModel, optimizer: torch.optim.Optimizer) -> dict[str, float]:
        with self.precision.autocast():
            features, projections = model(torch.cat([batch.view0, batch.view1]))
            predictions = self.predictor(projections)
            if self.target_encoder is None:
                targets = projections.detach()
            else:
                with torch.no_grad():
                    _momentum_update(model, self.target_encoder, self.settings.ema_momentum)
                    _, targets = self.target_encoder(torch.cat([batch.view0, batch.view1]))
        prediction0, prediction1 = predictions.chunk(2)
        target0, target1 = targets.chunk(2)
        loss = 0.5 * (
            self._loss(prediction0, target1, batch.index) + self._loss(prediction1, target0, batch.index)
        )
        self.precision.backward_step(loss, optimizer)
        self.observe(batch.index, features[: batch.index.shape[0]].detach())
        return {"loss": float(loss.detach())}


MethodFactory = Callable[[MethodContext, ContrastiveModel], Method]

METHODS: dict[str, tuple[MethodFactory, str]] = {}
"""Method name -> (factory, one-line description)."""


def register_method(name: str, description: str) -> Callable[[MethodFactory], MethodFactory]:
    """Decorator adding a factory ``(context, model) -> Method`` to :data:`METHODS`.

    Example:
        >>> @register_method("ntxent-copy", "NT-Xent again, under another name")
        ... def _build(context, model):
        ...     return ContrastiveMethod(context, model, guidance=None)
        >>> "ntxent-copy" in METHODS
        True
        >>> del METHODS["ntxent-copy"]
    """

    def decorator(factory: MethodFactory) -> MethodFactory:
        if name in METHODS:
            raise ValueError(f"a method named {name!r} is already registered")
        METHODS[name] = (factory, description)
        return factory

    return decorator


def build_method(name: str, context: MethodContext, model: ContrastiveModel) -> Method:
    """Instantiate the registered method ``name`` for ``model``, on ``context.device``."""
    if name not in METHODS:
        raise ValueError(f"unknown loss {name!r}; choose from {', '.join(sorted(METHODS))}")
    factory, _ = METHODS[name]
    return factory(context, model).to(context.device)


def _register_builtin() -> None:
    contrastive = {
        "ntxent": (None, False, "SimCLR's NT-Xent, one temperature, unit weights"),
        "tase": ("both", False, "TASE: per-sample temperature and weight from pseudo-labels"),
        "tase-temperature": ("temperature", False, "TASE ablation: per-sample temperature only"),
        "tase-reweight": ("weight", False, "TASE ablation: per-sample weight only"),
        "moco": (None, True, "MoCo v2 InfoNCE (queue, momentum key encoder)"),
        "moco-tase": ("both", True, "MoCo v2 with TASE temperatures and weights"),
    }
    for name, (guidance, moco, description) in contrastive.items():
        register_method(name, description)(
            lambda context, model, guidance=guidance, moco=moco: ContrastiveMethod(context, model, guidance, moco)
        )
    register_method("tase-oracle", "TASE with the true class frequencies (upper bound; reads labels)")(
        OracleContrastiveMethod
    )
    for variant in ("byol", "simsiam"):
        for guided in (False, True):
            name = f"{variant}-tase" if guided else variant
            description = f"{variant.upper()} cosine loss" + (", TASE-weighted" if guided else "")
            register_method(name, description)(
                lambda context, model, variant=variant, guided=guided: CosineMethod(context, model, variant, guided)
            )


_register_builtin()
# The plug-in baselines (rwSAM, TS, OOD-guided) register themselves; imported last because
# they build on the classes above.
from tase_loss.experiments import baselines as _baselines  # noqa: E402,F401
