"""Linear-memory contrastive rows in pure PyTorch: row blocks, one log-sum-exp per row.

:func:`contrastive_rows_chunked` (its autograd function :class:`ChunkedRows`) computes
:func:`tase_loss.ops.reference.contrastive_rows_reference`'s rows; for a
block of ``R`` rows it forms the ``(R, N)`` logits, keeps the rows' losses and
log-sum-exp and drops the block; memory is ``O((M + N) D + R N)``, never ``M N``. The
gradient of ``sum_a c_a (lse_a - z_a,pos)`` for a block, with ``P`` the softmax and
``dZ = c (P - onehot(pos))``, needs no similarity matrix besides ``dZ``::

    G = dZ K            dQ = invt * G          d invt = sum_d G * Q
    dK += dZ^T (invt * Q)

so a block costs the three GEMMs ``Q K^T``, ``dZ K`` and ``dZ^T Q``. When the caller
promises a uniform ``grad_loss`` the forward computes the gradient for ``grad_loss = 1``
on the way (three GEMMs in all) and the backward scales it; otherwise the backward
recomputes every block (four).
"""

from __future__ import annotations

from typing import Any, Optional

import torch
from torch import Tensor

from tase_loss._numerics import accumulation_dtype
from tase_loss.ops._common import scaled_logits

__all__ = ["ChunkedRows", "contrastive_rows_chunked", "default_block_rows"]

LOGITS_PER_BLOCK = 1 << 22
"""About 16 MiB of float32 logits per block (measured in benchmarks/README.md)."""


def default_block_rows(num_keys: int) -> int:
    """Rows per block: ``LOGITS_PER_BLOCK / N``, at least 64 (the ``dK`` GEMM's inner size).

    Example:
        >>> default_block_rows(16384), default_block_rows(1 << 20)
        (256, 64)
    """
    return max(64, LOGITS_PER_BLOCK // max(num_keys, 1))


def _block_gradient(
    logits: Tensor,
    lse: Tensor,
    coefficient: Tensor,
    positive: Tensor,
    inverse_temperature: Tensor,
    queries: Tensor,
    keys: Tensor,
    key_gradient: Optional[Tensor],
) -> tuple[Tensor, Tensor]:
    """``(dQ, d invt)`` of one block; adds its part of ``dK`` to ``key_gradient`` (in place).

    ``logits`` (the block's, ``-inf`` at self) is overwritten with ``dZ``. ``queries`` and
    ``keys`` are in the accumulation dtype.
    """
    gradient = logits.sub_(lse[:, None]).exp_().mul_(coefficient[:, None])
    gradient.scatter_add_(1, positive[:, None], -coefficient[:, None])
    projected = gradient @ keys
    if key_gradient is not None:
        key_gradient.addmm_(gradient.T, queries * inverse_temperature[:, None])
    return inverse_temperature[:, None] * projected, (projected * queries).sum(dim=1)


class ChunkedRows(torch.autograd.Function):
    """``w_a * l_a`` over row blocks; see the module docstring for the gradient."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        queries: Tensor,
        keys: Tensor,
        positive_index: Tensor,
        self_index: Tensor,
        inverse_temperature: Tensor,
        weight: Tensor,
        uniform_grad: bool,
        block_rows: Optional[int],
    ) -> Tensor:
        accumulate = accumulation_dtype(queries.dtype)
        num_rows = queries.shape[0]
        step = block_rows or default_block_rows(keys.shape[0])
        needs = ctx.needs_input_grad
        forward_gradient = uniform_grad and (needs[0] or needs[1] or needs[4])
        inverse = inverse_temperature.detach().to(accumulate)
        weight_wide = weight.detach().to(accumulate)
        queries, keys = queries.detach(), keys.detach()
        lse = queries.new_empty(num_rows, dtype=accumulate)
        row_loss = torch.empty_like(lse)
        if forward_gradient:
            wide_keys = keys.to(accumulate)
            grad_queries = queries.new_empty(queries.shape, dtype=accumulate)
            grad_inverse = torch.empty_like(lse)
            grad_keys = torch.zeros_like(wide_keys) if needs[1] else None
        for start in range(0, num_rows, step):
            rows = slice(start, start + step)
            logits = scaled_logits(queries[rows], keys, self_index[rows], inverse[rows])
            positive = positive_index[rows]
            lse[rows] = torch.logsumexp(logits, dim=1)
            row_loss[rows] = lse[rows] - logits.gather(1, positive[:, None]).squeeze(1)
            if forward_gradient:
                grad_queries[rows], grad_inverse[rows] = _block_gradient(
                    logits,
                    lse[rows],
                    weight_wide[rows],
                    positive,
                    inverse[rows],
                    queries[rows].to(accumulate),
                    wide_keys,
                    grad_keys,
                )
        ctx.block_rows = step
        ctx.forward_gradient = forward_gradient
        saved = [queries, keys, positive_index, self_index, inverse_temperature, weight, lse, row_loss]
        if forward_gradient:
            saved += [grad_queries, grad_inverse] + ([grad_keys] if grad_keys is not None else [])
        ctx.save_for_backward(*saved)
        return weight_wide * row_loss

    @staticmethod
    def backward(ctx: Any, grad_loss: Tensor) -> tuple[Optional[Tensor], ...]:  # type: ignore[override]
        queries, keys, positive_index, self_index, inverse_temperature, weight, lse, row_loss, *unit = ctx.saved_tensors
        needs = ctx.needs_input_grad
        accumulate = lse.dtype
        grad_loss = grad_loss.to(accumulate)
        if ctx.forward_gradient:
            scale = grad_loss[0]  # promised uniform; a 0-dim view, no host read
            grad_queries, grad_inverse = unit[0] * scale, unit[1] * scale
            grad_keys = unit[2] * scale if needs[1] else None
        else:
            inverse = inverse_temperature.detach().to(accumulate)
            coefficient = grad_loss * weight.detach().to(accumulate)
            wide_keys = keys.to(accumulate)
            grad_queries = queries.new_empty(queries.shape, dtype=accumulate)
            grad_inverse = torch.empty_like(lse)
            grad_keys = torch.zeros_like(wide_keys) if needs[1] else None
            step = ctx.block_rows
            for start in range(0, queries.shape[0], step):
                rows = slice(start, start + step)
                logits = scaled_logits(queries[rows], keys, self_index[rows], inverse[rows])
                grad_queries[rows], grad_inverse[rows] = _block_gradient(
                    logits,
                    lse[rows],
                    coefficient[rows],
                    positive_index[rows],
                    inverse[rows],
                    queries[rows].to(accumulate),
                    wide_keys,
                    grad_keys,
                )
        return (
            grad_queries.to(queries.dtype) if needs[0] else None,
            grad_keys.to(keys.dtype) if grad_keys is not None else None,
            None,
            None,
            grad_inverse.to(inverse_temperature.dtype) if needs[4] else None,
            (grad_loss * row_loss).to(weight.dtype) if needs[5] else None,
            None,
            None,
        )


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
    """The reference's rows computed in row blocks: memory linear in ``M + N``, shape ``(M,)``.

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
        >>> from tase_loss.ops.reference import contrastive_rows_reference
        >>> q = torch.nn.functional.normalize(torch.randn(6, 8), dim=1)
        >>> rows = torch.arange(6)
        >>> args = (q, q, rows.roll(3), rows, torch.full((6,), 5.0), torch.ones(6))
        >>> torch.allclose(contrastive_rows_chunked(*args, block_rows=4), contrastive_rows_reference(*args))
        True
    """
    return ChunkedRows.apply(
        queries, keys, positive_index, self_index, inverse_temperature, weight, uniform_grad, block_rows
    )
