"""The rows under every contrastive loss: one dispatch, the weighted reduction, shared checks."""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from tase_loss import distributed
from tase_loss._numerics import accumulation_dtype
from tase_loss._validation import TemperatureLike, check_reduction, check_temperature, check_weight
from tase_loss.ops import contrastive_rows_fused, is_applicable
from tase_loss.reference import (
    contrastive_rows_chunked,
    contrastive_rows_reference,
    contrastive_targets_reference,
)

__all__ = [
    "CHUNKED_ABOVE",
    "FUSED_ABOVE_ON_CPU",
    "contrastive_rows",
    "contrastive_targets",
    "reduce_per_sample",
    "weighted_reduce",
]


CHUNKED_ABOVE = 1 << 22
"""Logits (``M * N``) above which the pure-PyTorch path runs in row blocks: from there the
chunked rows are also the faster ones (2 CPU cores: 0.6x the materialized time at
M = N = 4096 with a mean, 0.84x without; equal at 2048; benchmarks/README.md)."""

FUSED_ABOVE_ON_CPU = 1 << 18
"""Logits above which the compiled op runs on the CPU; below, its fixed costs lose to the
materialized rows (1.4x their time at M = N = 128, equal at 512; benchmarks/README.md).
Other devices use the op at every size (not measured yet)."""


def contrastive_rows(
    queries: Tensor,
    keys: Tensor,
    positive_index: Tensor,
    self_index: Tensor,
    inverse_temperature: Tensor,
    weight: Tensor,
    *,
    uniform_grad: bool = False,
) -> Tensor:
    """Weighted per-row losses ``w_a * l_a``, shape ``(M,)``, without validation.

    The building block under every contrastive loss of the library; the arguments
    follow :func:`tase_loss.reference.contrastive_rows_reference`. The one place that
    picks a path, in this order:

    1. the fused op (:mod:`tase_loss.ops`; tiles, never the ``(M, N)`` matrix) when the
       extension is built and has a kernel for the device, on the CPU only above
       :data:`FUSED_ABOVE_ON_CPU` logits ``M * N``;
    2. the chunked pure-PyTorch rows (:func:`tase_loss.reference.contrastive_rows_chunked`,
       memory linear in ``M + N``) when ``M * N`` exceeds :data:`CHUNKED_ABOVE`;
    3. the materialized pure-PyTorch rows otherwise.

    All agree within the dtype's tolerance. ``uniform_grad`` promises that the rows only
    enter a sum or mean (see :func:`tase_loss.ops.contrastive_rows_fused`).
    """
    arguments = (queries, keys, positive_index, self_index, inverse_temperature, weight)
    logits = queries.shape[0] * keys.shape[0]
    if is_applicable(queries, keys) and (queries.device.type != "cpu" or logits > FUSED_ABOVE_ON_CPU):
        return contrastive_rows_fused(*arguments, uniform_grad=uniform_grad)
    if logits > CHUNKED_ABOVE:
        return contrastive_rows_chunked(*arguments, uniform_grad=uniform_grad)
    return contrastive_rows_reference(*arguments)


def contrastive_targets(
    queries: Tensor,
    keys: Tensor,
    target: Tensor,
    self_index: Tensor,
    inverse_temperature: Tensor,
    weight: Tensor,
    pair_weight: Optional[Tensor] = None,
) -> Tensor:
    """Weighted per-row losses against target distributions, ``(M,)``, unvalidated.

    The multi-positive sibling of :func:`contrastive_rows`; the arguments follow
    :func:`tase_loss.reference.contrastive_targets_reference`. It always runs the
    materialized reference: the fused op takes one positive index per row, so it
    covers this only by repeating each row once per positive (see ``docs/ood.md``).
    """
    loss, _ = contrastive_targets_reference(
        queries, keys, target, self_index, inverse_temperature, weight, pair_weight
    )
    return loss


def weighted_reduce(
    weighted_loss: Tensor,
    weight: Optional[Tensor],
    reduction: str,
    across_ranks: bool = False,
) -> Tensor:
    """Reduce per-sample losses that already carry their weights.

    Args:
        weighted_loss: ``(M,)`` values ``w_a * l_a``.
        weight: ``(M,)`` weights ``w_a``, or ``None`` for unit weights.
        reduction: ``"mean"`` gives ``sum(w l) / sum(w)``, ``"sum"`` gives
            ``sum(w l)`` and ``"none"`` returns ``weighted_loss`` itself.
        across_ranks: sum numerator and denominator over all processes of the
            default group (with gradients, see :mod:`tase_loss.distributed`), so that
            every rank returns the loss of the global batch. ``"none"`` stays local.

    Returns:
        A scalar, or ``(M,)`` for ``reduction="none"``.

    Raises:
        ValueError: if ``reduction="mean"``, ``across_ranks`` and the weights sum to
            zero over all ranks (raised on every rank alike).
    """
    if reduction == "none":
        return weighted_loss
    total = weighted_loss.sum()
    if reduction == "sum":
        return distributed.all_reduce_sum(total) if across_ranks else total
    denominator = weighted_loss.new_tensor(weighted_loss.shape[0]) if weight is None else weight.sum()
    if across_ranks:
        # One collective for both sums; the denominator keeps its gradient because
        # every rank's weights enter every rank's loss through it.
        total, denominator = distributed.all_reduce_sum(
            torch.stack([total, denominator.to(total.dtype)])
        ).unbind()
        if not bool(denominator > 0):
            raise ValueError("weight sums to 0 over all ranks, so reduction='mean' is undefined")
    return total / denominator.to(total.dtype)


def _per_row(value: Optional[TemperatureLike], batch_size: int, like: Tensor) -> Optional[Tensor]:
    """A float or ``(B,)`` tensor as a ``(B,)`` tensor in the accumulation dtype."""
    if value is None:
        return None
    dtype = accumulation_dtype(like.dtype)
    if isinstance(value, Tensor):
        return value.to(dtype)
    return torch.full((batch_size,), float(value), dtype=dtype, device=like.device)


def _check_common(
    temperature: TemperatureLike,
    weight: Optional[Tensor],
    reduction: str,
    like: Tensor,
    gather_distributed: bool = False,
) -> None:
    check_reduction(reduction)
    check_temperature(temperature, like.shape[0], like.device)
    if weight is not None:
        # Across ranks only the global weight sum must be positive (checked after the
        # all-reduce); one rank's weights may all be zero.
        local_reduction = "none" if gather_distributed else reduction
        check_weight(weight, like.shape[0], like.device, local_reduction)


def reduce_per_sample(
    per_sample: Tensor, weight: Optional[Tensor], reduction: str, across_ranks: bool = False
) -> Tensor:
    """Validate ``weight`` and ``reduction``, weight the ``(B,)`` losses and reduce them.

    The entry for losses that come per sample without weights (BYOL, SimSiam, the
    domain loss); :func:`weighted_reduce` is the step after it.

    Example:
        >>> import torch
        >>> reduce_per_sample(torch.tensor([1.0, 3.0]), torch.tensor([1.0, 3.0]), "mean")
        tensor(2.5000)
    """
    check_reduction(reduction)
    if weight is None:
        return weighted_reduce(per_sample, None, reduction, across_ranks)
    # Across ranks only the global weight sum must be positive (weighted_reduce checks it).
    check_weight(weight, per_sample.shape[0], per_sample.device, "none" if across_ranks else reduction)
    weight = weight.to(per_sample.dtype)
    return weighted_reduce(weight * per_sample, weight, reduction, across_ranks)
