"""Frequency -> weight and frequency -> temperature maps of TASE.

Both maps read a sample's frequency estimate ``f_i`` (from
:class:`tase_loss.PseudoLabeler`) relative to a reference ``g``, the geometric mean
of the estimates, so that a typical sample keeps NT-Xent's temperature and a unit
weight::

    w_i = clip((f_i / g) ** -alpha, 1 / w_max, w_max)                (SampleReweighter)
    t_i = clip(t_base * (f_i / g) ** gamma, t_min, t_max)            (TemperatureMap, "power")

They are two classes because they are tuned and ablated apart (temperature alone,
re-weighting alone, both); they share the statistics in
:class:`~tase_loss.FrequencyReference`. They are immutable (frozen dataclasses, so a
cached table built from one stays valid); ``dataclasses.replace`` makes a changed copy.
Their outputs are data: they are computed without gradient.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Union

import torch
from torch import Tensor

from tase_loss._validation import MAX_TEMPERATURE, MIN_TEMPERATURE, check_base_temperature, check_choice, check_real
from tase_loss.pseudo_labeler import FrequencyReference

__all__ = ["SampleReweighter", "TemperatureMap"]

# The default clip range as multiples of the base temperature: t_base = 0.2 gives the
# spec's [0.05, 1.0].
LOW_CLIP_FACTOR = 0.25
HIGH_CLIP_FACTOR = 5.0


def _log_frequency(frequency: object) -> Tensor:
    if not isinstance(frequency, Tensor) or not frequency.is_floating_point():
        raise TypeError("frequency must be a floating torch.Tensor")
    if frequency.dim() != 1 or frequency.numel() == 0:
        raise ValueError(f"frequency must have shape (B,) with B > 0, got {tuple(frequency.shape)}")
    if not bool(((frequency > 0) & (frequency <= 1)).all()):
        raise ValueError("frequency must lie in (0, 1]")
    return frequency.detach().double().log()


def _log_mean(log_frequency: Tensor, reference: Optional[FrequencyReference]) -> Union[Tensor, float]:
    return log_frequency.mean() if reference is None else reference.log_mean


@dataclass(frozen=True)
class SampleReweighter:
    """Per-sample weights from frequency estimates ("quantity awareness").

    Args:
        alpha: exponent ``>= 0``; ``0`` gives unit weights, larger values favour rare samples.
        max_weight: weights are clipped to ``[1 / max_weight, max_weight]``, ``>= 1``.

    Example:
        >>> import torch
        >>> reweighter = SampleReweighter(alpha=0.5, max_weight=10.0)
        >>> reweighter(torch.tensor([0.4, 0.1, 0.025]))
        tensor([0.5000, 1.0000, 2.0000])
    """

    alpha: float = 0.5
    max_weight: float = 10.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "alpha", check_real("alpha", self.alpha, 0.0))
        object.__setattr__(self, "max_weight", check_real("max_weight", self.max_weight, 1.0, 1e6))

    def __call__(self, frequency: Tensor, reference: Optional[FrequencyReference] = None) -> Tensor:
        """Weights for ``(B,)`` frequencies in ``(0, 1]``.

        Args:
            frequency: ``(B,)`` frequency estimates.
            reference: the dataset's statistics; ``None`` uses the batch's own.

        Returns:
            ``(B,)`` weights, float32, on ``frequency``'s device.
        """
        return self.from_log_frequency(_log_frequency(frequency), reference)

    def from_log_frequency(self, log_frequency: Tensor, reference: Optional[FrequencyReference] = None) -> Tensor:
        """Weights for ``(B,)`` log-frequencies already known to be valid (no checks)."""
        relative = log_frequency - _log_mean(log_frequency, reference)
        weight = torch.exp(-self.alpha * relative).clamp(1.0 / self.max_weight, self.max_weight)
        return weight.float()


@dataclass(frozen=True)
class TemperatureMap:
    """Per-sample temperatures from frequency estimates: rare samples get small ones.

    ``mapping="power"`` (the default) is mean-preserving in log space:
    ``t_i = clip(t_base * (f_i / g) ** gamma, t_min, t_max)``, so ``gamma = 0`` is
    NT-Xent at ``t_base``. ``mapping="range"`` fills the clip range:
    ``t_i = t_min + (t_max - t_min) * r_i`` with
    ``r_i = (log f_i - log f_min) / (log f_max - log f_min)`` (it raises most samples'
    temperature; see ``docs/METHOD.md``).

    The clip range defaults to ``[t_base / 4, 5 t_base]`` (the spec's ``[0.05, 1.0]`` at
    ``t_base = 0.2``; kept inside ``[1e-4, 1e4]``), so it never moves the base
    temperature itself, and it follows ``t_base`` when :meth:`with_base_temperature` (a
    temperature schedule, through ``set_temperature``) moves it; an explicit range must
    contain ``t_base`` and stays put.

    Args:
        base_temperature: ``t_base``, the temperature of a typical sample.
        gamma: exponent of the power map.
        min_temperature: ``t_min``; ``None``: ``t_base / 4``.
        max_temperature: ``t_max``; ``None``: ``5 t_base``.
        mapping: ``"power"`` or ``"range"``.

    Example:
        >>> import torch
        >>> temperature_map = TemperatureMap(base_temperature=0.2, gamma=0.25)
        >>> temperature_map(torch.tensor([0.5, 0.05, 0.005]))
        tensor([0.3557, 0.2000, 0.1125])
        >>> temperature_map.min_temperature, temperature_map.max_temperature
        (0.05, 1.0)
    """

    base_temperature: float = 0.2
    gamma: float = 0.25
    min_temperature: Optional[float] = None
    max_temperature: Optional[float] = None
    mapping: str = "power"

    MAPPINGS = ("power", "range")

    def __post_init__(self) -> None:
        base = check_base_temperature(self.base_temperature, "base_temperature")
        derived = (self.min_temperature is None, self.max_temperature is None)
        low = max(base * LOW_CLIP_FACTOR, MIN_TEMPERATURE) if derived[0] else self.min_temperature
        high = min(base * HIGH_CLIP_FACTOR, MAX_TEMPERATURE) if derived[1] else self.max_temperature
        low = check_real("min_temperature", low, MIN_TEMPERATURE, base)
        high = check_real("max_temperature", high, base, MAX_TEMPERATURE)
        object.__setattr__(self, "base_temperature", base)
        object.__setattr__(self, "gamma", check_real("gamma", self.gamma))
        object.__setattr__(self, "min_temperature", low)
        object.__setattr__(self, "max_temperature", high)
        check_choice("mapping", self.mapping, self.MAPPINGS)
        # Which bounds follow the base temperature: an attribute, not a field, so that
        # equality, asdict() and replace() see the bounds as numbers (replace() keeps them).
        object.__setattr__(self, "_derived_bounds", derived)

    def with_base_temperature(self, base_temperature: float) -> TemperatureMap:
        """This map at another ``t_base``: default clip bounds follow it, explicit ones stay.

        Which bounds are defaults is decided when the map is built (``None``); a map made by
        ``dataclasses.replace`` or unpickled from before this method keeps its bounds.

        Raises:
            ValueError: if ``base_temperature`` is out of range or outside an explicit bound.

        Example:
            >>> TemperatureMap(0.2).with_base_temperature(0.1).min_temperature
            0.025
        """
        base = check_base_temperature(base_temperature, "base_temperature")
        derived_low, derived_high = getattr(self, "_derived_bounds", (False, False))
        low = None if derived_low else self.min_temperature
        high = None if derived_high else self.max_temperature
        if low is not None and base < low:
            raise ValueError(f"base temperature {base:g} is below the map's explicit min_temperature {low:g}")
        if high is not None and base > high:
            raise ValueError(f"base temperature {base:g} is above the map's explicit max_temperature {high:g}")
        return TemperatureMap(base, self.gamma, low, high, self.mapping)

    def __call__(self, frequency: Tensor, reference: Optional[FrequencyReference] = None) -> Tensor:
        """Temperatures for ``(B,)`` frequencies in ``(0, 1]``.

        Args:
            frequency: ``(B,)`` frequency estimates.
            reference: the dataset's statistics; ``None`` uses the batch's own.

        Returns:
            ``(B,)`` temperatures, float32, on ``frequency``'s device.
        """
        return self.from_log_frequency(_log_frequency(frequency), reference)

    def from_log_frequency(self, log_frequency: Tensor, reference: Optional[FrequencyReference] = None) -> Tensor:
        """Temperatures for ``(B,)`` log-frequencies already known to be valid (no checks)."""
        assert self.min_temperature is not None and self.max_temperature is not None
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
            temperature = self.min_temperature + (self.max_temperature - self.min_temperature) * position
        return temperature.clamp(self.min_temperature, self.max_temperature).float()
