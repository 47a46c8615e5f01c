"""Temperature schedules over training time.

:class:`CosineTemperatureSchedule` is the schedule of Kukleva et al., "Temperature
Schedules for Self-Supervised Contrastive Methods on Long-Tail Data" (ICLR 2023, "TS")::

    t(e) = t_min + 0.5 * (t_max - t_min) * (1 + cos(2 pi e / T))

It starts at ``t_max`` (group-wise discrimination), reaches ``t_min`` (instance
discrimination) at ``e = T / 2`` and returns to ``t_max`` at ``e = T``. Used alone on
NT-Xent / InfoNCE it is the TS baseline; applied to TASE it modulates the base
temperature of the :class:`~tase_loss.TemperatureMap` over time while the map spreads
the temperatures of a batch around it.
"""

from __future__ import annotations

import math
from typing import Protocol

from tase_loss._validation import check_real, renamed_keywords, warn_renamed

__all__ = ["CosineTemperatureSchedule"]


class _HasTemperature(Protocol):
    def set_temperature(self, temperature: float) -> None: ...


class CosineTemperatureSchedule:
    """Kukleva et al.'s cosine temperature schedule ``t(e)``.

    Args:
        min_temperature: ``t_min``, reached at ``e = T / 2``.
        max_temperature: ``t_max``, at ``e = 0`` and every ``T``.
        period: ``T``, in epochs (any unit of progress works: pass fractional epochs
            to change the temperature within an epoch).

    Example:
        >>> schedule = CosineTemperatureSchedule(min_temperature=0.1, max_temperature=1.0, period=400)
        >>> [round(schedule(epoch), 6) for epoch in (0, 100, 200, 400)]
        [1.0, 0.55, 0.1, 1.0]
        >>> from tase_loss import TASEContrastiveLoss
        >>> criterion = TASEContrastiveLoss(temperature=0.2)
        >>> round(schedule.apply(criterion, epoch=200), 6)
        0.1
        >>> criterion.temperature == schedule(200)
        True
    """

    @renamed_keywords({"t_lo": "min_temperature", "t_hi": "max_temperature"})
    def __init__(self, min_temperature: float = 0.1, max_temperature: float = 1.0, period: float = 400) -> None:
        self.min_temperature = check_real("min_temperature", min_temperature, 0.0, exclusive_minimum=True)
        self.max_temperature = check_real("max_temperature", max_temperature, 0.0, exclusive_minimum=True)
        self.period = check_real("period", period, 0.0, exclusive_minimum=True)
        if min_temperature > max_temperature:
            raise ValueError(
                f"min_temperature ({min_temperature}) must not exceed max_temperature ({max_temperature})"
            )

    @property
    def t_lo(self) -> float:
        """Deprecated 0.1 name of :attr:`min_temperature`."""
        warn_renamed("CosineTemperatureSchedule.t_lo", "min_temperature")
        return self.min_temperature

    @property
    def t_hi(self) -> float:
        """Deprecated 0.1 name of :attr:`max_temperature`."""
        warn_renamed("CosineTemperatureSchedule.t_hi", "max_temperature")
        return self.max_temperature

    def __call__(self, epoch: float) -> float:
        """The temperature at ``epoch`` (a finite number ``>= 0``)."""
        epoch = check_real("epoch", epoch, 0.0)
        cosine = math.cos(2.0 * math.pi * epoch / self.period)
        return self.min_temperature + 0.5 * (self.max_temperature - self.min_temperature) * (1.0 + cosine)

    def apply(self, target: _HasTemperature, epoch: float) -> float:
        """Set ``target``'s base temperature to ``t(epoch)`` through its ``set_temperature``; returns it.

        For a :class:`~tase_loss.TASEContrastiveLoss` that is NT-Xent's temperature and,
        with a labeler, its temperature map's ``t_base`` (which must stay inside the
        map's clip range; the loss raises otherwise).

        Raises:
            TypeError: if ``target`` has no ``set_temperature`` method.
        """
        setter = getattr(target, "set_temperature", None)
        if not callable(setter):
            raise TypeError(f"target must have a set_temperature() method, got {type(target).__name__}")
        temperature = self(epoch)
        setter(temperature)
        return temperature

    def __repr__(self) -> str:
        return (
            f"CosineTemperatureSchedule(min_temperature={self.min_temperature}, "
            f"max_temperature={self.max_temperature}, period={self.period})"
        )
