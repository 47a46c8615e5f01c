"""The two-stage OOD recipe (docs/ood.md) as a method, with photo patches as OOD data for digits."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from tase_loss.experiments.encoders import ContrastiveModel
from tase_loss.experiments.methods.base import Batch, Method, MethodContext, faiss_threads
from tase_loss.experiments.methods.schedule import required_epochs

__all__ = ["OODGuidedMethod", "digits_ood_patches"]

OOD_SAMPLES = 2000
"""OOD patches drawn once per run for ``ood-guided``."""

OOD_BATCH_SIZE = 64
"""OOD patches added to every stage-1 batch (half the digits' default batch of 128)."""


class _Projections(nn.Module):
    """The encoder as the OOD recipe sees it: images -> projections ``(B, D)``."""

    def __init__(self, model: ContrastiveModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: Tensor) -> Tensor:
        return self.model(images)[1]


def digits_ood_patches(num_patches: int, image_shape: tuple[int, int, int]) -> Tensor:
    """``(num_patches, 1, 8, 8)`` OOD inputs in ``[0, 1]`` for the 8x8 digits (the digits' ``/ 16``).

    Raises:
        ValueError: for any other image shape (no OOD source is defined for it).

    Example:
        >>> digits_ood_patches(3, (1, 8, 8)).shape
        torch.Size([3, 1, 8, 8])
    """
    if tuple(image_shape) != (1, 8, 8):
        raise ValueError(
            f"ood-guided needs an OOD source for {tuple(image_shape)} images; only the 8x8 grayscale "
            "digits have one (tase_loss.ood.sample_image_patches)"
        )
    from tase_loss.ood import sample_image_patches

    return (sample_image_patches(num_patches, seed=0) / 16.0).reshape(num_patches, 1, 8, 8)


class OODGuidedMethod(Method):
    """The two-stage OOD recipe (:class:`~tase_loss.ood.TwoStageOOD`) as a method.

    Stage 1 takes the first half of the epochs (warm-up: a tenth of them, at least 1),
    stage 2 the rest; the recipe's k-means clusters ID and OOD projections together
    (``k = 2 x`` the TASE setting), each stage-1 batch adds ``batch / 2`` OOD patches.
    The recipe's domain head has its own Adam optimizer, so the loop's optimizer steps
    the encoder only. Needs ``epochs >= 2``.
    """

    def __init__(self, context: MethodContext, model: ContrastiveModel, num_ood: int = OOD_SAMPLES) -> None:
        super().__init__(context)
        from tase_loss.ood import TwoStageConfig, TwoStageOOD

        epochs = required_epochs(context, "ood-guided")
        if epochs < 2:
            raise ValueError(f"ood-guided needs at least 2 epochs (one per stage), got {epochs}")
        if context.image_shape is None or context.augment is None:
            raise ValueError("ood-guided needs the image shape and the augmentation (MethodContext)")
        ood = digits_ood_patches(num_ood, context.image_shape)
        stage1 = max(1, epochs // 2)
        config = TwoStageConfig(
            stage1_epochs=stage1,
            stage2_epochs=epochs - stage1,
            warmup_epochs=min(max(1, epochs // 10), stage1),
            num_clusters=2 * max(context.settings.tase.num_clusters),
            ood_batch_size=OOD_BATCH_SIZE,
            seed=context.seed,
        )
        # Kept out of the module tree: the loop owns the encoder's parameters and state.
        self.__dict__["_network"] = _Projections(model)
        self.__dict__["recipe"] = TwoStageOOD(ood, context.num_samples, model.projection_dim, context.augment, config)
        self.recipe.pseudo_labeler.num_threads = faiss_threads()

    def training_step(
        self, batch: Batch, model: ContrastiveModel, optimizer: torch.optim.Optimizer
    ) -> dict[str, Tensor]:
        if model is not self._network.model:
            raise ValueError("ood-guided must train the model it was built for")
        loss = self.recipe.training_step((batch.index, batch.view0, batch.view1), self._network, optimizer)
        return {"loss": loss}

    def on_epoch_end(self, epoch: int) -> dict[str, float]:
        stage = self.recipe.stage
        self.recipe.on_epoch_end(epoch)
        return {"stage": float(stage)}

    def sample_statistics(self) -> dict[str, np.ndarray]:
        """Per-sample ``frequency``/``temperature``/``weight`` of the ID samples in the joint clustering."""
        statistics = self.recipe.guidance.sample_statistics()
        return {name: values[: self.recipe.num_id] for name, values in statistics.items()}

    def checkpoint_state(self) -> dict[str, Any]:
        return {**super().checkpoint_state(), "recipe": self.recipe.state_dict()}

    def load_checkpoint_state(self, state: dict[str, Any]) -> None:
        super().load_checkpoint_state(state)
        self.recipe.load_state_dict(state["recipe"], self._network)
