"""The materialized pure-PyTorch rows: the ``(M, N)`` logit matrix, then cross-entropy.

This is the path that always works: the fallback for small problems when the compiled
extension is not built, the neighbour of the test oracles and the baseline of the
benchmarks. :func:`contrastive_rows_reference` is as lean as six lines of plain PyTorch
NT-Xent: one GEMM of temperature-scaled queries, the self-exclusion written in place
(``O(M)``, no ``(M, N)`` mask), one fused ``F.cross_entropy``; its memory grows as
``M * N`` (:mod:`tase_loss.ops.chunked` computes the same rows in row blocks).

The contract (shared with ``torch.ops.tase_loss.contrastive_forward``)::

    logits[a, k] = <queries[a], keys[k]> * inverse_temperature[a]
    lse[a]       = log sum_{k != self_index[a]} exp(logits[a, k])
    loss[a]      = weight[a] * (lse[a] - logits[a, positive_index[a]])

``self_index[a] == -1`` means that row excludes nothing from its denominator.

:func:`contrastive_targets_reference` generalizes the positive to a target
distribution ``pi[a, k]`` over the columns (several positives, soft targets) and
lets an optional per-pair weight ``r[a, k]`` scale each column inside the
denominator; a one-hot ``pi`` and unit ``r`` give :func:`contrastive_rows_reference`
exactly. Both compute their logits with :func:`tase_loss.ops._common.scaled_logits`.
"""

from __future__ import annotations

from typing import Optional, Union

import torch
import torch.nn.functional as F
from torch import Tensor

from tase_loss.ops._common import scaled_logits

__all__ = ["contrastive_rows_reference", "contrastive_targets_reference"]


def contrastive_rows_reference(
    queries: Tensor,
    keys: Tensor,
    positive_index: Tensor,
    self_index: Tensor,
    inverse_temperature: Tensor,
    weight: Tensor,
    *,
    return_lse: bool = False,
) -> Union[Tensor, tuple[Tensor, Tensor]]:
    """Weighted per-row softmax cross-entropy of scaled similarities, materialized.

    Inputs are assumed valid (the public functions validate them). The similarity
    matrix is computed in the inputs' dtype (so fp16/bf16 use the fast matmul) and
    everything after it in float32, or float64 for float64 inputs.

    Args:
        queries: ``(M, D)`` anchor embeddings, usually L2-normalized.
        keys: ``(N, D)`` candidate embeddings, same dtype and device as ``queries``.
        positive_index: ``(M,)`` int64, the column of each row's positive.
        self_index: ``(M,)`` int64, the column each row leaves out of its
            denominator, or ``-1`` for none.
        inverse_temperature: ``(M,)`` floating, ``1 / t_a``.
        weight: ``(M,)`` floating, ``w_a``.
        return_lse: also return the ``(M,)`` log-sum-exp of each row (one more pass).

    Returns:
        ``(M,)`` ``loss[a] = w_a * l_a`` in the accumulation dtype, or ``(loss, lse)``.

    Example:
        >>> import torch
        >>> q = torch.nn.functional.normalize(torch.randn(4, 8), dim=1)
        >>> rows = torch.arange(4)
        >>> loss = contrastive_rows_reference(q, q, rows.roll(1), rows, torch.full((4,), 5.0), torch.ones(4))
        >>> loss.shape
        torch.Size([4])
    """
    logits = scaled_logits(queries, keys, self_index, inverse_temperature)
    loss = weight.to(logits.dtype) * F.cross_entropy(logits, positive_index, reduction="none")
    if return_lse:
        return loss, torch.logsumexp(logits, dim=1)
    return loss


def contrastive_targets_reference(
    queries: Tensor,
    keys: Tensor,
    target: Tensor,
    self_index: Tensor,
    inverse_temperature: Tensor,
    weight: Tensor,
    pair_weight: Optional[Tensor] = None,
) -> tuple[Tensor, Tensor]:
    """Per-row cross-entropy against a target distribution over the columns.

    The multi-positive / per-pair-weight generalization of
    :func:`contrastive_rows_reference`::

        lse[a]  = log sum_{k != self_index[a]} r[a, k] * exp(logits[a, k])
        loss[a] = weight[a] * sum_k target[a, k] * (lse[a] - logits[a, k])

    ``target[a] = one_hot(positive_index[a])`` with ``r = 1`` is the single-positive
    contract; a target spread uniformly over the samples sharing ``a``'s label is
    SupCon's ``L_out``; a softmax of another network's similarities is relational
    distillation. Row ``a`` is the ``target``-weighted sum of single-positive rows,
    one per column with ``target[a, k] > 0``.

    Inputs are assumed valid: ``target >= 0`` and zero on each row's
    ``self_index`` column, ``pair_weight >= 0`` with at least one positive entry
    left in every row's denominator. ``target`` and ``pair_weight`` are constants:
    they receive no gradient.

    Args:
        queries: ``(M, D)`` anchor embeddings.
        keys: ``(N, D)`` candidate embeddings, same dtype and device.
        target: ``(M, N)`` non-negative attraction strengths ``pi[a, k]``.
        self_index: ``(M,)`` int64, the column each row leaves out, or ``-1``.
        inverse_temperature: ``(M,)`` floating, ``1 / t_a``.
        weight: ``(M,)`` floating, ``w_a``.
        pair_weight: ``(M, N)`` non-negative repulsion strengths ``r[a, k]`` in the
            denominator, or ``None`` for ones.

    Returns:
        ``(loss, lse)``: both ``(M,)`` in the accumulation dtype.

    Example:
        >>> import torch
        >>> q = torch.nn.functional.normalize(torch.randn(4, 8), dim=1)
        >>> rows = torch.arange(4)
        >>> one_hot = torch.nn.functional.one_hot(rows.roll(1), 4).float()
        >>> args = (rows, torch.full((4,), 5.0), torch.ones(4))
        >>> multi, _ = contrastive_targets_reference(q, q, one_hot, *args)
        >>> single = contrastive_rows_reference(q, q, rows.roll(1), *args)
        >>> torch.allclose(multi, single)
        True
    """
    logits = scaled_logits(queries, keys, self_index, inverse_temperature)
    target = target.detach().to(logits.dtype)
    denominator = logits
    if pair_weight is not None:
        denominator = logits + pair_weight.detach().to(logits.dtype).log()
    lse = torch.logsumexp(denominator, dim=1)
    # Columns without attraction contribute nothing, even where the logit is -inf.
    attraction = torch.where(target > 0, target * logits, torch.zeros_like(logits)).sum(dim=1)
    loss = weight.to(logits.dtype) * (target.sum(dim=1) * lse - attraction)
    return loss, lse
