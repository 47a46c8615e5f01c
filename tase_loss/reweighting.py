"""Frequency -> weight and frequency -> temperature maps of TASE.

Both maps read a sample's frequency estimate ``f_i`` (from
:class:`tase_loss.PseudoLabeler`) relative to a reference ``g``, the geometric mean
of the estimates, so that a typical sample keeps NT-Xent's temperature and a unit
weight::

    w_i = clip((f_i / g) ** -alpha, 1 / w_max, w_max)                (SampleReweighter)
    t_i = clip(t_base * (f_i / g) ** gamma, t_min, t_max)            (TemperatureMap, "power")

They are two classes because they are tuned and ablated apart (temperature alone,
re-weighting alone, both); they share the statistics in :class:`FrequencyReference`.
Their outputs are data: they are computed without gradient.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Union

import torch
from torch import Tensor

__all__ = ["FrequencyReference", "SampleReweighter", "TemperatureMap"]


@dataclass(frozen=True)
class FrequencyReference:
    """Log-frequency statistics a map compares a sample against.

    Attributes:
        log_mean: ``log g``, the mean log-frequency (log of the geometric mean).
        log_min: the smallest log-frequency (used by the ``"range"`` temperature map).
        log_max: the largest log-frequency.
    """

    log_mean: float
    log_min: float
    log_max: float

    @classmethod
    def of(cls, frequency: Tensor) -> "FrequencyReference":
        """The statistics of a tensor of frequencies, e.g. a batch's."""
        return cls.of_log(_log_frequency(frequency))

    @classmethod
    def of_log(cls, log_frequency: Tensor) -> "FrequencyReference":
        """The statistics of a tensor of log-frequencies."""
        return cls(
            log_mean=float(log_frequency.mean()),
            log_min=float(log_frequency.min()),
            log_max=float(log_frequency.max()),
        )


def _log_frequency(frequency: Tensor) -> Tensor:
    if not isinstance(frequency, Tensor) or not frequency.is_floating_point():
        raise TypeError("frequency must be a floating torch.Tensor")
    if frequency.dim() != 1 or frequency.numel() == 0:
        raise ValueError(f"frequency must have shape (B,) with B > 0, got {tuple(frequency.shape)}")
    if not bool(((frequency > 0) & (frequency <= 1)).all()):
        raise ValueError("frequency must lie in (0, 1]")
    return frequency.detach().double().log()


def _log_mean(log_frequency: Tensor, reference: Optional[FrequencyReference]) -> Union[Tensor, float]:
    return log_frequency.mean() if reference is None else reference.log_mean


def _check_positive(name: str, value: float) -> None:
    if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a finite value > 0, got {value!r}")


class SampleReweighter:
    """Per-sample weights from frequency estimates ("quantity awareness").

    Args:
        alpha: exponent; ``0`` gives unit weights, larger values favour rare samples.
        max_weight: weights are clipped to ``[1 / max_weight, max_weight]``.

    Example:
        >>> import torch
        >>> reweighter = SampleReweighter(alpha=0.5, max_weight=10.0)
        >>> reweighter(torch.tensor([0.4, 0.1, 0.025]))
        tensor([0.5000, 1.0000, 2.0000])
    """

    def __init__(self, alpha: float = 0.5, max_weight: float = 10.0) -> None:
        if not (isinstance(alpha, (int, float)) and math.isfinite(alpha) and alpha >= 0):
            raise ValueError(f"alpha must be a finite value >= 0, got {alpha!r}")
        _check_positive("max_weight", max_weight)
        if max_weight < 1:
            raise ValueError(f"max_weight must be >= 1, got {max_weight}")
        self.alpha = float(alpha)
        self.max_weight = float(max_weight)

    def __call__(
        self, frequency: Tensor, reference: Optional[FrequencyReference] = None
    ) -> Tensor:
        """Weights for ``(B,)`` frequencies in ``(0, 1]``.

        Args:
            frequency: ``(B,)`` frequency estimates.
            reference: the dataset's statistics; ``None`` uses the batch's own.

        Returns:
            ``(B,)`` weights, float32, on ``frequency``'s device.
        """
        return self.from_log_frequency(_log_frequency(frequency), reference)

    def from_log_frequency(
        self, log_frequency: Tensor, reference: Optional[FrequencyReference] = None
    ) -> Tensor:
        """Weights for ``(B,)`` log-frequencies already known to be valid (no checks).

        The fast path of :class:`~tase_loss.TASEContrastiveLoss`, which reads
        log-frequencies straight from the :class:`~tase_loss.PseudoLabeler`.
        """
        relative = log_frequency - _log_mean(log_frequency, reference)
        weight = torch.exp(-self.alpha * relative).clamp(1.0 / self.max_weight, self.max_weight)
        return weight.float()

    def __repr__(self) -> str:
        return f"SampleReweighter(alpha={self.alpha}, max_weight={self.max_weight})"


class TemperatureMap:
    """Per-sample temperatures from frequency estimates: rare samples get small ones.

    ``mapping="power"`` (the default) is mean-preserving in log space:
    ``t_i = clip(t_base * (f_i / g) ** gamma, t_min, t_max)``, so ``gamma = 0`` is
    NT-Xent at ``t_base``. ``mapping="range"`` fills the clip range:
    ``t_i = t_min + (t_max - t_min) * r_i`` with
    ``r_i = (log f_i - log f_min) / (log f_max - log f_min)`` (it raises most samples'
    temperature; see ``TASE_METHOD.md``).

    Args:
        base_temperature: ``t_base``, the temperature of a typical sample.
        gamma: exponent of the power map.
        min_temperature: ``t_min``.
        max_temperature: ``t_max``.
        mapping: ``"power"`` or ``"range"``.

    Example:
        >>> import torch
        >>> temperature_map = TemperatureMap(base_temperature=0.2, gamma=0.25)
        >>> temperature_map(torch.tensor([0.5, 0.05, 0.005]))
        tensor([0.3557, 0.2000, 0.1125])
    """

    MAPPINGS = ("power", "range")

    def __init__(
        self,
        base_temperature: float = 0.2,
        gamma: float = 0.25,
        min_temperature: float = 0.05,
        max_temperature: float = 1.0,
        mapping: str = "power",
    ) -> None:
        _check_positive("base_temperature", base_temperature)
        _check_positive("min_temperature", min_temperature)
        _check_positive("max_temperature", max_temperature)
        if not (isinstance(gamma, (int, float)) and math.isfinite(gamma)):
            raise ValueError(f"gamma must be a finite number, got {gamma!r}")
        if min_temperature > max_temperature:
            raise ValueError(
                f"min_temperature ({min_temperature}) must not exceed "
                f"max_temperature ({max_temperature})"
            )
        if mapping not in self.MAPPINGS:
            raise ValueError(f"mapping must be one of {self.MAPPINGS}, got {mapping!r}")
        self.base_temperature = float(base_temperature)
        self.gamma = float(gamma)
        self.min_temperature = float(min_temperature)
        self.max_temperature = float(max_temperature)
        self.mapping = mapping

    def __call__(
        self, frequency: Tensor, reference: Optional[FrequencyReference] = None
    ) -> Tensor:
        """Temperatures for ``(B,)`` frequencies in ``(0, 1]``.

        Args:
            frequency: ``(B,)`` frequency estimates.
            reference: the dataset's statistics; ``None`` uses the batch's own.

        Returns:
            ``(B,)`` temperatures, float32, on ``frequency``'s device.
        """
        return self.from_log_frequency(_log_frequency(frequency), reference)

    def from_log_frequency(
        self, log_frequency: Tensor, reference: Optional[FrequencyReference] = None
    ) -> Tensor:
        """Temperatures for ``(B,)`` log-frequencies already known to be valid (no checks)."""
        if self.mapping == "power":
            relative = log_frequency - _log_mean(log_frequency, reference)
            temperature = self.base_temperature * torch.exp(self.gamma * relative)
        else:
            reference = reference or FrequencyReference.of_log(log_frequency)
            span = reference.log_max - reference.log_min
            position = (
                ((log_frequency - reference.log_min) / span).clamp(0.0, 1.0)
                if span > 0
                else torch.full_like(log_frequency, 0.5)
            )
            temperature = self.min_temperature + (
                self.max_temperature - self.min_temperature
            ) * position
        return temperature.clamp(self.min_temperature, self.max_temperature).float()

    def __repr__(self) -> str:
        return (
            f"TemperatureMap(base_temperature={self.base_temperature}, gamma={self.gamma}, "
            f"min_temperature={self.min_temperature}, max_temperature={self.max_temperature}, "
            f"mapping={self.mapping!r})"
        )
