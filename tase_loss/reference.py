"""Pure-PyTorch temperature-scaled softmax cross-entropy over rows.

This is the path that always works: the fallback when the compiled extension is not
built, the neighbour of the test oracles and the baseline of the benchmarks. It
materializes the full ``(M, N)`` logit matrix, so its memory grows as ``M * N``; the
fused op in ``csrc/`` computes the same rows tile by tile.

The contract (shared with ``torch.ops.tase_loss.contrastive_forward``)::

    logits[a, k] = <queries[a], keys[k]> * inverse_temperature[a]
    lse[a]       = log sum_{k != self_index[a]} exp(logits[a, k])
    loss[a]      = weight[a] * (lse[a] - logits[a, positive_index[a]])

``self_index[a] == -1`` means that row excludes nothing from its denominator.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["contrastive_rows_reference"]


def contrastive_rows_reference(
    queries: Tensor,
    keys: Tensor,
    positive_index: Tensor,
    self_index: Tensor,
    inverse_temperature: Tensor,
    weight: Tensor,
) -> tuple[Tensor, Tensor]:
    """Weighted per-row softmax cross-entropy of scaled similarities, materialized.

    Inputs are assumed valid (the public functions validate them). The similarity
    matrix is computed in the inputs' dtype (so fp16/bf16 use the fast matmul) and
    everything after it, scaling and log-sum-exp included, in float32 or float64.

    Args:
        queries: ``(M, D)`` anchor embeddings, usually L2-normalized.
        keys: ``(N, D)`` candidate embeddings, same dtype and device as ``queries``.
        positive_index: ``(M,)`` int64, the column of each row's positive.
        self_index: ``(M,)`` int64, the column each row leaves out of its
            denominator, or ``-1`` for none.
        inverse_temperature: ``(M,)`` floating, ``1 / t_a``.
        weight: ``(M,)`` floating, ``w_a``.

    Returns:
        ``(loss, lse)``: both ``(M,)`` in the accumulation dtype (float64 for float64
        inputs, else float32); ``loss[a] = w_a * l_a``.

    Example:
        >>> import torch
        >>> q = torch.nn.functional.normalize(torch.randn(4, 8), dim=1)
        >>> rows = torch.arange(4)
        >>> loss, lse = contrastive_rows_reference(
        ...     q, q, rows.roll(1), rows, torch.full((4,), 5.0), torch.ones(4))
        >>> loss.shape
        torch.Size([4])
    """
    accumulate = torch.float64 if queries.dtype == torch.float64 else torch.float32
    logits = (queries @ keys.T).to(accumulate) * inverse_temperature.to(accumulate)[:, None]
    # A column index never equals -1, so rows with self_index -1 mask nothing.
    columns = torch.arange(keys.shape[0], device=keys.device)
    logits = logits.masked_fill(columns[None, :] == self_index[:, None], float("-inf"))
    lse = torch.logsumexp(logits, dim=1)
    positive_logit = logits.gather(1, positive_index[:, None]).squeeze(1)
    return weight.to(accumulate) * (lse - positive_logit), lse
