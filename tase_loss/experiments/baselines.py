"""The comparison baselines as registered methods: rwSAM, temperature schedules, OOD-guided.

Each is a :class:`~tase_loss.experiments.methods.Method`, so it runs in the unchanged
training loop and lands in the same results table as NT-Xent and TASE:

- ``rwsam``: NT-Xent trained with rwSAM (``docs/plugins.md``): a weighted ascent pass
  with label-free kNN-density weights of the backbone features
  (:class:`~tase_loss.KNNDensityWeights`, refreshed after every epoch from the end of the
  TASE warm-up on; plain SAM before), an unweighted descent pass. The method wraps the
  loop's optimizer in :class:`~tase_loss.RwSAM` (the optimizer *instance*: same class,
  learning rate, schedule and weight decay as every other row), so the loop, its learning
  rate schedule and its checkpoint of the base optimizer are unchanged.
- ``ts`` / ``tase-ts``: NT-Xent / TASE whose (base) temperature follows
  :class:`~tase_loss.CosineTemperatureSchedule`, set before every epoch.
- ``ood-guided``: the two-stage OOD recipe (``docs/ood.md``,
  :class:`~tase_loss.ood.TwoStageOOD`) on the projections, with OOD patches of
  scikit-learn's sample photographs (digits only).

Mixed precision is not applied by these methods (fp32 steps).
"""

from __future__ import annotations

from typing import Any, Optional

import numpy as np
import torch
from torch import Tensor, nn

from tase_loss import CosineTemperatureSchedule, KNNDensityWeights, RwSAM, rwsam_step
from tase_loss.experiments.encoders import ContrastiveModel
from tase_loss.experiments.methods import (
    Batch,
    ContrastiveMethod,
    Method,
    MethodContext,
    register_method,
)

__all__ = ["OODGuidedMethod", "RwSAMMethod", "TemperatureScheduleMethod"]

OOD_SAMPLES = 2000
"""OOD patches drawn once per run for ``ood-guided``."""

OOD_BATCH_SIZE = 64
"""OOD patches added to every stage-1 batch (half the digits' default batch of 128)."""


def _required_epochs(context: MethodContext, name: str) -> int:
    if context.epochs is None:
        raise ValueError(f"the {name} method needs the run's number of epochs (MethodContext.epochs)")
    return context.epochs


class RwSAMMethod(ContrastiveMethod):
    """NT-Xent with an rwSAM step and inverse kNN-density weights (label-free).

    The density bank holds the backbone features of pass 1 (at the unperturbed
    weights); it is refreshed at the end of every epoch ``e`` with
    ``e + 1 >= warmup_epochs``. ``training_step`` reports ``loss`` (pass 1: the
    density-weighted NT-Xent at the current weights, plain NT-Xent before the first
    refresh) and ``perturbed_loss`` (pass 2: unweighted, at the perturbed point).

    Example:
        >>> from tase_loss.experiments.encoders import build_model
        >>> model = build_model("digits-cnn", 1, projection_dim=8)
        >>> method = RwSAMMethod(MethodContext(20, 0, torch.device("cpu")), model)
        >>> optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
        >>> views = torch.rand(2, 10, 1, 8, 8)
        >>> record = method.training_step(Batch(views[0], views[1], torch.arange(10)), model, optimizer)
        >>> sorted(record)
        ['loss', 'perturbed_loss']
    """

    def __init__(self, context: MethodContext, model: ContrastiveModel) -> None:
        super().__init__(context, model, guidance=None)
        self.density = KNNDensityWeights(
            context.num_samples, model.feature_dim, num_threads=torch.get_num_threads()
        )
        self._sam: Optional[RwSAM] = None

    def _wrapped(self, optimizer: torch.optim.Optimizer) -> RwSAM:
        """RwSAM around the loop's optimizer instance (re-wrapped if its groups were replaced)."""
        sam = self._sam
        if sam is None or sam.base_optimizer is not optimizer or sam.param_groups is not optimizer.param_groups:
            parameters = [p for group in optimizer.param_groups for p in group["params"]]
            sam = RwSAM(parameters, optimizer, rho=self.settings.sam_rho, adaptive=self.settings.sam_adaptive)
            self._sam = sam
        return sam

    def training_step(self, batch: Batch, model: ContrastiveModel, optimizer: torch.optim.Optimizer) -> dict[str, float]:
        sam = self._wrapped(optimizer)
        weight = self.density(batch.index.cpu()).to(batch.view0.device)
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
        self.density.update(batch.index.cpu(), pass1["features"].float())
        return {"loss": float(pass1["loss"]), "perturbed_loss": float(perturbed_loss)}

    def on_epoch_end(self, epoch: int) -> dict[str, float]:
        if epoch + 1 >= self.settings.warmup_epochs:
            self.density.refresh()
            return {"density_refreshed": 1.0}
        return {}

    def sample_statistics(self) -> dict[str, np.ndarray]:
        """The per-sample ``weight`` (mean 1 over the training set) once densities exist."""
        if not self.density.is_fitted:
            return {}
        return {"weight": self.density(torch.arange(self.density.num_samples)).numpy()}

    def checkpoint_state(self) -> dict[str, Any]:
        return {**super().checkpoint_state(), "density": self.density.state_dict()}

    def load_checkpoint_state(self, state: dict[str, Any]) -> None:
        super().load_checkpoint_state(state)
        self.density.load_state_dict(state["density"])


class TemperatureScheduleMethod(ContrastiveMethod):
    """NT-Xent (``guidance=None``) or TASE (``"both"``) with a cosine temperature schedule.

    Epoch ``e`` trains at ``t(e)`` (Kukleva et al.): the criterion's temperature and, for
    TASE, the temperature map's base temperature. The period defaults to the run's
    number of epochs: one cycle ``t_hi -> t_lo -> t_hi``, so a short run visits the whole
    range once (the paper's ``T = 400`` would keep a 40-epoch run above 0.9).

    Example:
        >>> from tase_loss.experiments.encoders import build_model
        >>> model = build_model("digits-cnn", 1, projection_dim=8)
        >>> method = TemperatureScheduleMethod(MethodContext(20, 0, torch.device("cpu"), epochs=10), model)
        >>> round(method.criterion.temperature, 4), method.on_epoch_end(4)
        (1.0, {'temperature': 0.1})
    """

    def __init__(self, context: MethodContext, model: ContrastiveModel, guidance: Optional[str] = None) -> None:
        super().__init__(context, model, guidance)
        settings = context.settings
        period = settings.ts_period if settings.ts_period is not None else _required_epochs(context, "ts")
        self.schedule = CosineTemperatureSchedule(settings.ts_min_temperature, settings.ts_max_temperature, period)
        self.register_buffer("next_epoch", torch.zeros((), dtype=torch.int64))
        self.schedule.apply(self.criterion, 0)

    def on_epoch_end(self, epoch: int) -> dict[str, float]:
        record = super().on_epoch_end(epoch)
        self.next_epoch.fill_(epoch + 1)
        record["temperature"] = round(self.schedule.apply(self.criterion, epoch + 1), 12)
        return record

    def load_checkpoint_state(self, state: dict[str, Any]) -> None:
        super().load_checkpoint_state(state)
        self.schedule.apply(self.criterion, int(self.next_epoch))


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
        super().__init__(context, model.feature_dim, guided=False)
        from tase_loss.ood import TwoStageConfig, TwoStageOOD

        epochs = _required_epochs(context, "ood-guided")
        if epochs < 2:
            raise ValueError(f"ood-guided needs at least 2 epochs (one per stage), got {epochs}")
        if context.image_shape is None or context.augment is None:
            raise ValueError("ood-guided needs the image shape and the augmentation (MethodContext)")
        ood = digits_ood_patches(num_ood, context.image_shape)
        stage1 = max(1, epochs // 2)
        config = TwoStageConfig(
            stage1_epochs=stage1,
            stage2_epochs=epochs - stage1,
            warmup_epochs=min(max(1, epochs // 10), stage1 - 1),
            num_clusters=2 * max(context.settings.num_clusters),
            ood_batch_size=OOD_BATCH_SIZE,
            seed=context.seed,
        )
        # Kept out of the module tree: the loop owns the encoder's parameters and state.
        self.__dict__["_network"] = _Projections(model)
        self.__dict__["recipe"] = TwoStageOOD(ood, context.num_samples, model.projection_dim, context.augment, config)
        # As in Method: FAISS's own OpenMP pool next to torch's oversubscribes a small CPU.
        self.recipe.pseudo_labeler.num_threads = torch.get_num_threads()

    def training_step(self, batch: Batch, model: ContrastiveModel, optimizer: torch.optim.Optimizer) -> dict[str, float]:
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
        labeler = self.recipe.pseudo_labeler
        if not labeler.is_fitted:
            return {}
        index = torch.arange(self.recipe.num_id)
        frequency = labeler.frequency(index)
        reference = labeler.frequency_reference()
        return {
            "frequency": frequency.numpy(),
            "temperature": self.recipe.temperature_map(frequency, reference).numpy(),
            "weight": self.recipe.reweighter(frequency, reference).numpy(),
        }

    def checkpoint_state(self) -> dict[str, Any]:
        return {**super().checkpoint_state(), "recipe": self.recipe.state_dict()}

    def load_checkpoint_state(self, state: dict[str, Any]) -> None:
        super().load_checkpoint_state(state)
        self.recipe.load_state_dict(state["recipe"], self._network)

register_method("rwsam", "NT-Xent with rwSAM (weighted-ascent SAM), label-free kNN-density weights")(RwSAMMethod)
register_method("ts", "NT-Xent with the cosine temperature schedule (TS, t 0.1-1.0)")(
    lambda context, model: TemperatureScheduleMethod(context, model, guidance=None)
)
register_method("tase-ts", "TASE whose base temperature follows the TS cosine schedule")(
    lambda context, model: TemperatureScheduleMethod(context, model, guidance="both")
)
register_method("ood-guided", "two-stage OOD-guided contrastive recipe (digits: photo patches as OOD)")(
    OODGuidedMethod
)
