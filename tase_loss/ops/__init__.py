"""One operation, three implementations: the contrastive rows and the one dispatch among them.

Every contrastive loss of the library is, row by row::

    logits[a, k] = <queries[a], keys[k]> * inverse_temperature[a]
    lse[a]       = log sum_{k != self_index[a]} exp(logits[a, k])
    loss[a]      = weight[a] * (lse[a] - logits[a, positive_index[a]])

(``self_index[a] == -1``: row ``a`` excludes nothing). This sub-package holds all of it;
imports point one way, from this entry point to the implementations to what they share:

- :func:`contrastive_rows` (here) picks the implementation with :func:`backend_info`'s
  rule and calls it; :func:`contrastive_targets` is its multi-positive sibling;
- :mod:`~tase_loss.ops.fused`: the compiled op (``torch.ops.tase_loss``, sources in the
  repository's ``csrc/``), loaded by :mod:`~tase_loss.ops._extension` and built as
  :mod:`~tase_loss.ops._build` describes;
- :mod:`~tase_loss.ops.chunked`: pure PyTorch in row blocks, memory linear in ``M + N``;
- :mod:`~tase_loss.ops.reference`: pure PyTorch, the ``(M, N)`` logits materialized;
- :mod:`~tase_loss.ops._common`: the scaled logits both pure-PyTorch paths share.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Optional, Union

import torch
from torch import Tensor

from tase_loss._validation import check_int
from tase_loss.ops.chunked import contrastive_rows_chunked
from tase_loss.ops.fused import contrastive_rows_fused, has_kernel, is_applicable, missing_kernel
from tase_loss.ops.reference import contrastive_rows_reference, contrastive_targets_reference

__all__ = [
    "CHUNKED_ABOVE",
    "FUSED_ABOVE_ON_CPU",
    "PATHS",
    "Backend",
    "backend_info",
    "contrastive_rows",
    "contrastive_rows_chunked",
    "contrastive_rows_fused",
    "contrastive_rows_reference",
    "contrastive_targets",
    "contrastive_targets_reference",
    "has_kernel",
    "is_applicable",
    "last_backend",
]

CHUNKED_ABOVE = 1 << 22
"""Logits (``M * N``) above which the pure-PyTorch path runs in row blocks: from there the
chunked rows are also the faster ones (2 CPU cores: 0.6x the materialized time at
M = N = 4096 with a mean, 0.84x without; equal at 2048; benchmarks/README.md)."""

FUSED_ABOVE_ON_CPU = 1 << 18
"""Logits above which the compiled op runs on the CPU; below, its fixed costs lose to the
materialized rows (1.4x their time at M = N = 128, equal at 512; benchmarks/README.md).
Other devices use the op at every size (not measured yet)."""

PATHS = ("fused", "chunked", "reference")
"""The implementations :func:`contrastive_rows` chooses among, in the order it tries them."""

logger = logging.getLogger("tase_loss")
_last: Optional[Backend] = None
_logged: set[tuple[str, str]] = set()


@dataclasses.dataclass(frozen=True)
class Backend:
    """Which implementation computes the contrastive rows, and why.

    Attributes:
        path: ``"fused"`` (the compiled C++/CUDA op), ``"chunked"`` (pure PyTorch in row
            blocks) or ``"reference"`` (pure PyTorch, the ``(M, N)`` logits
            materialized); see :data:`PATHS`.
        device: the device type, e.g. ``"cpu"`` or ``"cuda"``.
        reason: why this path, in words (names the extension's load error when it is
            missing, and the size threshold that decided).
    """

    path: str
    device: str
    reason: str

    def __str__(self) -> str:
        return f"{self.path} on {self.device} ({self.reason})"


def _logits_text(count: int) -> str:
    return f"2^{count.bit_length() - 1}" if count > 0 and count & (count - 1) == 0 else f"{count:,}"


def _choose(num_rows: int, num_keys: int, device_type: str, dtype: torch.dtype) -> Backend:
    """The dispatch rule, its one copy: :func:`contrastive_rows` and :func:`backend_info` call it."""
    logits = num_rows * num_keys
    missing = missing_kernel(device_type, dtype)
    if missing is None and (device_type != "cpu" or logits > FUSED_ABOVE_ON_CPU):
        path = "fused"
    elif logits > CHUNKED_ABOVE:
        path = "chunked"
    else:
        path = "reference"
    # Under torch.compile the sizes may be symbolic, which no string can hold; nothing
    # reads the reason there (contrastive_rows records only in eager mode).
    reason = "" if torch.compiler.is_compiling() else _reason(path, num_rows, num_keys, device_type, missing)
    return Backend(path, device_type, reason)


def _reason(path: str, num_rows: int, num_keys: int, device_type: str, missing: Optional[str]) -> str:
    """:func:`_choose`'s decision in words; ``missing`` is why the compiled op cannot run."""
    size = f"{num_rows} x {num_keys} = {num_rows * num_keys:,} logits"
    fused_above = f"FUSED_ABOVE_ON_CPU = {_logits_text(FUSED_ABOVE_ON_CPU)}"
    if path == "fused" and device_type != "cpu":
        return f"compiled {device_type} op, used at every size off the CPU"
    if path == "fused":
        return f"compiled CPU op: {size} > {fused_above}"
    if missing is None:
        missing = f"compiled op loaded, but its fixed costs lose at or below {fused_above} logits"
    return f"{missing}; {size} {'>' if path == 'chunked' else '<='} CHUNKED_ABOVE = {_logits_text(CHUNKED_ABOVE)}"


def backend_info(
    num_rows: int,
    num_keys: int,
    device: Union[str, torch.device] = "cpu",
    dtype: torch.dtype = torch.float32,
) -> Backend:
    """The implementation :func:`contrastive_rows` runs for this problem, and why.

    Computed by the rule the dispatch itself uses, so it is what runs: the compiled op
    when the extension is loaded and has a kernel for the device and dtype (on the CPU
    only above :data:`FUSED_ABOVE_ON_CPU` logits ``M * N``), else pure PyTorch in row
    blocks above :data:`CHUNKED_ABOVE` logits, else materialized. The first call loads
    the extension (or JIT-builds it with ``TASE_LOSS_JIT=1``), as the first loss would.

    Shapes of the losses: :func:`~tase_loss.nt_xent_loss` with a batch of ``B`` has
    ``num_rows = num_keys = 2B`` (``num_keys`` over all ranks when gathering);
    :func:`~tase_loss.moco_loss` has ``num_rows = B`` and ``num_keys = B + S`` for a
    queue of ``S`` keys.

    Args:
        num_rows: ``M``, the anchors (rows), ``>= 1``.
        num_keys: ``N``, the candidates (columns), ``>= 1``.
        device: the embeddings' device, e.g. ``"cpu"`` or ``"cuda"``.
        dtype: the embeddings' floating dtype.

    Returns:
        The :class:`Backend`: ``path`` (``"fused"``, ``"chunked"`` or ``"reference"``),
        ``device`` and ``reason``.

    Raises:
        TypeError: ``num_rows``/``num_keys`` not integers, ``dtype`` not a floating
            ``torch.dtype``.
        ValueError: ``num_rows``/``num_keys`` below 1, or ``device`` not a device.
        RuntimeError: ``TASE_LOSS_REQUIRE_EXT=1`` and the extension is unusable (as
            the loss itself would raise).

    Example:
        >>> from tase_loss import backend_info
        >>> backend = backend_info(4096, 4096, "cpu", torch.float32)
        >>> backend.path in ("fused", "chunked")
        True
        >>> backend_info(64, 64).path                          # small: never chunked
        'reference'
    """
    check_int("num_rows", num_rows, minimum=1)
    check_int("num_keys", num_keys, minimum=1)
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TypeError(f"dtype must be a floating torch.dtype, got {dtype!r}")
    try:
        device_type = torch.device(device).type
    except (RuntimeError, TypeError) as error:
        raise ValueError(f"device must be a torch.device or a device string, got {device!r}") from error
    return _choose(num_rows, num_keys, device_type, dtype)


def last_backend() -> Optional[Backend]:
    """The :class:`Backend` of this process's latest eager :func:`contrastive_rows` call.

    ``None`` before the first call. Calls inside ``torch.compile`` record nothing.

    Example:
        >>> isinstance(last_backend(), (Backend, type(None)))
        True
    """
    return _last


def _record(backend: Backend) -> None:
    """Keep ``backend`` for :func:`last_backend`; log it at INFO the first time its path runs."""
    global _last
    _last = backend
    key = (backend.path, backend.device)
    if key not in _logged:
        _logged.add(key)
        logger.info("the contrastive rows run %s", backend)


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
    follow :func:`~tase_loss.ops.reference.contrastive_rows_reference`. The one place
    that picks a path, with :func:`backend_info`'s rule, in this order:

    1. the fused op (:mod:`tase_loss.ops.fused`; tiles, never the ``(M, N)`` matrix)
       when the extension is built and has a kernel for the device, on the CPU only
       above :data:`FUSED_ABOVE_ON_CPU` logits ``M * N``;
    2. the chunked pure-PyTorch rows (:func:`~tase_loss.ops.chunked.contrastive_rows_chunked`,
       memory linear in ``M + N``) when ``M * N`` exceeds :data:`CHUNKED_ABOVE`;
    3. the materialized pure-PyTorch rows otherwise.

    All agree within the dtype's tolerance. ``uniform_grad`` promises that the rows only
    enter a sum or mean (see :func:`~tase_loss.ops.fused.contrastive_rows_fused`). In
    eager mode the choice is kept for :func:`last_backend`, and each path is logged
    once per process and device type (logger ``"tase_loss"``, level INFO) when it first
    runs.

    Example:
        >>> q = torch.nn.functional.normalize(torch.randn(6, 8), dim=1)
        >>> rows = torch.arange(6)
        >>> contrastive_rows(q, q, rows.roll(3), rows, torch.full((6,), 5.0), torch.ones(6)).shape
        torch.Size([6])
        >>> last_backend() == backend_info(6, 6, q.device, q.dtype)
        True
    """
    arguments = (queries, keys, positive_index, self_index, inverse_temperature, weight)
    backend = _choose(queries.shape[0], keys.shape[0], queries.device.type, queries.dtype)
    if not torch.compiler.is_compiling():
        _record(backend)
    if backend.path == "fused":
        return contrastive_rows_fused(*arguments, uniform_grad=uniform_grad)
    if backend.path == "chunked":
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
    :func:`~tase_loss.ops.reference.contrastive_targets_reference`. It always runs the
    materialized reference: the fused op takes one positive index per row, so it
    covers this only by repeating each row once per positive (see ``docs/ood.md``).

    Example:
        >>> q = torch.nn.functional.normalize(torch.randn(4, 8), dim=1)
        >>> rows = torch.arange(4)
        >>> target = torch.nn.functional.one_hot(rows.roll(2), 4).float()
        >>> contrastive_targets(q, q, target, rows, torch.full((4,), 5.0), torch.ones(4)).shape
        torch.Size([4])
    """
    loss, _ = contrastive_targets_reference(
        queries, keys, target, self_index, inverse_temperature, weight, pair_weight
    )
    return loss
