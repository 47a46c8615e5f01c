"""The numeric rules every path shares: the accumulation dtype and safe row normalization."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """float64 stays float64; every other floating dtype accumulates in float32.

    Example:
        >>> accumulation_dtype(torch.bfloat16), accumulation_dtype(torch.float64)
        (torch.float32, torch.float64)
    """
    return torch.float64 if dtype == torch.float64 else torch.float32


def unit_rows(rows: Tensor, dtype: torch.dtype | None = None) -> Tensor:
    """L2-normalize finite, non-zero rows without overflow or underflow.

    Each row is first divided by its largest absolute entry (a constant for autograd:
    normalization is scale-invariant, so the gradient is unchanged), which keeps the
    squared norm in ``[1, D]`` for rows of ``1e20`` in float32 or ``1e300`` in float64.
    The work is done in the accumulation dtype; the result has ``dtype`` (default: the
    input's).

    Example:
        >>> unit_rows(torch.tensor([[3e20, 4e20]]))
        tensor([[0.6000, 0.8000]])
    """
    accumulate = accumulation_dtype(rows.dtype)
    wide = rows.to(accumulate)
    scale = wide.detach().abs().amax(dim=1, keepdim=True)
    return F.normalize(wide / scale, dim=1).to(rows.dtype if dtype is None else dtype)
