"""rwSAM (Liu et al., ICLR 2022) as a method: NT-Xent, weighted-ascent SAM, kNN-density weights."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch
from torch import Tensor

from tase_loss import FrequencyWeights, KNNDensityEstimator, PseudoLabeler, RwSAM, SampleReweighter, rwsam_step
from tase_loss.experiments.encoders import ContrastiveModel
from tase_loss.experiments.methods.base import Batch, MethodContext, faiss_threads
from tase_loss.experiments.methods.contrastive import ContrastiveMethod

__all__ = ["RwSAMMethod", "RwSAMSettings"]


@dataclass(frozen=True)
class RwSAMSettings:
    """rwSAM's knobs: SAM's radius and ASAM switch (the official runs: 0.5, adaptive),
    and the inverse-density weights' exponent, clip and kernel bandwidth."""

    rho: float = 0.5
    adaptive: bool = True
    alpha: float = 1.0
    max_weight: float = 10.0
    bandwidth: float = 0.1


class RwSAMMethod(ContrastiveMethod):
    """NT-Xent with an rwSAM step and inverse kNN-density weights (label-free).

    The weights are rwSAM's: ``clip((density / g)^-alpha)`` of a vMF-kernel kNN density of
    the backbone features (pass 1, at the unperturbed weights), normalized to mean 1
    in the batch (:class:`~tase_loss.FrequencyWeights` over a
    :class:`~tase_loss.PseudoLabeler` with ``KNNDensityEstimator(kernel="exponential")``,
    no smoothing, no moving average). They are re-estimated at the end of every epoch
    from the end of TASE's warm-up on; before that every weight is 1 (plain SAM).
    ``training_step`` reports ``loss`` (pass 1: the weighted NT-Xent at the current
    weights) and ``perturbed_loss`` (pass 2: unweighted, at the perturbed point).

    Example:
        >>> from tase_loss.experiments.encoders import build_model
        >>> from tase_loss.experiments.methods import MethodSettings
        >>> model = build_model("digits-cnn", 1, projection_dim=8)
        >>> method = RwSAMMethod(MethodContext(20, 0, torch.device("cpu"), MethodSettings()), model)
        >>> optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
        >>> views = torch.rand(2, 10, 1, 8, 8)
        >>> record = method.training_step(Batch(views[0], views[1], torch.arange(10)), model, optimizer)
        >>> sorted(record)
        ['loss', 'perturbed_loss']
    """

    def __init__(self, context: MethodContext, model: ContrastiveModel) -> None:
        super().__init__(context, model, guidance=None)
        settings: RwSAMSettings = context.settings.rwsam
        self.density = PseudoLabeler(
            context.num_samples,
            model.feature_dim,
            KNNDensityEstimator(kernel="exponential", bandwidth=settings.bandwidth, smoothing_rounds=0),
            warmup_epochs=context.settings.tase.warmup_epochs,
            momentum=0.0,
            num_threads=faiss_threads(),
            device=context.device,
        )
        self.weights = FrequencyWeights(self.density, SampleReweighter(settings.alpha, settings.max_weight))
        self.guidance = self.weights.guidance
        self.settings = settings
        self._sam: Optional[RwSAM] = None

    def _wrapped(self, optimizer: torch.optim.Optimizer) -> RwSAM:
        """RwSAM around the loop's optimizer instance (re-wrapped if its groups were replaced)."""
        sam = self._sam
        if sam is None or sam.base_optimizer is not optimizer or sam.param_groups is not optimizer.param_groups:
            parameters = [p for group in optimizer.param_groups for p in group["params"]]
            sam = RwSAM(parameters, optimizer, rho=self.settings.rho, adaptive=self.settings.adaptive)
            self._sam = sam
        return sam

    def training_step(
        self, batch: Batch, model: ContrastiveModel, optimizer: torch.optim.Optimizer
    ) -> dict[str, Tensor]:
        sam = self._wrapped(optimizer)
        weight = self.weights(batch.index)
        size = batch.index.shape[0]
        pass1: dict[str, Tensor] = {}

        def compute_loss(batch_weight: Optional[Tensor]) -> Tensor:
            features, projections = model(torch.cat([batch.view0, batch.view1]))
            out0, out1 = projections.float().chunk(2)
            loss = self.criterion(out0, out1, weight=batch_weight)
            if batch_weight is not None:
                pass1["features"] = features[:size].detach()
                pass1["loss"] = loss.detach()
            return loss

        perturbed_loss = rwsam_step(sam, compute_loss, weight, freeze=[model, self.criterion])
        self.density.update(batch.index, pass1["features"].float())
        return {"loss": pass1["loss"], "perturbed_loss": perturbed_loss}

    def on_epoch_end(self, epoch: int) -> dict[str, float]:
        if self.density.end_epoch(epoch):
            return {"density_estimated": 1.0}
        return {}

    def sample_statistics(self) -> dict[str, np.ndarray]:
        """The per-sample ``weight`` (mean 1 over the training set) once densities exist."""
        if not self.density.is_fitted:
            return {}
        return {"weight": self.weights(torch.arange(self.density.num_samples)).numpy()}

    def checkpoint_state(self) -> dict:
        return {**super().checkpoint_state(), "density": self.density.state_dict()}

    def load_checkpoint_state(self, state: dict) -> None:
        super().load_checkpoint_state(state)
        self.density.load_state_dict(state["density"])
