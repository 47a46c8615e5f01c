"""The weighted reduction and the checks shared by the contrastive losses.

The rows themselves and their one dispatch live in :mod:`tase_loss.ops`
(:func:`~tase_loss.ops.contrastive_rows`, :func:`~tase_loss.ops.contrastive_targets` and
the thresholds :data:`~tase_loss.ops.CHUNKED_ABOVE`, :data:`~tase_loss.ops.FUSED_ABOVE_ON_CPU`);
they are imported here for :mod:`tase_loss.functional`'s public names.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from tase_loss import distributed
from tase_loss._numerics import accumulation_dtype
from tase_loss._validation import TemperatureLike, check_reduction, check_temperature, check_weight
from tase_loss.ops import CHUNKED_ABOVE, FUSED_ABOVE_ON_CPU, contrastive_rows, contrastive_targets

__all__ = [
    "CHUNKED_ABOVE",
    "FUSED_ABOVE_ON_CPU",
    "contrastive_rows",
    "contrastive_targets",
    "reduce_per_sample",
    "weighted_reduce",
]


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
