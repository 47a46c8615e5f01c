"""The NT-Xent implementations compared by the benchmarks, behind one call shape.

Every provider builds a function ``loss(out0, out1) -> scalar``: the mean NT-Xent of
two ``(B, D)`` views at one temperature, inputs unnormalized (each normalizes inside),
both views anchors, ``2B - 2`` negatives per anchor. They compute the same number
(checked against the float64 loop oracle of ``tests/oracles.py`` by
``benchmarks/test_contrastive.py``), so their times and memory compare like for like.

============  =================================================================
name          what runs
============  =================================================================
plain         six lines of plain PyTorch NT-Xent (normalize, ``Z @ Z.T / t``,
              ``-inf`` on the diagonal, ``F.cross_entropy``): what a user would
              write; the baseline of every ratio
reference     ``tase_loss.ops.reference.contrastive_rows_reference`` called directly
              (the materialized ``2B x 2B`` path, forced even when the fused op
              is built)
chunked       ``tase_loss.ops.chunked.contrastive_rows_chunked`` (row blocks,
              memory linear in ``B``), forced at every size
fused         ``tase_loss.ops.contrastive_rows_fused`` with the same arguments
              (skipped until the compiled extension is built)
compiled      ``torch.compile`` of the ``reference`` function
module        ``tase_loss.TASEContrastiveLoss()(out0, out1)``: the public path,
              argument validation and dispatch included
lightly       lightly 1.6.0 ``NTXentLoss`` (see :mod:`benchmarks.peers`)
pml           pytorch-metric-learning ``NTXentLoss`` on ``cat([out0, out1])``
              with labels ``arange(B).repeat(2)``
============  =================================================================
"""

from __future__ import annotations

import functools
import shutil
from dataclasses import dataclass
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from benchmarks import peers

LossFunction = Callable[[Tensor, Tensor], Tensor]
RowKernel = Callable[[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor], Tensor]

BASELINE = "plain"


@dataclass(frozen=True)
class Provider:
    """One implementation: ``build(temperature)`` returns its ``loss(out0, out1)``.

    ``why_unavailable()`` returns ``None`` when it can run here, else the reason.
    """

    name: str
    build: Callable[[float], LossFunction]
    why_unavailable: Callable[[], Optional[str]]
    version: Callable[[], str]


def _nt_xent_through(kernel: RowKernel, temperature: float) -> LossFunction:
    """NT-Xent as one call of a per-row kernel with ``contrastive_rows``'s contract.

    The same arguments :func:`tase_loss.functional.nt_xent_loss` builds, without its
    validation, so ``reference`` and ``fused`` differ only in the kernel.
    """

    def loss(out0: Tensor, out1: Tensor) -> Tensor:
        batch_size = out0.shape[0]
        embeddings = F.normalize(torch.cat([out0, out1]), dim=1)
        rows = torch.arange(2 * batch_size, device=out0.device)
        inverse_temperature = torch.full(
            (2 * batch_size,), 1.0 / temperature, dtype=torch.float32, device=out0.device
        )
        weight = torch.ones_like(inverse_temperature)
        return kernel(
            embeddings, embeddings, rows.roll(batch_size), rows, inverse_temperature, weight
        ).mean()

    return loss


def _reference_kernel(*arguments: Tensor) -> Tensor:
    from tase_loss.ops.reference import contrastive_rows_reference

    return contrastive_rows_reference(*arguments)


def _chunked_kernel(*arguments: Tensor) -> Tensor:
    from tase_loss.ops.chunked import contrastive_rows_chunked

    # The rows only enter a mean here, as in the losses.
    return contrastive_rows_chunked(*arguments, uniform_grad=True)


def _build_plain(temperature: float) -> LossFunction:
    """Plain PyTorch NT-Xent, as a user writes it."""

    def loss(out0: Tensor, out1: Tensor) -> Tensor:
        embeddings = F.normalize(torch.cat([out0, out1]), dim=1)
        logits = embeddings @ embeddings.T / temperature
        logits.fill_diagonal_(float("-inf"))
        batch_size = out0.shape[0]
        targets = torch.arange(2 * batch_size, device=out0.device).roll(batch_size)
        return F.cross_entropy(logits, targets)

    return loss


def _fused_unavailable() -> Optional[str]:
    try:
        from tase_loss.ops import _extension
    except ImportError as error:
        return f"tase_loss has no fused op on this branch ({error})"
    if not _extension.has_ext():
        return "the compiled extension of tase_loss is not built (tase_loss.ops._extension.has_ext() is False)"
    return None


def _build_fused(temperature: float) -> LossFunction:
    from tase_loss import ops

    return _nt_xent_through(functools.partial(ops.contrastive_rows_fused, uniform_grad=True), temperature)


@functools.cache
def _build_compiled(temperature: float) -> LossFunction:
    # One compiled function per process: its guards recompile for new shapes (the
    # timing warm-up absorbs that) instead of re-tracing a fresh function per size.
    return torch.compile(_nt_xent_through(_reference_kernel, temperature))


def _compile_unavailable() -> Optional[str]:
    if shutil.which("g++") is None and shutil.which("clang++") is None:
        return "torch.compile's CPU backend needs a C++ compiler (no g++/clang++ on PATH)"
    return None


def _build_module(temperature: float) -> LossFunction:
    from tase_loss import TASEContrastiveLoss

    return TASEContrastiveLoss(temperature=temperature)


def _build_lightly(temperature: float) -> LossFunction:
    return peers.lightly_ntxent_class()(temperature=temperature)


def _build_pml(temperature: float) -> LossFunction:
    criterion = peers.pml_ntxent_class()(temperature=temperature)

    def loss(out0: Tensor, out1: Tensor) -> Tensor:
        labels = torch.arange(out0.shape[0], device=out0.device).repeat(2)
        return criterion(torch.cat([out0, out1]), labels)

    return loss


def _unavailable_if_raises(load: Callable[[], object]) -> Callable[[], Optional[str]]:
    def check() -> Optional[str]:
        try:
            load()
        except peers.PeerUnavailable as error:
            return str(error)
        return None

    return check


def _tase_version() -> str:
    import tase_loss

    return tase_loss.__version__


PROVIDERS = {
    provider.name: provider
    for provider in (
        Provider("plain", _build_plain, lambda: None, lambda: torch.__version__),
        Provider(
            "reference",
            functools.partial(_nt_xent_through, _reference_kernel),
            lambda: None,
            _tase_version,
        ),
        Provider("chunked", functools.partial(_nt_xent_through, _chunked_kernel), lambda: None, _tase_version),
        Provider("fused", _build_fused, _fused_unavailable, _tase_version),
        Provider("compiled", _build_compiled, _compile_unavailable, lambda: torch.__version__),
        Provider("module", _build_module, lambda: None, _tase_version),
        Provider(
            "lightly",
            _build_lightly,
            _unavailable_if_raises(peers.lightly_ntxent_class),
            peers.lightly_version,
        ),
        Provider(
            "pml", _build_pml, _unavailable_if_raises(peers.pml_ntxent_class), peers.pml_version
        ),
    )
}
