"""Temperature schedules over training time.

:class:`CosineTemperatureSchedule` is the schedule of Kukleva et al., "Temperature
Schedules for Self-Supervised Contrastive Methods on Long-Tail Data" (ICLR 2023, "TS")::

    t(e) = t_lo + 0.5 * (t_hi - t_lo) * (1 + cos(2 pi e / T))

It starts at ``t_hi`` (group-wise discrimination), reaches ``t_lo`` (instance
discrimination) at ``e = T / 2`` and returns to ``t_hi`` at ``e = T``. Used alone on
NT-Xent / InfoNCE it is the TS baseline; applied to TASE it modulates the base
temperature of the :class:`~tase_loss.TemperatureMap` over time while the map spreads
the temperatures of a batch around it.
"""

from __future__ import annotations

import math
from typing import Union

from tase_loss.loss import TASEContrastiveLoss
from tase_loss.reweighting import TemperatureMap

__all__ = ["CosineTemperatureSchedule"]


def _check_positive(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
        math.isfinite(value) and value > 0
    ):
        raise ValueError(f"{name} must be a finite value > 0, got {value!r}")


class CosineTemperatureSchedule:
    """Kukleva et al.'s cosine temperature schedule ``t(e)``.

    Args:
        t_lo: the smallest temperature, reached at ``e = T / 2``.
        t_hi: the largest temperature, at ``e = 0`` and every ``T``.
        period: ``T``, in epochs (any unit of progress works: pass fractional epochs
            to change the temperature within an epoch).

    Example:
        >>> schedule = CosineTemperatureSchedule(t_lo=0.1, t_hi=1.0, period=400)
        >>> [round(schedule(epoch), 6) for epoch in (0, 100, 200, 400)]
        [1.0, 0.55, 0.1, 1.0]
        >>> from tase_loss import TASEContrastiveLoss
        >>> criterion = TASEContrastiveLoss(temperature=0.2)
        >>> round(schedule.apply(criterion, epoch=200), 6)
        0.1
        >>> criterion.temperature == schedule(200)
        True
    """

    def __init__(self, t_lo: float = 0.1, t_hi: float = 1.0, period: float = 400) -> None:
        _check_positive("t_lo", t_lo)
        _check_positive("t_hi", t_hi)
        _check_positive("period", period)
        if t_lo > t_hi:
            raise ValueError(f"t_lo ({t_lo}) must not exceed t_hi ({t_hi})")
        self.t_lo = float(t_lo)
        self.t_hi = float(t_hi)
        self.period = float(period)

    def __call__(self, epoch: float) -> float:
        """The temperature at ``epoch`` (a finite number ``>= 0``)."""
        if isinstance(epoch, bool) or not isinstance(epoch, (int, float)) or not (
            math.isfinite(epoch) and epoch >= 0
        ):
            raise ValueError(f"epoch must be a finite number >= 0, got {epoch!r}")
        cosine = math.cos(2.0 * math.pi * epoch / self.period)
        return self.t_lo + 0.5 * (self.t_hi - self.t_lo) * (1.0 + cosine)

    def apply(self, target: Union[TASEContrastiveLoss, TemperatureMap], epoch: float) -> float:
        """Set ``target``'s base temperature to ``t(epoch)``; returns it.

        - :class:`~tase_loss.TASEContrastiveLoss`: its ``temperature`` (NT-Xent's, used
          without per-sample temperatures and during the labeler's warm-up) and, when it
          has one, its temperature map's ``base_temperature``.
        - :class:`~tase_loss.TemperatureMap`: its ``base_temperature``.

        Raises:
            ValueError: if ``[t_lo, t_hi]`` leaves the map's clip range
                ``[min_temperature, max_temperature]`` (the map would clip the schedule).
            TypeError: for any other ``target``.
        """
        if isinstance(target, TASEContrastiveLoss):
            temperature_map = target.guidance.temperature_map
        elif isinstance(target, TemperatureMap):
            temperature_map = target
        else:
            raise TypeError(
                f"target must be a TASEContrastiveLoss or a TemperatureMap, got {type(target).__name__}"
            )
        if temperature_map is not None and not (
            temperature_map.min_temperature <= self.t_lo and self.t_hi <= temperature_map.max_temperature
        ):
            raise ValueError(
                f"the schedule's range [{self.t_lo}, {self.t_hi}] leaves the temperature map's "
                f"clip range [{temperature_map.min_temperature}, {temperature_map.max_temperature}]"
            )
        temperature = self(epoch)
        if isinstance(target, TASEContrastiveLoss):
            target.temperature = temperature
        if temperature_map is not None:
            temperature_map.base_temperature = temperature
        return temperature

    def __repr__(self) -> str:
        return f"CosineTemperatureSchedule(t_lo={self.t_lo}, t_hi={self.t_hi}, period={self.period})"
