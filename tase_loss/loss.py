"""Loss modules: configuration and state around :mod:`tase_loss.functional`."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Optional

import torch
from torch import Tensor, nn

from tase_loss import functional, ops
from tase_loss._validation import (
    TemperatureLike,
    check_base_temperature,
    check_bool,
    check_choice,
    check_embeddings,
    check_int,
    check_reduction,
    check_rows,
    renamed_keywords,
)
from tase_loss.guidance import Guidance
from tase_loss.pseudo_labeler import PseudoLabeler
from tase_loss.queue import KeyQueue
from tase_loss.reweighting import SampleReweighter, TemperatureMap

__all__ = ["TASEContrastiveLoss", "TASECosineLoss"]

_LABELER_PREFIX = "pseudo_labeler."


class _GuidedLoss(nn.Module):
    """What both loss modules share: the guidance, feeding the labeler, its state.

    With a labeler attached, a call with ``index=`` in training mode stores the batch's
    features in the labeler's bank (``features=``, or the loss's first input), so that a
    training loop needs no extra line for it. The labeler's state is part of the
    module's ``state_dict()`` (keys ``pseudo_labeler.*``), so a checkpoint of model and
    criterion resumes the estimates exactly.
    """

    def __init__(
        self,
        pseudo_labeler: Optional[PseudoLabeler],
        temperature_map: Optional[TemperatureMap],
        reweighter: Optional[SampleReweighter],
    ) -> None:
        super().__init__()
        self.guidance: Optional[Guidance] = None
        if pseudo_labeler is not None:
            self.guidance = Guidance(pseudo_labeler, temperature_map, reweighter)
        elif temperature_map is not None or reweighter is not None:
            raise ValueError("temperature_map and reweighter need a pseudo_labeler")

    @property
    def pseudo_labeler(self) -> Optional[PseudoLabeler]:
        return None if self.guidance is None else self.guidance.pseudo_labeler

    def per_sample(self, index: Tensor) -> tuple[Optional[Tensor], Optional[Tensor]]:
        """The ``(temperature, weight)`` an ``index=`` call uses, each ``(B,)`` or ``None``.

        ``None`` means NT-Xent's value (the base temperature, unit weights), as during
        the labeler's warm-up. Useful for logging and plots.
        """
        return self._require_guidance("per_sample()").lookup(index)

    def end_epoch(self, epoch: int, log: Optional[Callable[[dict[str, float], int], Any]] = None) -> dict[str, float]:
        """The plain loop's one line after each epoch: the labeler's schedule, and what it estimated.

        Calls :meth:`PseudoLabeler.end_epoch`; when that made an estimate, returns its
        summary (:meth:`Guidance.summary`: groups, shares, log-frequency span, temperature
        and weight range, plus the estimator's diagnostics) and hands it to ``log``.

        Args:
            epoch: the epoch that just ended (0-based).
            log: called as ``log(scalars, epoch)`` after an estimate, e.g. a function that
                writes each scalar with TensorBoard's ``SummaryWriter.add_scalar`` or a row
                of a ``csv.DictWriter``.

        Returns:
            The scalars, or ``{}`` when the schedule made no estimate this epoch.

        Example:
            >>> import torch
            >>> from tase_loss import PseudoLabeler, TASEContrastiveLoss
            >>> labeler = PseudoLabeler(num_samples=64, feature_dim=8, warmup_epochs=1)
            >>> criterion = TASEContrastiveLoss(pseudo_labeler=labeler)
            >>> _ = criterion(torch.randn(64, 8), torch.randn(64, 8), index=torch.arange(64))
            >>> scalars = criterion.end_epoch(0, log=lambda scalars, epoch: print(epoch, int(scalars["num_groups"])))
            0 10
        """
        guidance = self._require_guidance("end_epoch()")
        if not guidance.pseudo_labeler.end_epoch(epoch):
            return {}
        scalars = guidance.summary(diagnostics=True)
        if log is not None:
            log(scalars, epoch)
        return scalars

    def _require_guidance(self, needs: str = "index=") -> Guidance:
        if self.guidance is None:
            raise ValueError(f"{needs} needs a pseudo_labeler attached to the loss")
        return self.guidance

    def _lookup(
        self, index: Tensor, features: Optional[Tensor], batch: Tensor, batch_name: str
    ) -> tuple[Optional[Tensor], Optional[Tensor]]:
        """``index=``'s ``(temperature, weight)``, after checking ``index`` and ``features`` against ``batch``."""
        guidance = self._require_guidance()
        check_rows("index", index, batch.shape[0], batch_name)
        if features is not None:
            check_rows("features", features, batch.shape[0], batch_name)
        return guidance.lookup(index, batch.device, batch.shape[0])

    def _feeds_labeler(self, index: Optional[Tensor]) -> bool:
        return index is not None and self.training

    def _feed(self, index: Tensor, features: Tensor, per_sample_loss: Optional[Tensor]) -> None:
        labeler = self.pseudo_labeler
        assert labeler is not None
        labeler.update(index, features.detach(), per_sample_loss)

    def _save_to_state_dict(self, destination: dict, prefix: str, keep_vars: bool) -> None:
        super()._save_to_state_dict(destination, prefix, keep_vars)
        if self.pseudo_labeler is None:
            return
        for key, value in self.pseudo_labeler.state_dict().items():
            destination[prefix + _LABELER_PREFIX + key] = value if isinstance(value, Tensor) else torch.tensor(value)

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False) -> Any:
        """``nn.Module.load_state_dict``, all or nothing.

        When it raises (a labeler or queue entry that cannot be right, or, with
        ``strict``, a missing or unexpected key), the loss is restored to its state before
        the call: it keeps a copy of that state while loading. (Loaded as part of a larger
        module, the labeler and the queue each load whole or not at all.)
        """
        buffers = dict(self.named_buffers())
        before = {key: value.clone() for key, value in self.state_dict().items()}
        try:
            return super().load_state_dict(state_dict, strict, assign)
        except (RuntimeError, TypeError, ValueError):
            for name, buffer in buffers.items():  # assign=True bound the caller's tensors
                module, _, attribute = name.rpartition(".")
                setattr(self.get_submodule(module), attribute, buffer)
            super().load_state_dict(before)
            raise

    def _load_from_state_dict(
        self,
        state_dict: dict,
        prefix: str,
        local_metadata: dict,
        strict: bool,
        missing_keys: list,
        unexpected_keys: list,
        error_msgs: list,
    ) -> None:
        labeler_prefix = prefix + _LABELER_PREFIX
        labeler_keys = [key for key in state_dict if key.startswith(labeler_prefix)]
        labeler_state = {key[len(labeler_prefix) :]: state_dict[key] for key in labeler_keys}
        # Keep the labeler's keys away from the generic buffer matching.
        rest = {key: value for key, value in state_dict.items() if key not in labeler_keys}
        super()._load_from_state_dict(
            rest, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )
        labeler = self.pseudo_labeler
        if labeler is None:
            unexpected_keys.extend(labeler_keys)
            return
        if not labeler_state:
            if strict:
                missing_keys.append(labeler_prefix + "*")
            return
        count = labeler_state.get("num_estimates")
        if isinstance(count, Tensor):  # saved as a tensor: see _save_to_state_dict
            if count.numel() != 1 or count.is_floating_point() or count.dtype == torch.bool:
                error_msgs.append(f"{labeler_prefix}num_estimates must be one integer, got {count!r}")
                return
            labeler_state["num_estimates"] = int(count)
        try:
            labeler.load_state_dict(labeler_state)
        except (TypeError, ValueError) as error:
            error_msgs.append(f"{labeler_prefix}: {error}")


def _per_sample_of_rows(rows: Tensor, weight: Optional[Tensor], views: int) -> Tensor:
    """``(B,)`` unweighted per-sample losses from ``(views * B,)`` rows ``w_a l_a``."""
    batch_size = rows.shape[0] // views
    unweighted = rows if weight is None else rows / weight.to(rows.dtype).repeat(views)
    return unweighted.detach().reshape(views, batch_size).mean(dim=0)


class TASEContrastiveLoss(_GuidedLoss):
    """NT-Xent / InfoNCE with per-anchor temperatures and per-sample weights (TASE).

    Called as ``loss(out0, out1)`` it is NT-Xent (SimCLR): both views are anchors and
    each anchor's positive is its other view. Per-sample temperatures and weights come
    either directly (``temperature=``, ``weight=``) or, with ``index=``, from the
    attached :class:`~tase_loss.PseudoLabeler` through a
    :class:`~tase_loss.TemperatureMap` and a :class:`~tase_loss.SampleReweighter`
    (both default to the spec's settings when a labeler is given). An ``index=`` call
    in training mode also stores the batch's features in the labeler's bank. During the
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

    The default temperature is 0.2 (SimCLR's CIFAR setting). Peers differ: lightly's
    ``NTXentLoss`` defaults to 0.5 and pytorch-metric-learning's ``NTXentLoss`` to 0.07,
    so pass your baseline's value to keep it identical.

    Args:
        temperature: base temperature ``t`` (NT-Xent's), in ``[1e-4, 1e4]``.
        reduction: ``"mean"`` (weighted mean), ``"sum"`` or ``"none"``.
        pseudo_labeler: source of frequency estimates for ``index=`` calls.
        temperature_map: frequency -> temperature; defaults to
            ``TemperatureMap(base_temperature=temperature)`` when a labeler is given.
        reweighter: frequency -> weight; defaults to ``SampleReweighter()`` when a
            labeler is given.
        queue_size: MoCo queue length ``S``; ``0`` selects SimCLR mode.
        feature_dim: ``D`` of the embeddings, needed to allocate the queue when
            ``queue_size > 0``.
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
        >>> moco = TASEContrastiveLoss(queue_size=32, feature_dim=16)
        >>> moco(out0, out1).shape, int(moco.queue.length)
        (torch.Size([]), 8)
    """

    @renamed_keywords({"embedding_dim": "feature_dim"})
    def __init__(
        self,
        temperature: float = 0.2,
        reduction: str = "mean",
        *,
        pseudo_labeler: Optional[PseudoLabeler] = None,
        temperature_map: Optional[TemperatureMap] = None,
        reweighter: Optional[SampleReweighter] = None,
        queue_size: int = 0,
        feature_dim: Optional[int] = None,
        gather_distributed: bool = False,
    ) -> None:
        temperature = check_base_temperature(temperature)
        check_reduction(reduction)
        check_int("queue_size", queue_size, minimum=0)
        if queue_size > 0 or feature_dim is not None:
            check_int("feature_dim", feature_dim, minimum=1)
        if pseudo_labeler is not None:
            temperature_map = temperature_map or TemperatureMap(base_temperature=temperature)
            reweighter = reweighter or SampleReweighter()
        super().__init__(pseudo_labeler, temperature_map, reweighter)
        self.temperature = temperature
        self.reduction = reduction
        self.queue_size = queue_size
        self.gather_distributed = check_bool("gather_distributed", gather_distributed)
        self.queue = KeyQueue(queue_size, feature_dim) if queue_size > 0 else None
        self._backend: Optional[ops.Backend] = None  # what the latest eager call ran, for the repr

    def set_temperature(self, temperature: float) -> None:
        """Set the base temperature: NT-Xent's and, with a labeler, the map's ``t_base``.

        The public way for a temperature schedule to act on the loss.

        Raises:
            ValueError: if ``temperature`` is out of range or outside the map's explicit clip
                range (a default one follows it: ``[t / 4, 5 t]``).
        """
        temperature = check_base_temperature(temperature)
        if self.guidance is not None and self.guidance.temperature_map is not None:
            self.guidance.temperature_map = self.guidance.temperature_map.with_base_temperature(temperature)
        self.temperature = temperature

    @contextlib.contextmanager
    def queue_frozen(self) -> Iterator[None]:
        """Within the block, MoCo calls read the queue but do not enqueue their keys.

        Two passes over one batch (rwSAM's) must enqueue its keys once, and the
        second must not contrast against them: run the first pass inside this block.
        Without a queue (SimCLR mode) this changes nothing.

        Example:
            >>> import torch
            >>> criterion = TASEContrastiveLoss(queue_size=16, feature_dim=4)
            >>> queries, keys = torch.randn(4, 4), torch.randn(4, 4)
            >>> with criterion.queue_frozen():
            ...     loss = criterion(queries, keys)
            >>> int(criterion.queue.length)
            0
        """
        if self.queue is None:
            yield
            return
        with self.queue.frozen():
            yield

    def forward(
        self,
        out0: Tensor,
        out1: Tensor,
        *,
        temperature: Optional[TemperatureLike] = None,
        weight: Optional[Tensor] = None,
        index: Optional[Tensor] = None,
        features: Optional[Tensor] = None,
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
            features: ``(B, F)`` what the labeler's bank stores for this batch on an
                ``index=`` call in training mode (backbone features estimate
                frequencies better than projections; see ``docs/results.md``);
                default ``out0``.

        Returns:
            The loss (see the class's Shape section).
        """
        if index is not None:
            if temperature is not None or weight is not None:
                raise ValueError("pass either index= or temperature=/weight=, not both")
            temperature, weight = self._lookup(index, features, out0, "out0")
        elif features is not None:
            raise ValueError("features= is stored for index= calls; pass index= too")
        if temperature is None:
            temperature = self.temperature
        feed = self._feeds_labeler(index)
        labeler = self.pseudo_labeler
        wants_rows = feed and labeler is not None and labeler.uses_loss
        reduction = "none" if wants_rows else self.reduction
        all_keys = None
        if self.queue_size == 0:
            loss = functional.nt_xent_loss(
                out0, out1, temperature, weight, reduction, gather_distributed=self.gather_distributed
            )
        else:
            loss, all_keys = self._moco_forward(out0, out1, temperature, weight, reduction)
        if not torch.compiler.is_compiling():
            self._backend = ops.last_backend()
        per_sample_loss = None
        if wants_rows:
            per_sample_loss = _per_sample_of_rows(loss, weight, 2 if self.queue_size == 0 else 1)
            row_weight = None if weight is None else weight.repeat(2 if self.queue_size == 0 else 1)
            loss = functional.weighted_reduce(loss, row_weight, self.reduction, self.gather_distributed)
        if feed:
            assert index is not None
            self._feed(index, out0 if features is None else features, per_sample_loss)
        if all_keys is not None:
            # Last, after the labeler's checks: a call that fails enqueues nothing. Every
            # rank enqueues all ranks' keys in rank order, so the queues stay identical.
            assert self.queue is not None
            self.queue.write(all_keys)
        return loss

    def _moco_forward(
        self, queries: Tensor, keys: Tensor, temperature: TemperatureLike, weight: Optional[Tensor], reduction: str
    ) -> tuple[Tensor, Tensor]:
        """MoCo's loss against the queue, and the ``(world * B, D)`` keys to enqueue."""
        check_embeddings("out1", keys)
        assert self.queue is not None
        loss, all_keys = functional.moco_loss_and_all_keys(
            queries,
            keys,
            self.queue.read(keys),
            temperature,
            weight,
            reduction,
            gather_distributed=self.gather_distributed,
        )
        self.queue.check_fits(all_keys.shape[0])
        return loss, all_keys

    def extra_repr(self) -> str:
        return (
            f"temperature={self.temperature}, reduction={self.reduction!r}, "
            f"queue_size={self.queue_size}, gather_distributed={self.gather_distributed}, "
            f"backend={self._backend or 'unknown until the first call'}"
        )


class TASECosineLoss(_GuidedLoss):
    """BYOL / SimSiam per-sample cosine loss with TASE's per-sample weights.

    BYOL and SimSiam have no softmax and no temperature; quantity awareness enters as
    the weighted mean ``sum_b w_b l_b / sum_b w_b`` of their per-sample loss, with
    weights from the same :class:`~tase_loss.SampleReweighter`. For the symmetric loss
    of both views, call it twice (``(p0, z1)`` and ``(p1, z0)``) and average; with a
    labeler, pass ``index=`` to both calls (each stores its features; the later wins).

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
        check_choice("variant", variant, self.VARIANTS)
        check_reduction(reduction)
        if pseudo_labeler is not None:
            reweighter = reweighter or SampleReweighter()
        super().__init__(pseudo_labeler, None, reweighter)
        self.variant = variant
        self.reduction = reduction
        self.gather_distributed = check_bool("gather_distributed", gather_distributed)

    def forward(
        self,
        prediction: Tensor,
        target: Tensor,
        *,
        weight: Optional[Tensor] = None,
        index: Optional[Tensor] = None,
        features: Optional[Tensor] = None,
    ) -> Tensor:
        """Loss of ``(B, D)`` predictions against ``(B, D)`` targets (stop-gradient).

        ``weight=`` gives ``(B,)`` weights directly; ``index=`` looks them up (and, in
        training mode, stores ``features``, default ``prediction``, in the labeler's bank).
        """
        if index is not None:
            if weight is not None:
                raise ValueError("pass either index= or weight=, not both")
            _, weight = self._lookup(index, features, prediction, "prediction")
        elif features is not None:
            raise ValueError("features= is stored for index= calls; pass index= too")
        loss_function = functional.byol_loss if self.variant == "byol" else functional.simsiam_loss
        feed = self._feeds_labeler(index)
        labeler = self.pseudo_labeler
        wants_rows = feed and labeler is not None and labeler.uses_loss
        loss = loss_function(
            prediction,
            target,
            weight,
            "none" if wants_rows else self.reduction,
            gather_distributed=self.gather_distributed,
        )
        per_sample_loss = None
        if wants_rows:
            per_sample_loss = _per_sample_of_rows(loss, weight, 1)
            loss = functional.weighted_reduce(loss, weight, self.reduction, self.gather_distributed)
        if feed:
            assert index is not None
            self._feed(index, prediction if features is None else features, per_sample_loss)
        return loss

    def extra_repr(self) -> str:
        return f"variant={self.variant!r}, reduction={self.reduction!r}, gather_distributed={self.gather_distributed}"
