"""Loss modules: configuration and state around :mod:`tase_loss.functional`."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tase_loss import functional
from tase_loss._validation import (
    TemperatureLike,
    check_embeddings,
    check_index,
    check_reduction,
    check_temperature,
)
from tase_loss.pseudo_labeler import PseudoLabeler
from tase_loss.reweighting import SampleReweighter, TemperatureMap

__all__ = ["TASEContrastiveLoss", "TASECosineLoss"]


class _PseudoLabelGuidance:
    """Looks up per-sample temperatures and weights of a batch from a pseudo-labeler.

    Both only change when the labeler re-clusters (or is loaded) or a map's settings
    change, so they are computed for all ``N`` samples at once and cached as ``(N,)``
    tables; a batch's lookup is then a gather. The cache is keyed by the labeler's
    :class:`~tase_loss.FrequencyReference` object (a new one comes with every fit and
    every load) and the maps' ``repr`` (which lists all their settings).
    """

    def __init__(
        self,
        pseudo_labeler: Optional[PseudoLabeler],
        temperature_map: Optional[TemperatureMap],
        reweighter: Optional[SampleReweighter],
    ) -> None:
        self.pseudo_labeler = pseudo_labeler
        self.temperature_map = temperature_map
        self.reweighter = reweighter
        self._tables: Optional[tuple[object, str, Optional[Tensor], Optional[Tensor]]] = None

    def lookup(
        self, index: Tensor, device: torch.device
    ) -> tuple[Optional[Tensor], Optional[Tensor]]:
        """``(temperature, weight)`` for the batch, ``None`` where NT-Xent's apply.

        Before the labeler's first clustering (the warm-up) both are ``None``.
        """
        if self.pseudo_labeler is None:
            raise ValueError("index= needs a pseudo_labeler attached to the loss")
        if not self.pseudo_labeler.is_fitted:
            return None, None
        if not isinstance(index, Tensor) or index.dim() != 1:
            raise ValueError("index must be a (B,) torch.Tensor")
        cpu_index = check_index(index.cpu(), index.shape[0], self.pseudo_labeler.num_samples)
        temperature_table, weight_table = self._current_tables()
        return tuple(  # type: ignore[return-value]
            None if table is None else table[cpu_index].to(device, non_blocking=True)
            for table in (temperature_table, weight_table)
        )

    def _current_tables(self) -> tuple[Optional[Tensor], Optional[Tensor]]:
        assert self.pseudo_labeler is not None
        reference = self.pseudo_labeler.frequency_reference()
        settings = f"{self.temperature_map!r} {self.reweighter!r}"
        if self._tables is None or self._tables[0] is not reference or self._tables[1] != settings:
            every_sample = torch.arange(self.pseudo_labeler.num_samples)
            log_frequency = self.pseudo_labeler.log_frequency_of(every_sample)
            temperature = weight = None
            if self.temperature_map is not None:
                temperature = self.temperature_map.from_log_frequency(log_frequency, reference)
            if self.reweighter is not None:
                weight = self.reweighter.from_log_frequency(log_frequency, reference)
            self._tables = (reference, settings, temperature, weight)
        return self._tables[2], self._tables[3]


class TASEContrastiveLoss(nn.Module):
    """NT-Xent / InfoNCE with per-anchor temperatures and per-sample weights (TASE).

    Called as ``loss(out0, out1)`` it is NT-Xent (SimCLR): both views are anchors and
    each anchor's positive is its other view. Per-sample temperatures and weights come
    either directly (``temperature=``, ``weight=``) or, with ``index=``, from the
    attached :class:`~tase_loss.PseudoLabeler` through a
    :class:`~tase_loss.TemperatureMap` and a :class:`~tase_loss.SampleReweighter`
    (both default to the spec's settings when a labeler is attached). During the
    labeler's warm-up the loss is NT-Xent at ``temperature``.

    With ``queue_size > 0`` it is MoCo's InfoNCE: ``out0`` are the queries (anchors),
    ``out1`` the keys of the momentum encoder; the negatives are the queue of earlier
    keys plus the batch's other keys. The queue is read before this batch's keys are
    enqueued, starts empty (no random keys) and is a buffer, so it is part of
    ``state_dict()``. Inside :meth:`queue_frozen` the queue is read but not written
    (for two forward passes over one batch, as in rwSAM).

    With ``gather_distributed=True`` under ``torch.distributed`` (DDP), the loss is
    that of the union of all ranks' batches: negatives come from every rank (gathered
    with gradients), the weighted mean divides by the weights of all ranks, and every
    rank returns that same global value; after DDP averages the parameter gradients
    they are exactly those of one process on the concatenated batch. Per-sample
    temperatures and weights stay local. In MoCo mode all ranks' keys are enqueued in
    rank order, so the queues stay identical. See ``docs/distributed.md``.

    Args:
        temperature: base temperature ``t`` (NT-Xent's), ``> 0``.
        reduction: ``"mean"`` (weighted mean), ``"sum"`` or ``"none"``.
        pseudo_labeler: source of frequency estimates for ``index=`` calls.
        temperature_map: frequency -> temperature; defaults to
            ``TemperatureMap(base_temperature=temperature)`` when a labeler is given.
        reweighter: frequency -> weight; defaults to ``SampleReweighter()`` when a
            labeler is given.
        queue_size: MoCo queue length ``S``; ``0`` selects SimCLR mode.
        embedding_dim: ``D``, needed to allocate the queue when ``queue_size > 0``.
        gather_distributed: compute the loss over all ranks of the default process
            group (the identity without one).

    Shape:
        - out0, out1: ``(B, D)``.
        - temperature, weight, index (call arguments): ``(B,)``.
        - output: scalar, or ``(2B,)`` (SimCLR) / ``(B,)`` (MoCo) with ``"none"``.

    Example:
        >>> import torch
        >>> criterion = TASEContrastiveLoss(temperature=0.2)
        >>> out0, out1 = torch.randn(8, 16), torch.randn(8, 16)
        >>> loss = criterion(out0, out1)
        >>> weighted = criterion(out0, out1, temperature=torch.full((8,), 0.1),
        ...                      weight=torch.rand(8))
        >>> moco = TASEContrastiveLoss(queue_size=32, embedding_dim=16)
        >>> moco(out0, out1).shape, int(moco.queue_length)
        (torch.Size([]), 8)
    """

    queue: Tensor
    queue_pointer: Tensor
    queue_length: Tensor

    def __init__(
        self,
        temperature: float = 0.2,
        reduction: str = "mean",
        *,
        pseudo_labeler: Optional[PseudoLabeler] = None,
        temperature_map: Optional[TemperatureMap] = None,
        reweighter: Optional[SampleReweighter] = None,
        queue_size: int = 0,
        embedding_dim: Optional[int] = None,
        gather_distributed: bool = False,
    ) -> None:
        super().__init__()
        check_temperature(temperature, 0, torch.device("cpu"))
        check_reduction(reduction)
        if isinstance(queue_size, bool) or not isinstance(queue_size, int) or queue_size < 0:
            raise ValueError(f"queue_size must be an integer >= 0, got {queue_size!r}")
        if queue_size > 0 and (not isinstance(embedding_dim, int) or embedding_dim < 1):
            raise ValueError(
                f"embedding_dim must be a positive integer when queue_size > 0, got {embedding_dim!r}"
            )
        if pseudo_labeler is not None:
            temperature_map = temperature_map or TemperatureMap(base_temperature=temperature)
            reweighter = reweighter or SampleReweighter()
        self.temperature = float(temperature)
        self.reduction = reduction
        self.queue_size = queue_size
        self.gather_distributed = bool(gather_distributed)
        self.guidance = _PseudoLabelGuidance(pseudo_labeler, temperature_map, reweighter)
        self._queue_frozen = False
        if queue_size > 0:
            self.register_buffer("queue", torch.zeros(queue_size, embedding_dim))
            self.register_buffer("queue_pointer", torch.zeros((), dtype=torch.int64))
            self.register_buffer("queue_length", torch.zeros((), dtype=torch.int64))

    @property
    def pseudo_labeler(self) -> Optional[PseudoLabeler]:
        return self.guidance.pseudo_labeler

    def per_sample(self, index: Tensor) -> tuple[Optional[Tensor], Optional[Tensor]]:
        """The ``(temperature, weight)`` an ``index=`` call uses, each ``(B,)`` or ``None``.

        ``None`` means NT-Xent's value (the base temperature, unit weights), as during
        the labeler's warm-up. Useful for logging and plots.

        Example:
            >>> import torch
            >>> from tase_loss import PseudoLabeler
            >>> labeler = PseudoLabeler(num_samples=20, feature_dim=4, num_clusters=2)
            >>> TASEContrastiveLoss(pseudo_labeler=labeler).per_sample(torch.arange(3))
            (None, None)
        """
        return self.guidance.lookup(index, index.device)

    @contextlib.contextmanager
    def queue_frozen(self) -> Iterator[None]:
        """Within the block, MoCo calls read the queue but do not enqueue their keys.

        Two passes over one batch (rwSAM's) must enqueue its keys once, and the
        second must not contrast against them: run the first pass inside this block.
        Without a queue (SimCLR mode) this changes nothing.

        Example:
            >>> import torch
            >>> criterion = TASEContrastiveLoss(queue_size=16, embedding_dim=4)
            >>> queries, keys = torch.randn(4, 4), torch.randn(4, 4)
            >>> with criterion.queue_frozen():
            ...     loss = criterion(queries, keys)
            >>> int(criterion.queue_length)
            0
        """
        previous = self._queue_frozen
        self._queue_frozen = True
        try:
            yield
        finally:
            self._queue_frozen = previous

    def forward(
        self,
        out0: Tensor,
        out1: Tensor,
        *,
        temperature: Optional[TemperatureLike] = None,
        weight: Optional[Tensor] = None,
        index: Optional[Tensor] = None,
    ) -> Tensor:
        """Compute the loss of a batch.

        Args:
            out0: ``(B, D)`` first view (SimCLR) or queries (MoCo).
            out1: ``(B, D)`` second view (SimCLR) or keys (MoCo).
            temperature: ``(B,)`` per-sample temperatures (or a float), overriding the
                base temperature.
            weight: ``(B,)`` per-sample weights.
            index: ``(B,)`` dataset indices; temperatures and weights are looked up
                from the pseudo-labeler. Exclusive with ``temperature`` and ``weight``.

        Returns:
            The loss (see the class's Shape section).
        """
        if index is not None:
            if temperature is not None or weight is not None:
                raise ValueError("pass either index= or temperature=/weight=, not both")
            temperature, weight = self.guidance.lookup(index, out0.device)
        if temperature is None:
            temperature = self.temperature
        if self.queue_size == 0:
            return functional.nt_xent_loss(
                out0,
                out1,
                temperature,
                weight,
                self.reduction,
                gather_distributed=self.gather_distributed,
            )
        return self._moco_forward(out0, out1, temperature, weight)

    def _moco_forward(
        self, queries: Tensor, keys: Tensor, temperature: TemperatureLike, weight: Optional[Tensor]
    ) -> Tensor:
        check_embeddings("out1", keys)
        if keys.shape[1] != self.queue.shape[1]:
            raise ValueError(
                f"out1 has feature size {keys.shape[1]} but the queue holds {self.queue.shape[1]}"
            )
        queue = self.queue[: int(self.queue_length)].to(dtype=keys.dtype, device=keys.device)
        loss, all_keys = functional.moco_loss_and_all_keys(
            queries,
            keys,
            queue,
            temperature,
            weight,
            self.reduction,
            gather_distributed=self.gather_distributed,
        )
        # Every rank enqueues all ranks' keys in rank order: the queues stay identical.
        if all_keys.shape[0] > self.queue_size:
            raise ValueError(
                f"a batch of {all_keys.shape[0]} keys does not fit in a queue of {self.queue_size}"
            )
        if not self._queue_frozen:
            self._enqueue(all_keys)
        return loss

    @torch.no_grad()
    def _enqueue(self, keys: Tensor) -> None:
        """Write keys at the pointer, wrapping around; the oldest keys are replaced."""
        batch_size = keys.shape[0]
        slots = (self.queue_pointer + torch.arange(batch_size, device=self.queue.device)) % self.queue_size
        # Normalize in at least float32 and never below the queue's own precision.
        unit_keys = F.normalize(keys.detach().to(torch.promote_types(self.queue.dtype, torch.float32)), dim=1)
        self.queue[slots] = unit_keys.to(self.queue)
        self.queue_pointer.copy_((self.queue_pointer + batch_size) % self.queue_size)
        self.queue_length.copy_(torch.clamp(self.queue_length + batch_size, max=self.queue_size))

    def extra_repr(self) -> str:
        return (
            f"temperature={self.temperature}, reduction={self.reduction!r}, "
            f"queue_size={self.queue_size}, gather_distributed={self.gather_distributed}"
        )


class TASECosineLoss(nn.Module):
    """BYOL / SimSiam per-sample cosine loss with TASE's per-sample weights.

    BYOL and SimSiam have no softmax and no temperature; quantity awareness enters as
    the weighted mean ``sum_b w_b l_b / sum_b w_b`` of their per-sample loss, with
    weights from the same :class:`~tase_loss.SampleReweighter`.

    Args:
        variant: ``"byol"`` (``2 - 2 cos``) or ``"simsiam"`` (``-cos``).
        reduction: ``"mean"``, ``"sum"`` or ``"none"``.
        pseudo_labeler: source of frequency estimates for ``index=`` calls.
        reweighter: frequency -> weight; defaults to ``SampleReweighter()`` when a
            labeler is given.
        gather_distributed: under DDP, take the weighted mean over all ranks' samples
            (global weight sum) and return it on every rank; see ``docs/distributed.md``.

    Example:
        >>> import torch
        >>> criterion = TASECosineLoss("simsiam")
        >>> p, z = torch.randn(8, 16), torch.randn(8, 16)
        >>> loss = criterion(p, z, weight=torch.rand(8))
    """

    VARIANTS = ("byol", "simsiam")

    def __init__(
        self,
        variant: str = "byol",
        reduction: str = "mean",
        *,
        pseudo_labeler: Optional[PseudoLabeler] = None,
        reweighter: Optional[SampleReweighter] = None,
        gather_distributed: bool = False,
    ) -> None:
        super().__init__()
        if variant not in self.VARIANTS:
            raise ValueError(f"variant must be one of {self.VARIANTS}, got {variant!r}")
        check_reduction(reduction)
        if pseudo_labeler is not None:
            reweighter = reweighter or SampleReweighter()
        self.variant = variant
        self.reduction = reduction
        self.gather_distributed = bool(gather_distributed)
        self.guidance = _PseudoLabelGuidance(pseudo_labeler, None, reweighter)

    def forward(
        self,
        prediction: Tensor,
        target: Tensor,
        *,
        weight: Optional[Tensor] = None,
        index: Optional[Tensor] = None,
    ) -> Tensor:
        """Loss of ``(B, D)`` predictions against ``(B, D)`` targets (stop-gradient).

        ``weight=`` gives ``(B,)`` weights directly; ``index=`` looks them up.
        """
        if index is not None:
            if weight is not None:
                raise ValueError("pass either index= or weight=, not both")
            _, weight = self.guidance.lookup(index, prediction.device)
        loss_function = functional.byol_loss if self.variant == "byol" else functional.simsiam_loss
        return loss_function(
            prediction, target, weight, self.reduction, gather_distributed=self.gather_distributed
        )

    def extra_repr(self) -> str:
        return (
            f"variant={self.variant!r}, reduction={self.reduction!r}, "
            f"gather_distributed={self.gather_distributed}"
        )
