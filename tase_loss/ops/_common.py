"""What the pure-PyTorch implementations share: the scaled logits with each row's self left out."""

from __future__ import annotations

import torch
from torch import Tensor

from tase_loss._numerics import accumulation_dtype

__all__ = ["scaled_logits"]


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
