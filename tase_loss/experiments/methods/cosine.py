"""BYOL / SimSiam methods, plain or TASE-weighted."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from tase_loss import SampleReweighter, TASECosineLoss
from tase_loss.experiments.encoders import ContrastiveModel
from tase_loss.experiments.methods.base import Batch, Method, MethodContext, frozen_copy, momentum_update
from tase_loss.experiments.methods.contrastive import build_labeler

__all__ = ["CosineMethod"]


class CosineMethod(Method):
    """BYOL (EMA target) or SimSiam (shared encoder, stop-gradient), optionally re-weighted.

    The per-sample loss is symmetrized over the two views; TASE enters only as weights.
    """

    def __init__(self, context: MethodContext, model: ContrastiveModel, variant: str, guided: bool) -> None:
        super().__init__(context)
        reweighter = None
        if guided:
            tase = context.settings.tase
            self.labeler = build_labeler(context, model.feature_dim)
            reweighter = SampleReweighter(tase.alpha, tase.max_weight)
        width = model.projection_dim
        self.predictor = nn.Sequential(
            nn.Linear(width, width, bias=False), nn.BatchNorm1d(width), nn.ReLU(inplace=True), nn.Linear(width, width)
        )
        self.criterion = TASECosineLoss(variant, pseudo_labeler=self.labeler, reweighter=reweighter)
        self.guidance = self.criterion.guidance
        self.target_encoder = frozen_copy(model) if variant == "byol" else None
        self.encoder_momentum = context.settings.moco.encoder_momentum

    def _loss(self, prediction: Tensor, target: Tensor, batch: Batch, features: Tensor) -> Tensor:
        if self.labeler is None:
            return self.criterion(prediction.float(), target.float())
        return self.criterion(prediction.float(), target.float(), index=batch.index, features=features)

    def training_step(
        self, batch: Batch, model: ContrastiveModel, optimizer: torch.optim.Optimizer
    ) -> dict[str, Tensor]:
        with self.precision.autocast():
            features, projections = model(torch.cat([batch.view0, batch.view1]))
            predictions = self.predictor(projections)
            if self.target_encoder is None:
                targets = projections.detach()
            else:
                with torch.no_grad():
                    momentum_update(model, self.target_encoder, self.encoder_momentum)
                    _, targets = self.target_encoder(torch.cat([batch.view0, batch.view1]))
        prediction0, prediction1 = predictions.chunk(2)
        target0, target1 = targets.chunk(2)
        features0 = features[: batch.index.shape[0]].float()
        loss = 0.5 * (
            self._loss(prediction0, target1, batch, features0) + self._loss(prediction1, target0, batch, features0)
        )
        self.precision.backward_step(loss, optimizer)
        return {"loss": loss.detach()}
