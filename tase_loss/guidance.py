"""TASE's central step: frequency estimates -> per-sample temperature and weight of a batch.

:class:`Guidance` joins a :class:`~tase_loss.PseudoLabeler` (the estimates) with a
:class:`~tase_loss.TemperatureMap` and a :class:`~tase_loss.SampleReweighter`. Both
maps only change their output when the labeler's estimates change (its
:attr:`~tase_loss.PseudoLabeler.version`) or a map is replaced, so they are evaluated for
all ``N`` samples at once and cached as ``(N,)`` tables on the device that asks; a
batch's lookup is then one gather on that device, with no host synchronization.
Everything that turns estimates into temperatures or weights goes through here: the
loss modules, the runner's methods, the OOD recipe and :class:`FrequencyWeights`.
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import torch
from torch import Tensor

from tase_loss._validation import check_index
from tase_loss.pseudo_labeler import PseudoLabeler
from tase_loss.reweighting import SampleReweighter, TemperatureMap

__all__ = ["FrequencyWeights", "Guidance"]


class Guidance:
    """Per-sample temperatures and weights of a batch from a pseudo-labeler's estimates.

    Args:
        pseudo_labeler: the source of the frequency estimates.
        temperature_map: frequency -> temperature, or ``None`` (the loss's own temperature).
        reweighter: frequency -> weight, or ``None`` (unit weights).

    Attributes:
        temperature_map, reweighter: may be replaced by new (immutable) maps, e.g. by a
            temperature schedule; the next lookup rebuilds the tables.

    Example:
        >>> import torch
        >>> from tase_loss import PseudoLabeler, SampleReweighter, TemperatureMap
        >>> labeler = PseudoLabeler(num_samples=50, feature_dim=4, warmup_epochs=1)
        >>> guidance = Guidance(labeler, TemperatureMap(0.2), SampleReweighter())
        >>> guidance.lookup(torch.tensor([0, 1]))          # before the first estimate
        (None, None)
        >>> labeler.update(torch.arange(50), torch.randn(50, 4))
        >>> _ = labeler.end_epoch(0)
        >>> temperature, weight = guidance.lookup(torch.tensor([0, 1]))
        >>> temperature.shape, weight.shape
        (torch.Size([2]), torch.Size([2]))
    """

    def __init__(
        self,
        pseudo_labeler: PseudoLabeler,
        temperature_map: Optional[TemperatureMap] = None,
        reweighter: Optional[SampleReweighter] = None,
    ) -> None:
        if not isinstance(pseudo_labeler, PseudoLabeler):
            raise TypeError(f"pseudo_labeler must be a PseudoLabeler, got {type(pseudo_labeler).__name__}")
        if temperature_map is not None and not isinstance(temperature_map, TemperatureMap):
            raise TypeError(f"temperature_map must be a TemperatureMap, got {type(temperature_map).__name__}")
        if reweighter is not None and not isinstance(reweighter, SampleReweighter):
            raise TypeError(f"reweighter must be a SampleReweighter, got {type(reweighter).__name__}")
        self.pseudo_labeler = pseudo_labeler
        self.temperature_map = temperature_map
        self.reweighter = reweighter
        self._key: Optional[tuple[int, int, int]] = None
        self._maps: tuple[object, object] = (None, None)
        self._tables: dict[torch.device, tuple[Optional[Tensor], Optional[Tensor]]] = {}

    def lookup(
        self, index: Tensor, device: Optional[torch.device] = None, batch_size: Optional[int] = None
    ) -> tuple[Optional[Tensor], Optional[Tensor]]:
        """``(temperature, weight)`` of the samples ``index``, each ``(B,)`` or ``None``.

        ``None`` means NT-Xent's value (the loss's temperature, unit weights): for a map
        that is not set, and for both before the labeler's first estimate (the warm-up).
        The index is validated on every call, warm-up included.

        Args:
            index: ``(B,)`` int64/int32 dataset indices, on the CPU or on ``device``.
            device: where the values are wanted; default ``index``'s device.
            batch_size: the length ``index`` must have (``None``: any).

        Returns:
            float32 tensors on ``device``.
        """
        index = check_index(index, batch_size, self.pseudo_labeler.num_samples)
        device = index.device if device is None else torch.device(device)
        if not self.pseudo_labeler.is_fitted:
            return None, None
        temperature_table, weight_table = self.tables(device)
        index = index.to(device, non_blocking=True)
        return (
            None if temperature_table is None else temperature_table[index],
            None if weight_table is None else weight_table[index],
        )

    def tables(self, device: torch.device) -> tuple[Optional[Tensor], Optional[Tensor]]:
        """``(N,)`` float32 temperature and weight of every sample on ``device`` (cached).

        Raises:
            NotFittedError: before the labeler's first estimate.
        """
        # Maps are immutable, so identity is their version; the labeler counts its own.
        key = (self.pseudo_labeler.version, id(self.temperature_map), id(self.reweighter))
        if key != self._key:
            self._key = key
            self._maps = (self.temperature_map, self.reweighter)  # keeps the ids unique
            self._tables = {}
        if device not in self._tables:
            cpu_tables = self._tables.get(torch.device("cpu")) or self._build()
            self._tables[torch.device("cpu")] = cpu_tables
            self._tables[device] = tuple(  # type: ignore[assignment]
                None if table is None else table.to(device) for table in cpu_tables
            )
        return self._tables[device]

    def _build(self) -> tuple[Optional[Tensor], Optional[Tensor]]:
        log_frequency = self.pseudo_labeler.log_frequency_table()
        reference = self.pseudo_labeler.frequency_reference()
        temperature = weight = None
        if self.temperature_map is not None:
            temperature = self.temperature_map.from_log_frequency(log_frequency, reference)
        if self.reweighter is not None:
            weight = self.reweighter.from_log_frequency(log_frequency, reference)
        return temperature, weight

    def summary(self, diagnostics: bool = False) -> dict[str, float]:
        """The latest estimate in scalars, for a logger; empty before the first estimate.

        :meth:`PseudoLabeler.summary`'s keys (groups, shares, log-frequency span; with
        ``diagnostics``, the estimator's own scalars too) and the range of the per-sample
        maps: ``temperature_min``/``temperature_max`` and ``weight_min``/``weight_max``
        (each only when that map is set).

        Example:
            >>> import torch
            >>> from tase_loss import PseudoLabeler, TemperatureMap
            >>> labeler = PseudoLabeler(num_samples=50, feature_dim=4, warmup_epochs=1)
            >>> guidance = Guidance(labeler, TemperatureMap(0.2))
            >>> labeler.update(torch.arange(50), torch.randn(50, 4))
            >>> _ = labeler.end_epoch(0)
            >>> sorted(guidance.summary())[-2:]
            ['temperature_max', 'temperature_min']
        """
        scalars = self.pseudo_labeler.summary(diagnostics)
        if not scalars:
            return scalars
        for name, table in zip(("temperature", "weight"), self.tables(torch.device("cpu"))):
            if table is not None:
                scalars[f"{name}_min"] = float(table.min())
                scalars[f"{name}_max"] = float(table.max())
        return scalars

    def sample_statistics(self) -> dict[str, np.ndarray]:
        """Every sample's ``frequency``, ``temperature`` and ``weight`` (those that are set).

        Empty before the first estimate. For reports and plots.
        """
        if not self.pseudo_labeler.is_fitted:
            return {}
        temperature, weight = self.tables(torch.device("cpu"))
        statistics = {"frequency": self.pseudo_labeler.log_frequency_table().exp().numpy()}
        if temperature is not None:
            statistics["temperature"] = temperature.numpy()
        if weight is not None:
            statistics["weight"] = weight.numpy()
        return statistics

    def __repr__(self) -> str:
        return f"Guidance({self.pseudo_labeler!r}, {self.temperature_map!r}, {self.reweighter!r})"


class FrequencyWeights:
    """Per-sample weights with mean 1 in the batch, from frequency estimates (for rwSAM).

    rwSAM only uses relative weights: ``weights(index)`` maps the labeler's estimates
    through a :class:`~tase_loss.SampleReweighter` (against the dataset's reference)
    and divides by the batch mean; before the first estimate every weight is 1. With a
    ``PseudoLabeler(estimator=KNNDensityEstimator(kernel="exponential", ...))`` these
    are rwSAM's inverse-density weights; with the default estimator, TASE's.

    Args:
        pseudo_labeler: the source of frequency estimates.
        reweighter: frequency -> weight; ``SampleReweighter()`` by default.

    Example:
        >>> import torch
        >>> from tase_loss import PseudoLabeler
        >>> weights = FrequencyWeights(PseudoLabeler(num_samples=40, feature_dim=4))
        >>> weights(torch.tensor([0, 1]))
        tensor([1., 1.])
    """

    def __init__(self, pseudo_labeler: PseudoLabeler, reweighter: Optional[SampleReweighter] = None) -> None:
        self.guidance = Guidance(pseudo_labeler, None, reweighter or SampleReweighter())

    @property
    def pseudo_labeler(self) -> PseudoLabeler:
        return self.guidance.pseudo_labeler

    def __call__(self, index: Tensor) -> Tensor:
        """``(B,)`` float32 weights of the samples ``index`` (mean 1), on ``index``'s device."""
        _, weight = self.guidance.lookup(index)
        if weight is None:
            return torch.ones(index.shape[0], device=index.device)
        return weight / weight.mean()

    def __repr__(self) -> str:
        return f"FrequencyWeights({self.guidance.pseudo_labeler!r}, {self.guidance.reweighter!r})"
