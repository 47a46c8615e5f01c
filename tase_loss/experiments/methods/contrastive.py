"""SimCLR / MoCo v2 methods, plain or TASE-guided, and the oracle upper bound."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch
from torch import Tensor

from tase_loss import (
    DEFAULT_ESTIMATOR,
    PseudoLabeler,
    SampleReweighter,
    TASEContrastiveLoss,
    TemperatureMap,
    build_estimator,
)
from tase_loss.estimators import FrequencyEstimate, FrequencyEstimator
from tase_loss.experiments.encoders import ContrastiveModel
from tase_loss.experiments.methods.base import Batch, Method, MethodContext, faiss_threads, frozen_copy, momentum_update
from tase_loss.pseudo_labeler import DEFAULT_WARMUP_EPOCHS

__all__ = [
    "ContrastiveMethod",
    "FixedFrequencyContrastiveMethod",
    "InputDensityContrastiveMethod",
    "MoCoSettings",
    "OracleContrastiveMethod",
    "TASESettings",
    "build_labeler",
]

CLUSTER_ESTIMATORS = ("cluster-size", "merged-clusters", "stable-count")


@dataclass(frozen=True)
class TASESettings:
    """TASE's knobs (docs/METHOD.md), shared by every guided method.

    Attributes:
        temperature: base temperature ``t_base`` (NT-Xent's ``t``).
        gamma: exponent of the power temperature map.
        min_temperature, max_temperature: temperature clip range (``None``: derived
            from ``temperature``, ``[t/4, 5t]``).
        mapping: ``"power"`` or ``"range"``.
        alpha: re-weighting exponent; ``max_weight`` its clip.
        estimator: frequency estimator name (:data:`tase_loss.estimators.ESTIMATORS`).
        num_clusters: ``k`` (groups) of the clustering estimators; a tuple is an ensemble.
        warmup_epochs: epochs of plain NT-Xent before the first estimate.
        estimate_every: epochs between estimates.
        momentum: EMA factor of the log-frequency across estimates.
    """

    temperature: float = 0.2
    gamma: float = 0.25
    min_temperature: Optional[float] = None
    max_temperature: Optional[float] = None
    mapping: str = "power"
    alpha: float = 0.5
    max_weight: float = 10.0
    estimator: str = DEFAULT_ESTIMATOR
    num_clusters: tuple[int, ...] = (10,)
    warmup_epochs: int = DEFAULT_WARMUP_EPOCHS
    estimate_every: int = 1
    momentum: float = 0.5

    def build_estimator(self) -> FrequencyEstimator:
        """The estimator these settings name (``num_clusters`` goes to clustering ones)."""
        if self.estimator in CLUSTER_ESTIMATORS:
            return build_estimator(self.estimator, num_clusters=self.num_clusters)
        return build_estimator(self.estimator)


@dataclass(frozen=True)
class MoCoSettings:
    """MoCo v2's knobs: the queue length and the key (or BYOL target) encoder's momentum."""

    queue_size: int = 4096
    encoder_momentum: float = 0.99


def build_labeler(
    context: MethodContext, feature_dim: int, estimator: Optional[FrequencyEstimator] = None
) -> PseudoLabeler:
    """The run's pseudo-labeler: TASE's schedule, the bank on the training device."""
    tase = context.settings.tase
    return PseudoLabeler(
        context.num_samples,
        feature_dim,
        estimator or tase.build_estimator(),
        warmup_epochs=tase.warmup_epochs,
        estimate_every=tase.estimate_every,
        momentum=tase.momentum,
        seed=context.seed,
        num_threads=faiss_threads(),
        device=context.device,
    )


class ContrastiveMethod(Method):
    """SimCLR (NT-Xent) or MoCo v2 (queue + momentum key encoder), optionally TASE-guided.

    The pseudo-labeler's bank stores the backbone features of the first view (they
    estimate frequencies better than projections; ``docs/results.md``).

    Args:
        context: see :class:`~tase_loss.experiments.methods.base.MethodContext`.
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
        super().__init__(context)
        tase, queue = context.settings.tase, context.settings.moco
        temperature_map = reweighter = None
        if guidance is not None:
            self.labeler = build_labeler(context, model.feature_dim)
            temperature_map = TemperatureMap(
                tase.temperature,
                gamma=0.0 if guidance == "weight" else tase.gamma,
                min_temperature=tase.min_temperature,
                max_temperature=tase.max_temperature,
                mapping="power" if guidance == "weight" else tase.mapping,
            )
            reweighter = SampleReweighter(
                alpha=0.0 if guidance == "temperature" else tase.alpha, max_weight=tase.max_weight
            )
        self.criterion = TASEContrastiveLoss(
            tase.temperature,
            pseudo_labeler=self.labeler,
            temperature_map=temperature_map,
            reweighter=reweighter,
            queue_size=queue.queue_size if moco else 0,
            feature_dim=model.projection_dim if moco else None,
        )
        self.guidance = self.criterion.guidance
        self.key_encoder = frozen_copy(model) if moco else None
        self.encoder_momentum = queue.encoder_momentum

    def loss(
        self, out0: Tensor, out1: Tensor, batch: Batch, features0: Tensor, weight: Optional[Tensor] = None
    ) -> Tensor:
        """The criterion on fp32 projections: guided by ``index=`` when a labeler exists."""
        if self.labeler is None or weight is not None:
            return self.criterion(out0.float(), out1.float(), weight=weight)
        return self.criterion(out0.float(), out1.float(), index=batch.index, features=features0)

    def embed(self, batch: Batch, model: ContrastiveModel) -> tuple[Tensor, Tensor, Tensor]:
        """``(features0, out0, out1)``: first-view backbone features and both views' projections."""
        with self.precision.autocast():
            if self.key_encoder is None:
                features, projections = model(torch.cat([batch.view0, batch.view1]))
                out0, out1 = projections.chunk(2)
                return features[: batch.index.shape[0]], out0, out1
            features0, out0 = model(batch.view0)
            with torch.no_grad():
                momentum_update(model, self.key_encoder, self.encoder_momentum)
                _, out1 = self.key_encoder(batch.view1)
            return features0, out0, out1

    def training_step(
        self, batch: Batch, model: ContrastiveModel, optimizer: torch.optim.Optimizer
    ) -> dict[str, Tensor]:
        features0, out0, out1 = self.embed(batch, model)
        loss = self.loss(out0, out1, batch, features0.float())
        self.precision.backward_step(loss, optimizer)
        return {"loss": loss.detach()}


class FixedFrequencyContrastiveMethod(ContrastiveMethod):
    """TASE whose frequencies are set once, at the end of the warm-up, and never re-estimated.

    Subclasses say where the frequencies come from (:meth:`fixed_estimate`); the
    schedule, maps and loss are TASE's, so a run differs from ``tase`` only in the
    estimate (the paired comparison the runner reports).
    """

    def __init__(self, context: MethodContext, model: ContrastiveModel) -> None:
        super().__init__(context, model, guidance="both")

    def fixed_estimate(self) -> FrequencyEstimate:
        """The estimate to fix: ``(N,)`` log-frequencies, labels (or ``None``), diagnostics.

        The diagnostics become the labeler's ``last_diagnostics``, which the runner records
        per epoch as ``estimator_*`` (for ``stable-count``: its trust and stability).
        """
        raise NotImplementedError

    def on_epoch_end(self, epoch: int) -> dict[str, float]:
        labeler = self.labeler
        assert labeler is not None
        if labeler.is_fitted or not labeler.should_estimate(epoch):
            return {}
        estimate = self.fixed_estimate()
        if isinstance(estimate, tuple):  # the hook's return before FrequencyEstimate
            warnings.warn(
                "fixed_estimate() returning (log_frequency, labels) is deprecated; return a FrequencyEstimate",
                DeprecationWarning,
                stacklevel=2,
            )
            estimate = FrequencyEstimate(*estimate)
        state = labeler.state_dict()
        state.update(
            log_frequency=estimate.log_frequency,
            has_estimate=torch.ones_like(state["has_estimate"]),
            num_estimates=1,
        )
        if estimate.labels is not None:
            state["labels"] = estimate.labels
        labeler.load_state_dict(state)
        labeler.last_diagnostics = dict(estimate.diagnostics)  # the runner records them as estimator_*
        return {"estimated": 1.0}


class OracleContrastiveMethod(FixedFrequencyContrastiveMethod):
    """TASE with the true class frequencies in place of the estimates (an upper bound).

    At the end of the warm-up the pseudo-labeler's state is set to the true labels and
    ``f_i = n_class(i) / N``. Separates "the estimates are poor" from "the
    temperature/weight mechanism does not help".
    """

    def __init__(self, context: MethodContext, model: ContrastiveModel) -> None:
        if context.train_labels is None:
            raise ValueError("the oracle method needs the true training labels (MethodContext.train_labels)")
        super().__init__(context, model)
        self.train_labels = torch.as_tensor(context.train_labels, dtype=torch.int64)

    def fixed_estimate(self) -> FrequencyEstimate:
        counts = torch.bincount(self.train_labels).double()
        return FrequencyEstimate((counts / counts.sum()).log()[self.train_labels], self.train_labels.clone())


class InputDensityContrastiveMethod(FixedFrequencyContrastiveMethod):
    """TASE with one label-free estimate from the un-augmented training images themselves.

    At the end of the warm-up the run's estimator (default ``stable-count``) runs once on
    the flattened, L2-normalized training images and its estimate is kept. Measured in
    ``docs/results.md``: on CIFAR-10-LT at 16x16 this estimate ranks samples by class
    frequency better than any CPU encoder's features (Spearman 0.35 vs <= 0.29), so it
    tests whether a moderately informative label-free estimate recovers part of the
    oracle's gain.
    """

    def __init__(self, context: MethodContext, model: ContrastiveModel) -> None:
        if context.train_images is None:
            raise ValueError("the input-density method needs the training images (MethodContext.train_images)")
        super().__init__(context, model)
        assert self.labeler is not None
        if self.labeler.uses_loss:
            raise ValueError("the input-density method needs an estimator of features, not one of losses")
        self.train_images = context.train_images
        self.seed = context.seed
        blank = np.flatnonzero(~self.train_images.reshape(len(self.train_images), -1).any(axis=1))
        if blank.size:
            # checked here, not at the first estimate after the warm-up: a zero row has no
            # direction on the sphere the estimator works on
            raise ValueError(f"the input-density method cannot place all-zero training images, e.g. index {blank[0]}")

    def fixed_estimate(self) -> FrequencyEstimate:
        labeler = self.labeler
        assert labeler is not None
        rows = torch.as_tensor(self.train_images, dtype=torch.float32).reshape(len(self.train_images), -1)
        estimate = labeler.estimator.estimate(
            torch.nn.functional.normalize(rows, dim=1), seed=self.seed, num_threads=faiss_threads()
        )
        return estimate
