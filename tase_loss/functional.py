"""The TASE losses as functions: validate, compute per-row losses, reduce.

Every contrastive loss here is one weighted, per-anchor-temperature softmax
cross-entropy over rows (see :mod:`tase_loss.reference` for the exact contract):

    l_a = -s_{a,p(a)} / t_a + log sum_{k != a} exp(s_{a,k} / t_a)
    L   = sum_a w_a l_a / sum_a w_a            (reduction "mean")

With one temperature and unit weights, :func:`nt_xent_loss` is NT-Xent (SimCLR).
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from tase_loss import distributed
from tase_loss._numerics import accumulation_dtype, unit_rows
from tase_loss._validation import (
    TemperatureLike,
    check_embeddings,
    check_reduction,
    check_same_layout,
    check_same_shape,
    check_temperature,
    check_weight,
)
from tase_loss.ops import contrastive_rows_fused, is_applicable
from tase_loss.reference import (
    contrastive_rows_chunked,
    contrastive_rows_reference,
    contrastive_targets_reference,
)

__all__ = [
    "byol_loss",
    "contrastive_rows",
    "contrastive_targets",
    "moco_loss",
    "moco_loss_and_all_keys",
    "nt_xent_loss",
    "nt_xent_target_loss",
    "simsiam_loss",
    "weighted_reduce",
]


CHUNKED_ABOVE = 1 << 26
"""Logits (``M * N``) above which the pure-PyTorch path runs in row blocks (256 MiB of
float32 logits; measured in benchmarks/README.md)."""


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
       extension is built and has a kernel for the device;
    2. the chunked pure-PyTorch rows (:func:`tase_loss.reference.contrastive_rows_chunked`,
       memory linear in ``M + N``) when ``M * N`` exceeds :data:`CHUNKED_ABOVE`;
    3. the materialized pure-PyTorch rows otherwise.

    All agree within the dtype's tolerance. ``uniform_grad`` promises that the rows only
    enter a sum or mean (see :func:`tase_loss.ops.contrastive_rows_fused`).
    """
    arguments = (queries, keys, positive_index, self_index, inverse_temperature, weight)
    if is_applicable(queries, keys):
        return contrastive_rows_fused(*arguments, uniform_grad=uniform_grad)
    if queries.shape[0] * keys.shape[0] > CHUNKED_ABOVE:
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
    :func:`tase_loss.reference.contrastive_targets_reference`). A target that is
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


def _cosine_per_sample(prediction: Tensor, target: Tensor) -> Tensor:
    check_embeddings("prediction", prediction)
    check_embeddings("target", target)
    check_same_shape("target", target, "prediction", prediction)
    # Stop-gradient on the target, as BYOL and SimSiam prescribe.
    dtype = accumulation_dtype(prediction.dtype)
    return (unit_rows(prediction, dtype) * unit_rows(target.detach(), dtype)).sum(dim=1)


def _reduce_regression(
    per_sample: Tensor, weight: Optional[Tensor], reduction: str, across_ranks: bool
) -> Tensor:
    check_reduction(reduction)
    if weight is None:
        return weighted_reduce(per_sample, None, reduction, across_ranks)
    local_reduction = "none" if across_ranks else reduction  # see _check_common
    check_weight(weight, per_sample.shape[0], per_sample.device, local_reduction)
    weight = weight.to(per_sample.dtype)
    return weighted_reduce(weight * per_sample, weight, reduction, across_ranks)


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
    return _reduce_regression(
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
    return _reduce_regression(
        -_cosine_per_sample(prediction, target), weight, reduction, gather_distributed
    )
