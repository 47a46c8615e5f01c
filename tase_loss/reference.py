"""Pure-PyTorch temperature-scaled softmax cross-entropy over rows.

This is the path that always works: the fallback when the compiled extension is not
built, the neighbour of the test oracles and the baseline of the benchmarks. Two forms:

- :func:`contrastive_rows_reference` materializes the ``(M, N)`` logit matrix, as lean
  as six lines of plain PyTorch NT-Xent: one GEMM of temperature-scaled queries, the
  self-exclusion written in place (``O(M)``, no ``(M, N)`` mask), one fused
  ``F.cross_entropy``. Its memory grows as ``M * N``.
- :func:`contrastive_rows_chunked` computes the same rows block by block with one
  log-sum-exp per row kept, so memory grows as ``(M + N) D`` (it is
  :mod:`tase_loss.chunked`'s autograd function).

The contract (shared with ``torch.ops.tase_loss.contrastive_forward``)::

    logits[a, k] = <queries[a], keys[k]> * inverse_temperature[a]
    lse[a]       = log sum_{k != self_index[a]} exp(logits[a, k])
    loss[a]      = weight[a] * (lse[a] - logits[a, positive_index[a]])

``self_index[a] == -1`` means that row excludes nothing from its denominator.

:func:`contrastive_targets_reference` generalizes the positive to a target
distribution ``pi[a, k]`` over the columns (several positives, soft targets) and
lets an optional per-pair weight ``r[a, k]`` scale each column inside the
denominator; a one-hot ``pi`` and unit ``r`` give :func:`contrastive_rows_reference`
exactly. Both compute their logits with the same helper.
"""

from __future__ import annotations

from typing import Optional, Union

import torch
import torch.nn.functional as F
from torch import Tensor

from tase_loss._numerics import accumulation_dtype

__all__ = ["contrastive_rows_chunked", "contrastive_rows_reference", "contrastive_targets_reference"]


def scaled_logits(queries: Tensor, keys: Tensor, self_index: Tensor, inverse_temperature: Tensor) -> Tensor:
    """``(M, N)`` logits ``<q_a, k_k> / t_a`` in the accumulation dtype, ``-inf`` at each row's self.

    float32/float64 inputs scale the ``(M, D)`` queries before the GEMM (no ``(M, N)``
    pass); half inputs run the GEMM in their dtype and scale after it in float32, so the
    temperature is not rounded to 8 bits. The self column is set in place, ``O(M)``.
    """
    accumulate = accumulation_dtype(queries.dtype)
    inverse = inverse_temperature.to(accumulate)[:, None]
    if queries.dtype == accumulate:
        logits = (queries * inverse) @ keys.T
    else:
        logits = (queries @ keys.T).to(accumulate) * inverse
    # Add -inf at each row's self column (0 where a row has none, -1): an in-place
    # scatter_add_ whose backward passes the gradient through unchanged, and no saved
    # tensor of the GEMM or the scaling is this one, so autograd is exact.
    column = self_index.clamp(min=0)[:, None]
    offset = torch.where((self_index >= 0)[:, None], float("-inf"), 0.0).to(logits.dtype)
    return logits.scatter_add_(1, column, offset)


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


def contrastive_rows_chunked(
    queries: Tensor,
    keys: Tensor,
    positive_index: Tensor,
    self_index: Tensor,
    inverse_temperature: Tensor,
    weight: Tensor,
    *,
    uniform_grad: bool = False,
    block_rows: Optional[int] = None,
) -> Tensor:
    """:func:`contrastive_rows_reference`'s rows in row blocks: memory linear in ``M + N``.

    Keeps one log-sum-exp per row. With ``uniform_grad`` (the caller's promise that the
    rows enter only a sum or mean) the gradient for a unit ``grad_loss`` is computed
    block by block during the forward and the backward scales it (three GEMMs, as
    the materialized path); otherwise the backward recomputes each block (four).

    Args:
        block_rows: rows per block; ``None`` picks about 16 Mi logits per block.

    Returns:
        ``(M,)`` ``w_a * l_a`` in the accumulation dtype.

    Example:
        >>> import torch
        >>> q = torch.nn.functional.normalize(torch.randn(6, 8), dim=1)
        >>> rows = torch.arange(6)
        >>> args = (q, q, rows.roll(3), rows, torch.full((6,), 5.0), torch.ones(6))
        >>> torch.allclose(contrastive_rows_chunked(*args, block_rows=4), contrastive_rows_reference(*args))
        True
    """
    from tase_loss.chunked import ChunkedRows

    return ChunkedRows.apply(
        queries, keys, positive_index, self_index, inverse_temperature, weight, uniform_grad, block_rows
    )


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
