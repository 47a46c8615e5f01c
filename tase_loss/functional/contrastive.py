"""NT-Xent (SimCLR), its multi-positive form, and MoCo's InfoNCE, with per-sample t and w."""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from tase_loss import distributed
from tase_loss._numerics import unit_rows
from tase_loss._validation import TemperatureLike, check_embeddings, check_same_layout, check_same_shape
from tase_loss.functional.rows import _check_common, _per_row, contrastive_rows, contrastive_targets, weighted_reduce

__all__ = ["moco_loss", "moco_loss_and_all_keys", "nt_xent_loss", "nt_xent_target_loss"]


def _two_views(
    out0: Tensor,
    out1: Tensor,
    temperature: TemperatureLike,
    weight: Optional[Tensor],
    reduction: str,
    gather_distributed: bool = False,
) -> tuple[Tensor, Tensor, Optional[Tensor]]:
    """Validate a two-view batch; return its unit rows and per-row temperature and weight.

    Returns:
        ``(embeddings, inverse_temperature, row_weight)``: ``(2B, D)`` unit rows, first
        view first; ``(2B,)`` ``1 / t``; ``(2B,)`` weights or ``None`` for unit weights.
        Sample ``b``'s temperature and weight apply to both of its views.
    """
    check_embeddings("out0", out0)
    check_embeddings("out1", out1)
    check_same_shape("out1", out1, "out0", out0)
    batch_size = out0.shape[0]
    if batch_size < (1 if gather_distributed else 2):
        raise ValueError(
            f"out0 holds {batch_size} sample(s); a contrast needs at least 2 (no negatives)"
            + (", and every rank at least 1" if gather_distributed else "")
        )
    _check_common(temperature, weight, reduction, out0, gather_distributed)
    embeddings = unit_rows(torch.cat([out0, out1]))
    inverse_temperature = 1.0 / _per_row(temperature, batch_size, out0).repeat(2)
    row_weight = _per_row(weight, batch_size, out0)
    return embeddings, inverse_temperature, None if row_weight is None else row_weight.repeat(2)


def nt_xent_loss(
    out0: Tensor,
    out1: Tensor,
    temperature: TemperatureLike = 0.2,
    weight: Optional[Tensor] = None,
    reduction: str = "mean",
    *,
    gather_distributed: bool = False,
) -> Tensor:
    """NT-Xent (SimCLR) with a per-sample temperature and a per-sample weight.

    Both views form ``M = 2B`` anchors; anchor ``a``'s positive is its other view and
    its negatives are the other ``2B - 2`` embeddings. Sample ``b``'s temperature and
    weight apply to both of its views.

    With ``gather_distributed=True`` under ``torch.distributed``, the batch is the
    union of all ranks' batches: this rank's ``2B_r`` embeddings are the anchors, the
    embeddings of every rank are the candidates (gathered with gradients), and the
    weighted mean divides by the sum of the weights of all ranks. Every rank returns
    the same value, the loss of the global batch; see :mod:`tase_loss.distributed`
    for the gradient convention (exact after DDP's averaging).

    Args:
        out0: ``(B, D)`` embeddings of the first view; normalized inside.
        out1: ``(B, D)`` embeddings of the second view.
        temperature: a float, or a ``(B,)`` tensor of per-sample temperatures ``> 0``
            (it may require grad).
        weight: ``(B,)`` per-sample weights ``>= 0``, or ``None`` for unit weights.
        reduction: ``"mean"`` (weighted mean over the ``2B`` anchors), ``"sum"`` or
            ``"none"`` (the ``(2B,)`` vector ``w_a l_a``, first view's anchors first;
            this rank's anchors only when gathering).
        gather_distributed: take negatives from all ranks and reduce over all ranks
            (the identity without a process group). Ranks may hold different ``B``.

    Returns:
        The loss: a scalar, or ``(2B,)`` for ``reduction="none"``.

    Example:
        >>> import torch
        >>> out0, out1 = torch.randn(8, 16), torch.randn(8, 16)
        >>> loss = nt_xent_loss(out0, out1, temperature=torch.full((8,), 0.2))
        >>> torch.allclose(loss, nt_xent_loss(out0, out1, temperature=0.2))
        True
    """
    embeddings, inverse_temperature, row_weight = _two_views(
        out0, out1, temperature, weight, reduction, gather_distributed
    )
    batch_size = out0.shape[0]
    candidates, offset = (
        distributed.all_gather_rows(embeddings) if gather_distributed else (embeddings, 0)
    )
    if candidates.shape[0] < 4:
        raise ValueError(
            f"all ranks together hold {candidates.shape[0] // 2} sample(s); a contrast "
            "needs at least 2 (no negatives)"
        )
    # This rank's anchors sit at rows offset .. offset + 2B - 1 of the candidates.
    rows = torch.arange(2 * batch_size, device=out0.device)
    positive_index = rows.roll(batch_size) + offset
    weighted_loss = contrastive_rows(
        embeddings,
        candidates,
        positive_index,
        rows + offset,
        inverse_temperature,
        torch.ones_like(inverse_temperature) if row_weight is None else row_weight,
        uniform_grad=reduction != "none",
    )
    return weighted_reduce(weighted_loss, row_weight, reduction, across_ranks=gather_distributed)


def nt_xent_target_loss(
    out0: Tensor,
    out1: Tensor,
    target: Tensor,
    temperature: TemperatureLike = 0.2,
    weight: Optional[Tensor] = None,
    reduction: str = "mean",
    *,
    pair_weight: Optional[Tensor] = None,
) -> Tensor:
    """NT-Xent against a target distribution over the ``2B`` views (several positives).

    The two-view scaffold of :func:`nt_xent_loss` (both views are anchors, each
    excludes itself, sample ``b``'s temperature and weight apply to both its views)
    with row ``a``'s positive replaced by ``target[a]``, and optional per-pair
    repulsion strengths in the denominator (see
    :func:`tase_loss.ops.reference.contrastive_targets_reference`). A target that is
    one-hot on each row's other view is :func:`nt_xent_loss`; labels give SupCon.

    Args:
        out0: ``(B, D)`` embeddings of the first view; normalized inside.
        out1: ``(B, D)`` embeddings of the second view.
        target: ``(2B, 2B)`` non-negative attraction strengths, rows and columns ordered
            ``[out0; out1]``; the diagonal is ignored (each anchor excludes itself).
            Constant: no gradient flows into it.
        temperature: a float or a ``(B,)`` tensor of per-sample temperatures.
        weight: ``(B,)`` per-sample weights ``>= 0``, or ``None``.
        reduction: ``"mean"``, ``"sum"`` or ``"none"`` (``(2B,)``, ``w_a l_a``).
        pair_weight: ``(2B, 2B)`` non-negative repulsion strengths, or ``None`` for ones.

    Returns:
        The loss: a scalar, or ``(2B,)`` for ``reduction="none"``.

    Example:
        >>> import torch
        >>> out0, out1 = torch.randn(4, 8), torch.randn(4, 8)
        >>> other_view = torch.eye(8).roll(4, dims=1)
        >>> torch.allclose(nt_xent_target_loss(out0, out1, other_view), nt_xent_loss(out0, out1))
        True
    """
    embeddings, inverse_temperature, row_weight = _two_views(out0, out1, temperature, weight, reduction)
    views = embeddings.shape[0]
    for name, matrix in (("target", target), ("pair_weight", pair_weight)):
        if matrix is None:
            continue
        if not isinstance(matrix, Tensor) or tuple(matrix.shape) != (views, views):
            shape = tuple(matrix.shape) if isinstance(matrix, Tensor) else type(matrix).__name__
            raise ValueError(f"{name} must be a ({views}, {views}) tensor, got {shape}")
        if matrix.device != out0.device:
            raise ValueError(f"{name} is on {matrix.device} but out0 is on {out0.device}")
    rows = torch.arange(views, device=out0.device)
    weighted_loss = contrastive_targets(
        embeddings,
        embeddings,
        target.index_put((rows, rows), target.new_zeros(())),
        rows,
        inverse_temperature,
        torch.ones_like(inverse_temperature) if row_weight is None else row_weight,
        pair_weight,
    )
    return weighted_reduce(weighted_loss, row_weight, reduction)


def moco_loss(
    queries: Tensor,
    keys: Tensor,
    queue: Optional[Tensor] = None,
    temperature: TemperatureLike = 0.2,
    weight: Optional[Tensor] = None,
    reduction: str = "mean",
    *,
    gather_distributed: bool = False,
) -> Tensor:
    """InfoNCE of MoCo: query ``b``'s positive is key ``b``; the rest are negatives.

    The candidates are ``[keys; queue]``: the batch's other keys count as negatives
    (as in MoCo v3) next to the queue of earlier keys (MoCo v2). With a queue of
    tens of thousands of keys the ``B - 1`` in-batch negatives change little, and
    the loss stays one call of the fused op.

    With ``gather_distributed=True`` the keys of all ranks are gathered (with
    gradients, should they carry any) and serve as negatives of this rank's queries,
    and the weighted mean runs over all ranks' queries, as for :func:`nt_xent_loss`.
    The queue, if any, is expected to be the same on every rank.

    Args:
        queries: ``(B, D)`` query embeddings (the anchors); normalized inside.
        keys: ``(B, D)`` key embeddings (momentum encoder), same dtype and device.
        queue: ``(S, D)`` earlier keys, or ``None``; normalized inside.
        temperature: a float or a ``(B,)`` tensor of per-query temperatures ``> 0``.
        weight: ``(B,)`` per-query weights ``>= 0``, or ``None``.
        reduction: ``"mean"``, ``"sum"`` or ``"none"`` (the ``(B,)`` vector ``w_b l_b``).
        gather_distributed: take all ranks' keys as negatives and reduce over all
            ranks (the identity without a process group).

    Returns:
        The loss: a scalar, or ``(B,)`` for ``reduction="none"``.

    Example:
        >>> import torch
        >>> q, k, queue = torch.randn(8, 16), torch.randn(8, 16), torch.randn(64, 16)
        >>> moco_loss(q, k, queue, temperature=0.2).shape
        torch.Size([])
    """
    return moco_loss_and_all_keys(
        queries, keys, queue, temperature, weight, reduction, gather_distributed=gather_distributed
    )[0]


def moco_loss_and_all_keys(
    queries: Tensor,
    keys: Tensor,
    queue: Optional[Tensor] = None,
    temperature: TemperatureLike = 0.2,
    weight: Optional[Tensor] = None,
    reduction: str = "mean",
    *,
    gather_distributed: bool = False,
) -> tuple[Tensor, Tensor]:
    """:func:`moco_loss` and the keys of all ranks in rank order (``keys`` itself alone).

    A MoCo queue under DDP enqueues every rank's keys; returning the keys the loss
    gathered anyway spares a second all-gather.

    Returns:
        ``(loss, all_keys)`` with ``all_keys`` of shape ``(sum_r B_r, D)``.

    Example:
        >>> import torch
        >>> q, k = torch.randn(8, 16), torch.randn(8, 16)
        >>> loss, all_keys = moco_loss_and_all_keys(q, k, gather_distributed=True)
        >>> all_keys.shape                                     # one process: the keys
        torch.Size([8, 16])
    """
    # Every local check runs before the collective: a rank raising after it would
    # leave the others waiting in the next one.
    check_embeddings("queries", queries)
    check_embeddings("keys", keys)
    check_same_shape("keys", keys, "queries", queries)
    if queue is not None:
        check_embeddings("queue", queue, minimum_rows=0)
        check_same_layout("queue", queue, "queries", queries)
    batch_size = queries.shape[0]
    _check_common(temperature, weight, reduction, queries, gather_distributed)
    gathered, offset = distributed.all_gather_rows(keys) if gather_distributed else (keys, 0)
    num_candidates = gathered.shape[0] + (0 if queue is None else queue.shape[0])
    if batch_size < 1 or num_candidates < 2:
        raise ValueError(
            f"queries holds {batch_size} sample(s), the keys (all ranks) {gathered.shape[0]} "
            f"and the queue {num_candidates - gathered.shape[0]}; a contrast needs at least "
            "one negative"
        )

    # With gathering, this rank's positives are its own keys at rows offset .. offset + B - 1.
    candidates = gathered if queue is None else torch.cat([gathered, queue])
    rows = torch.arange(batch_size, device=queries.device)
    inverse_temperature = 1.0 / _per_row(temperature, batch_size, queries)
    row_weight = _per_row(weight, batch_size, queries)
    weighted_loss = contrastive_rows(
        unit_rows(queries),
        unit_rows(candidates),
        rows + offset,
        torch.full_like(rows, -1),
        inverse_temperature,
        torch.ones_like(inverse_temperature) if row_weight is None else row_weight,
        uniform_grad=reduction != "none",
    )
    loss = weighted_reduce(weighted_loss, row_weight, reduction, across_ranks=gather_distributed)
    return loss, gathered
