"""Domain discrimination (in-distribution vs OOD) on a small head, for stage 1.

The paper's abstract names a domain discrimination loss; the head and the loss below
are our design (``docs/ood.md``). The encoder is trained to *tell* the domains
apart, not to confuse them (no gradient reversal): OOD samples then fill sparse
regions of the embedding space without being pulled into ID pseudo-classes. The
loss is the weighted binary cross-entropy with OOD as the positive class::

    l_i = -[y_i log sigmoid(z_i) + (1 - y_i) log(1 - sigmoid(z_i))],   L = sum w_i l_i / sum w_i
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tase_loss._numerics import accumulation_dtype
from tase_loss._validation import check_embeddings, check_int, renamed_keywords
from tase_loss.functional import reduce_per_sample

__all__ = ["DomainHead", "domain_discrimination_loss"]


class DomainHead(nn.Module):
    """Two-layer MLP from embeddings to one ID-vs-OOD logit per sample.

    Args:
        feature_dim: ``D``, the size of the embeddings it reads.
        hidden_dim: width of the hidden layer.

    Shape:
        - input: ``(B, D)``.
        - output: ``(B,)`` logits; positive means "OOD".

    Example:
        >>> import torch
        >>> head = DomainHead(feature_dim=16)
        >>> head(torch.randn(4, 16)).shape
        torch.Size([4])
    """

    @renamed_keywords({"embedding_dim": "feature_dim"})
    def __init__(self, feature_dim: int, hidden_dim: int = 64) -> None:
        super().__init__()
        check_int("feature_dim", feature_dim, minimum=1)
        check_int("hidden_dim", hidden_dim, minimum=1)
        self.layers = nn.Sequential(
            nn.Linear(feature_dim, hidden_dim), nn.ReLU(), nn.Linear(hidden_dim, 1)
        )

    def forward(self, embeddings: Tensor) -> Tensor:
        return self.layers(embeddings).squeeze(1)


def domain_discrimination_loss(
    logits: Tensor,
    is_ood: Tensor,
    weight: Optional[Tensor] = None,
    reduction: str = "mean",
) -> Tensor:
    """Weighted binary cross-entropy of ID-vs-OOD logits.

    Args:
        logits: ``(B,)`` domain logits (e.g. from :class:`DomainHead`).
        is_ood: ``(B,)`` bool, ``True`` for OOD samples.
        weight: ``(B,)`` per-sample weights ``>= 0``, or ``None``.
        reduction: ``"mean"`` (``sum(w l) / sum(w)``), ``"sum"`` or ``"none"``.

    Returns:
        The loss: a scalar, or ``(B,)`` for ``reduction="none"``.

    Example:
        >>> import torch
        >>> logits, is_ood = torch.tensor([-4.0, 4.0]), torch.tensor([False, True])
        >>> loss = domain_discrimination_loss(logits, is_ood)
        >>> round(float(loss), 4)
        0.0181
    """
    if not isinstance(logits, Tensor) or logits.dim() != 1:
        raise ValueError(
            f"logits must be a (B,) torch.Tensor, got "
            f"{tuple(logits.shape) if isinstance(logits, Tensor) else type(logits).__name__}"
        )
    if logits.shape[0] == 0:
        raise ValueError("logits is empty: the loss needs at least one sample")
    check_embeddings("logits", logits[:, None], nonzero_rows=False)
    if not isinstance(is_ood, Tensor) or is_ood.dtype != torch.bool:
        raise TypeError("is_ood must be a bool torch.Tensor")
    if is_ood.shape != logits.shape:
        raise ValueError(
            f"is_ood has shape {tuple(is_ood.shape)} but logits has {tuple(logits.shape)}"
        )
    if is_ood.device != logits.device:
        raise ValueError(f"is_ood is on {is_ood.device} but logits is on {logits.device}")
    dtype = accumulation_dtype(logits.dtype)
    per_sample = F.binary_cross_entropy_with_logits(logits.to(dtype), is_ood.to(dtype), reduction="none")
    return reduce_per_sample(per_sample, weight, reduction)
