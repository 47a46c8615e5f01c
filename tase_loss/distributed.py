"""Collectives with exact gradients, for training on several processes.

Everything here works with any ``torch.distributed`` backend (NCCL on GPUs, gloo on
CPUs) and degrades to the identity when no process group is initialized or the world
holds one process, so code written for DDP runs unchanged on one device.

Gradient convention (DDP's): every rank calls ``backward`` on its own loss and DDP
*averages* parameter gradients over the ``W`` ranks. A collective's backward therefore
returns, on each rank, the gradient of the **sum** of all ranks' losses with respect to
its local input: :func:`all_gather_rows` sums the gathered gradient over ranks and keeps
this rank's rows, :func:`all_reduce_sum` sums the incoming gradient over ranks. If every
rank returns the same global loss ``L``, the sum is ``W * L``, local tensors receive
``W * dL/dx`` and DDP's average turns parameter gradients into exactly ``dL/dtheta``.

The backward of a collective is itself a collective: all ranks must run ``backward``
through the same graph (as DDP already requires).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

__all__ = [
    "all_gather_rows",
    "all_reduce_sum",
    "broadcast_from_root",
    "get_rank",
    "get_world_size",
    "is_distributed",
]


def is_distributed() -> bool:
    """Whether a default process group with more than one process is running."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def get_world_size() -> int:
    """Number of processes in the default group; ``1`` without one."""
    return dist.get_world_size() if is_distributed() else 1


def get_rank() -> int:
    """This process's rank in the default group; ``0`` without one."""
    return dist.get_rank() if is_distributed() else 0


def _communication_device(tensor: Tensor) -> torch.device:
    """NCCL only moves CUDA tensors; gloo and the others take the tensor where it is."""
    if tensor.device.type == "cpu" and dist.get_backend() == dist.Backend.NCCL:
        return torch.device("cuda", torch.cuda.current_device())
    return tensor.device


def _all_reduce_sum_no_grad(tensor: Tensor) -> Tensor:
    device = _communication_device(tensor)
    total = tensor.detach().to(device, copy=True).contiguous()
    dist.all_reduce(total, op=dist.ReduceOp.SUM)
    return total.to(tensor.device)


def _gather_row_counts(tensor: Tensor) -> list[int]:
    """Every rank's ``tensor.shape[0]``, after checking that the row shapes agree."""
    device = _communication_device(tensor)
    shape = torch.tensor([tensor.shape[0], *tensor.shape[1:]], dtype=torch.int64, device=device)
    shapes = [torch.empty_like(shape) for _ in range(dist.get_world_size())]
    dist.all_gather(shapes, shape)
    shapes_by_rank = [tuple(int(size) for size in rank_shape) for rank_shape in shapes]
    if len({rank_shape[1:] for rank_shape in shapes_by_rank}) != 1:
        # Every rank sees the same shapes, so every rank raises: nobody is left waiting.
        raise ValueError(
            f"all_gather_rows needs the same row shape on every rank, got (rows, ...) "
            f"shapes {shapes_by_rank} by rank"
        )
    return [rank_shape[0] for rank_shape in shapes_by_rank]


def _all_gather_padded(tensor: Tensor, counts: list[int]) -> Tensor:
    """Concatenate every rank's rows; collectives need equal sizes, so pad, then trim."""
    device = _communication_device(tensor)
    padded = tensor.new_zeros((max(counts), *tensor.shape[1:]), device=device)
    padded[: tensor.shape[0]] = tensor.detach()
    buffers = [torch.empty_like(padded) for _ in counts]
    dist.all_gather(buffers, padded)
    return torch.cat([buffer[:count] for buffer, count in zip(buffers, counts)]).to(tensor.device)


class _AllGatherRows(torch.autograd.Function):
    """All-gather of variable row counts whose backward sums over ranks.

    Backward is ``all_reduce(SUM)`` of the whole gathered gradient, then this rank's
    slice. A reduce-scatter would move half the bytes but needs equal chunks (padding
    again) and gloo has none; the gradient of a batch of embeddings is small next to
    the model's own gradient all-reduce, so the portable collective wins.
    """

    @staticmethod
    def forward(ctx: Any, tensor: Tensor, counts: list[int], offset: int) -> Tensor:
        ctx.offset = offset
        ctx.count = tensor.shape[0]
        return _all_gather_padded(tensor, counts)

    @staticmethod
    def backward(ctx: Any, grad_output: Tensor) -> tuple[Tensor, None, None]:
        summed = _all_reduce_sum_no_grad(grad_output)
        return summed[ctx.offset : ctx.offset + ctx.count], None, None


class _AllReduceSum(torch.autograd.Function):
    """Sum over ranks whose backward sums the incoming gradient over ranks."""

    @staticmethod
    def forward(ctx: Any, tensor: Tensor) -> Tensor:
        return _all_reduce_sum_no_grad(tensor)

    @staticmethod
    def backward(ctx: Any, grad_output: Tensor) -> Tensor:
        return _all_reduce_sum_no_grad(grad_output)


def all_gather_rows(tensor: Tensor) -> tuple[Tensor, int]:
    """Concatenate every rank's rows in rank order, with gradients back to each rank.

    Ranks may hold different numbers of rows (an uneven last batch): the counts are
    gathered first, rows are padded to the largest count for the collective and
    trimmed after. The gradient that reaches ``tensor`` is the sum over ranks of the
    gradients of their losses with respect to this rank's rows (see the module
    docstring for why that is what DDP needs).

    Args:
        tensor: ``(B_r, ...)`` this rank's rows; ``B_r`` may differ between ranks,
            the other dimensions may not.

    Returns:
        ``(gathered, offset)``: ``gathered`` is ``(sum_r B_r, ...)``, rank 0's rows
        first; this rank's rows are ``gathered[offset : offset + B_r]``. Without a
        process group, ``(tensor, 0)``.

    Raises:
        ValueError: on every rank, if the ranks' row shapes differ.

    Example:
        >>> import torch
        >>> rows, offset = all_gather_rows(torch.ones(3, 2))   # one process: identity
        >>> rows.shape, offset
        (torch.Size([3, 2]), 0)
    """
    if not is_distributed():
        return tensor, 0
    counts = _gather_row_counts(tensor)
    offset = sum(counts[: dist.get_rank()])
    return _AllGatherRows.apply(tensor, counts, offset), offset


def all_reduce_sum(tensor: Tensor) -> Tensor:
    """Sum of ``tensor`` over ranks; its gradient is summed over ranks too.

    Example:
        >>> import torch
        >>> all_reduce_sum(torch.tensor([1.0, 2.0]))            # one process: identity
        tensor([1., 2.])
    """
    if not is_distributed():
        return tensor
    return _AllReduceSum.apply(tensor)


def broadcast_from_root(tensor: Tensor) -> Tensor:
    """Rank 0's ``tensor`` on every rank (no gradient), same device and dtype as given.

    Boolean tensors travel as ``uint8`` (not every backend reduces or sends ``bool``).

    Example:
        >>> import torch
        >>> broadcast_from_root(torch.tensor([True, False]))   # one process: identity
        tensor([ True, False])
    """
    if not is_distributed():
        return tensor
    device = _communication_device(tensor)
    wire = tensor.detach().to(device, dtype=torch.uint8 if tensor.dtype == torch.bool else None)
    wire = wire.contiguous().clone()
    dist.broadcast(wire, src=0)
    return wire.to(tensor.device, dtype=tensor.dtype)
