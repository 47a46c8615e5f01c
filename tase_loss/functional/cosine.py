"""BYOL's and SimSiam's per-sample cosine losses, weighted like the contrastive ones."""

from __future__ import annotations

from typing import Optional

from torch import Tensor

from tase_loss._numerics import accumulation_dtype, unit_rows
from tase_loss._validation import check_embeddings, check_same_shape
from tase_loss.functional.rows import reduce_per_sample

__all__ = ["byol_loss", "simsiam_loss"]


def _cosine_per_sample(prediction: Tensor, target: Tensor) -> Tensor:
    check_embeddings("prediction", prediction)
    check_embeddings("target", target)
    check_same_shape("target", target, "prediction", prediction)
    # Stop-gradient on the target, as BYOL and SimSiam prescribe.
    dtype = accumulation_dtype(prediction.dtype)
    return (unit_rows(prediction, dtype) * unit_rows(target.detach(), dtype)).sum(dim=1)


def byol_loss(
    prediction: Tensor,
    target: Tensor,
    weight: Optional[Tensor] = None,
    reduction: str = "mean",
    *,
    gather_distributed: bool = False,
) -> Tensor:
    """BYOL's per-sample ``2 - 2 cos(p, z)``, weighted like the contrastive losses.

    Args:
        prediction: ``(B, D)`` online predictor outputs.
        target: ``(B, D)`` target projections; no gradient flows into them.
        weight: ``(B,)`` per-sample weights ``>= 0`` (e.g. from
            :class:`tase_loss.SampleReweighter`), or ``None``.
        reduction: ``"mean"`` (``sum(w l) / sum(w)``), ``"sum"`` or ``"none"``.
        gather_distributed: reduce over all ranks (the weights of every rank divide
            the mean; see :func:`weighted_reduce`); nothing else is gathered.

    Returns:
        The loss: a scalar, or ``(B,)`` for ``reduction="none"``.

    Example:
        >>> import torch
        >>> p, z = torch.randn(8, 16), torch.randn(8, 16)
        >>> float(byol_loss(p, p)) < 1e-6
        True
    """
    return reduce_per_sample(
        2.0 - 2.0 * _cosine_per_sample(prediction, target), weight, reduction, gather_distributed
    )


def simsiam_loss(
    prediction: Tensor,
    target: Tensor,
    weight: Optional[Tensor] = None,
    reduction: str = "mean",
    *,
    gather_distributed: bool = False,
) -> Tensor:
    """SimSiam's per-sample ``-cos(p, z)`` with stop-gradient on ``z``, weighted.

    Args:
        prediction: ``(B, D)`` predictor outputs.
        target: ``(B, D)`` projections of the other view; no gradient flows into them.
        weight: ``(B,)`` per-sample weights ``>= 0``, or ``None``.
        reduction: ``"mean"``, ``"sum"`` or ``"none"``.
        gather_distributed: reduce over all ranks, as for :func:`byol_loss`.

    Returns:
        The loss: a scalar, or ``(B,)`` for ``reduction="none"``.

    Example:
        >>> import torch
        >>> p = torch.randn(8, 16)
        >>> round(float(simsiam_loss(p, p)), 4)
        -1.0
    """
    return reduce_per_sample(
        -_cosine_per_sample(prediction, target), weight, reduction, gather_distributed
    )
