"""The only code that touches ``torch.ops.tase_loss``: the fused contrastive-rows op.

The op family (schema in ``csrc/contrastive.cpp`` at the repository's top level, kernels
in ``csrc/cpu`` and ``csrc/cuda``) computes
:func:`tase_loss.ops.reference.contrastive_rows_reference`'s rows tile by tile, never
materializing the ``(M, N)`` logit matrix:

- ``contrastive_forward`` -> ``(loss, lse)``; its backward recomputes the rows
  (four GEMMs in forward + backward).
- ``contrastive_forward_with_grad`` additionally returns the gradient for a unit
  ``grad_loss``; used when the caller promises a uniform ``grad_loss`` (a ``mean`` or
  ``sum`` of the rows, the usual case), the backward only scales it, so training costs
  the three GEMMs ``Q K^T``, ``P K`` and ``P^T Q`` and never reads a value on the host.
- ``contrastive_backward`` (private) gives the gradients for queries, keys (only with
  ``grad_keys=True``), inverse temperature and weight.

The ``lse`` output carries no gradient. This module registers fake (meta) kernels and
autograd formulas, so the op works under ``torch.compile``.
"""

from __future__ import annotations

import functools
from typing import Any, Optional

import torch
from torch import Tensor

from tase_loss._numerics import accumulation_dtype
from tase_loss.ops import _extension

__all__ = ["contrastive_rows_fused", "has_kernel", "is_applicable", "missing_kernel"]

_SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_FORWARD = "tase_loss::contrastive_forward"
_FORWARD_WITH_GRAD = "tase_loss::contrastive_forward_with_grad"
_BACKWARD = "tase_loss::contrastive_backward"


@functools.cache
def _load() -> frozenset[str]:
    """Load the extension (first call only), register the op's Python side (fake kernels,
    autograd) and return the device types with a kernel."""
    if not _extension.has_ext():
        return frozenset()
    _register()
    return frozenset(
        device_type
        for device_type, dispatch_key in (("cpu", "CPU"), ("cuda", "CUDA"))
        if torch._C._dispatch_has_kernel_for_dispatch_key(_FORWARD, dispatch_key)
    )


@torch.compiler.assume_constant_result
def has_kernel(device_type: str) -> bool:
    """Whether the fused op has a kernel for ``device_type`` (``False`` without the extension).

    The extension is loaded (or JIT-built with ``TASE_LOSS_JIT=1``) at the first call,
    not at import. Under ``torch.compile`` the answer is a constant of the graph.
    """
    return device_type in _load()


def missing_kernel(device_type: str, dtype: torch.dtype) -> Optional[str]:
    """Why the fused op cannot run on ``device_type`` in ``dtype``, or ``None`` when it can.

    The extension is loaded at the first call (see :func:`has_kernel`); without it the
    answer names :func:`tase_loss.ops._extension.load_error`'s reason.

    Example:
        >>> import torch
        >>> missing_kernel("cpu", torch.int64)
        'the compiled op has no kernel for torch.int64'
    """
    if dtype not in _SUPPORTED_DTYPES:
        return f"the compiled op has no kernel for {dtype}"
    if has_kernel(device_type):
        return None
    if not _extension.has_ext():
        return f"extension not used: {_extension.load_error()}"
    return f"the extension was built without a {device_type} kernel"


def is_applicable(queries: Tensor, keys: Tensor) -> bool:
    """Whether :func:`contrastive_rows_fused` can run on these embeddings.

    True when both are 2-D, of one dtype on one device, and :func:`missing_kernel`
    finds nothing missing (the extension is loaded and has a kernel for that device and
    dtype: float16, bfloat16, float32 or float64).

    Example:
        >>> import torch
        >>> from tase_loss.ops import _extension
        >>> is_applicable(torch.randn(4, 8), torch.randn(6, 8)) == _extension.has_ext()
        True
    """
    return (
        queries.dim() == 2
        and keys.dim() == 2
        and keys.dtype == queries.dtype
        and queries.device == keys.device
        and missing_kernel(queries.device.type, queries.dtype) is None
    )


def contrastive_rows_fused(
    queries: Tensor,
    keys: Tensor,
    positive_index: Tensor,
    self_index: Tensor,
    inverse_temperature: Tensor,
    weight: Tensor,
    *,
    uniform_grad: bool = False,
) -> Tensor:
    """Weighted per-row losses ``w_a * l_a`` from the fused op, shape ``(M,)``.

    Same contract and arguments as
    :func:`tase_loss.ops.reference.contrastive_rows_reference`; differentiable in
    ``queries``, ``keys``, ``inverse_temperature`` and ``weight``. Requires
    :func:`is_applicable`; inputs are not validated here.

    Args:
        uniform_grad: the caller's promise that the rows only enter a sum or mean, so
            that their gradient is one value on every row. The forward then computes the
            gradient for a unit gradient along the way and the backward only scales it
            (three GEMMs in all, no read of the gradient on the host); without the
            promise the backward recomputes the rows (four GEMMs).

    Returns:
        ``(M,)`` in float32 (float64 for float64 inputs).

    Example:
        >>> import torch
        >>> from tase_loss.ops.reference import contrastive_rows_reference
        >>> if is_applicable(torch.ones(1, 1), torch.ones(1, 1)):
        ...     q = torch.nn.functional.normalize(torch.randn(6, 8), dim=1)
        ...     rows = torch.arange(6)
        ...     args = (q, q, rows.roll(3), rows, torch.full((6,), 5.0), torch.ones(6))
        ...     fused = contrastive_rows_fused(*args)
        ...     assert torch.allclose(fused, contrastive_rows_reference(*args), atol=1e-5)
    """
    has_kernel(queries.device.type)  # loads the op, registers fakes and autograd (once)
    needs_grad = torch.is_grad_enabled() and (
        queries.requires_grad or keys.requires_grad or inverse_temperature.requires_grad
    )
    arguments = (queries, keys, positive_index, self_index, inverse_temperature, weight)
    if needs_grad and uniform_grad:
        return torch.ops.tase_loss.contrastive_forward_with_grad(*arguments, keys.requires_grad)[0]
    return torch.ops.tase_loss.contrastive_forward(*arguments)[0]


def _rows_like(queries: Tensor) -> Tensor:
    return queries.new_empty((queries.shape[0],), dtype=accumulation_dtype(queries.dtype))


def _fake_forward(
    queries: Tensor,
    keys: Tensor,
    positive_index: Tensor,
    self_index: Tensor,
    inverse_temperature: Tensor,
    weight: Tensor,
) -> tuple[Tensor, Tensor]:
    return _rows_like(queries), _rows_like(queries)


def _fake_forward_with_grad(
    queries: Tensor,
    keys: Tensor,
    positive_index: Tensor,
    self_index: Tensor,
    inverse_temperature: Tensor,
    weight: Tensor,
    grad_keys: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    accumulate = accumulation_dtype(queries.dtype)
    unit_grad_keys = keys.new_empty(keys.shape if grad_keys else (0,), dtype=accumulate)
    return (
        _rows_like(queries),
        _rows_like(queries),
        queries.new_empty(queries.shape, dtype=accumulate),
        unit_grad_keys,
        _rows_like(queries),
    )


def _fake_backward(
    grad_loss: Tensor,
    queries: Tensor,
    keys: Tensor,
    positive_index: Tensor,
    self_index: Tensor,
    inverse_temperature: Tensor,
    weight: Tensor,
    lse: Tensor,
    grad_keys: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    return (
        torch.empty_like(queries),
        torch.empty_like(keys) if grad_keys else keys.new_empty((0,)),
        torch.empty_like(inverse_temperature),
        torch.empty_like(weight),
    )


def _setup_forward(ctx: Any, inputs: tuple[Any, ...], output: tuple[Tensor, ...]) -> None:
    ctx.mark_non_differentiable(output[1])
    ctx.save_for_backward(*inputs[:6], output[1])


def _setup_forward_with_grad(ctx: Any, inputs: tuple[Any, ...], output: tuple[Tensor, ...]) -> None:
    ctx.mark_non_differentiable(*output[1:])
    ctx.grad_keys = inputs[6]
    ctx.save_for_backward(*inputs[:6], *output[1:])


def _input_grads(ctx: Any, grads: tuple[Optional[Tensor], ...]) -> tuple[Optional[Tensor], ...]:
    """Gradients in input order; the two index tensors get ``None``."""
    grad_queries, grad_keys, grad_inverse_temperature, grad_weight = grads
    wanted = ctx.needs_input_grad
    return (
        grad_queries if wanted[0] else None,
        grad_keys if wanted[1] else None,
        None,
        None,
        grad_inverse_temperature if wanted[4] else None,
        grad_weight if wanted[5] else None,
    )


def _backward_forward(ctx: Any, grad_loss: Tensor, grad_lse: Optional[Tensor]) -> tuple:
    grad_keys = ctx.needs_input_grad[1]
    grads = torch.ops.tase_loss.contrastive_backward(grad_loss, *ctx.saved_tensors, grad_keys)
    return _input_grads(ctx, (*grads[:1], grads[1] if grad_keys else None, *grads[2:]))


def _backward_forward_with_grad(ctx: Any, grad_loss: Tensor, *unused_grads: Any) -> tuple:
    """Scale the forward's unit gradient by the (promised uniform) ``grad_loss``."""
    queries, keys, positive_index, _, inverse_temperature, weight, lse, unit_queries, unit_keys, unit_inverse = (
        ctx.saved_tensors
    )
    scale = grad_loss[0]  # a 0-dim view: no host read
    # l_a = lse_a - z_a,pos from O(M D) work: the positive logit is one dot product per row.
    accumulate = lse.dtype
    positive_similarity = (queries.to(accumulate) * keys.index_select(0, positive_index).to(accumulate)).sum(1)
    row_loss = lse - inverse_temperature.to(accumulate) * positive_similarity
    grads = (
        (unit_queries * scale).to(queries.dtype),
        (unit_keys * scale).to(keys.dtype) if ctx.grad_keys else None,
        (unit_inverse * scale).to(inverse_temperature.dtype),
        (grad_loss.to(accumulate) * row_loss).to(weight.dtype),
    )
    return (*_input_grads(ctx, grads), None)


def _register() -> None:
    torch.library.register_fake(_FORWARD)(_fake_forward)
    torch.library.register_fake(_FORWARD_WITH_GRAD)(_fake_forward_with_grad)
    torch.library.register_fake(_BACKWARD)(_fake_backward)
    torch.library.register_autograd(_FORWARD, _backward_forward, setup_context=_setup_forward)
    torch.library.register_autograd(
        _FORWARD_WITH_GRAD, _backward_forward_with_grad, setup_context=_setup_forward_with_grad
    )

