"""TS (Kukleva et al., ICLR 2023) as methods: NT-Xent or TASE under a cosine temperature schedule."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import torch

from tase_loss import CosineTemperatureSchedule
from tase_loss.experiments.encoders import ContrastiveModel
from tase_loss.experiments.methods.base import MethodContext
from tase_loss.experiments.methods.contrastive import ContrastiveMethod

__all__ = ["ScheduleSettings", "TemperatureScheduleMethod", "required_epochs"]


@dataclass(frozen=True)
class ScheduleSettings:
    """The TS schedule: ``t_min``, ``t_max`` and the period ``T`` in epochs (``None``: the
    run's length, one cycle ``t_max -> t_min -> t_max``)."""

    min_temperature: float = 0.1
    max_temperature: float = 1.0
    period: Optional[float] = None


def required_epochs(context: MethodContext, name: str) -> int:
    if context.epochs is None:
        raise ValueError(f"the {name} method needs the run's number of epochs (MethodContext.epochs)")
    return context.epochs


class TemperatureScheduleMethod(ContrastiveMethod):
    """NT-Xent (``guidance=None``) or TASE (``"both"``) with a cosine temperature schedule.

    Epoch ``e`` trains at ``t(e)`` (Kukleva et al.), set through the criterion's
    ``set_temperature`` (for TASE also the map's base temperature). The period defaults
    to the run's number of epochs: one cycle, so a short run visits the whole range
    once (the paper's ``T = 400`` would keep a 40-epoch run above 0.9).

    Example:
        >>> from tase_loss.experiments.encoders import build_model
        >>> from tase_loss.experiments.methods import MethodSettings
        >>> model = build_model("digits-cnn", 1, projection_dim=8)
        >>> context = MethodContext(20, 0, torch.device("cpu"), MethodSettings(), epochs=10)
        >>> method = TemperatureScheduleMethod(context, model)
        >>> round(method.criterion.temperature, 4), method.on_epoch_end(4)
        (1.0, {'temperature': 0.1})
    """

    def __init__(self, context: MethodContext, model: ContrastiveModel, guidance: Optional[str] = None) -> None:
        super().__init__(context, model, guidance)
        settings: ScheduleSettings = context.settings.schedule
        period = settings.period if settings.period is not None else required_epochs(context, "ts")
        self.schedule = CosineTemperatureSchedule(settings.min_temperature, settings.max_temperature, period)
        guidance = self.criterion.guidance
        if guidance is not None and guidance.temperature_map is not None:
            # an explicit clip range must hold the whole schedule: fail now, not mid-run
            for temperature in (settings.min_temperature, settings.max_temperature):
                guidance.temperature_map.with_base_temperature(temperature)
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
