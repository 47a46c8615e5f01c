"""Pseudo semantic discrimination: contrast with every sample sharing a pseudo-label.

Stage 1 of the OOD recipe (``docs/ood.md``). The paper's abstract names a "pseudo
semantic discrimination loss"; its form here is our design: SupCon's ``L_out``
(Khosla et al., 2020) with k-means pseudo-labels in place of class labels, plus
TASE's per-anchor temperature ``t_a`` and weight ``w_a``, and a share ``lambda``
(``instance_mass``) of the target kept on the anchor's other view ``o(a)`` so that
noisy early pseudo-labels cannot drown instance discrimination::

    pi[a, k] = lambda 1[k == o(a)] + (1 - lambda) 1[y_k == y_a, k != a] / #{k != a : y_k == y_a}
    l_a      = -sum_k pi[a, k] s[a, k] / t_a + log sum_{k != a} exp(s[a, k] / t_a)
    L        = sum_a w_a l_a / sum_a w_a

over the ``2B`` views of a batch. Both views of a sample carry its label, so every
anchor has at least one positive, and with all labels distinct the loss is exactly
:func:`tase_loss.nt_xent_loss`.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from tase_loss._numerics import accumulation_dtype
from tase_loss._validation import TemperatureLike, check_embeddings, check_labels, check_real
from tase_loss.functional import nt_xent_target_loss

__all__ = ["label_targets", "pseudo_semantic_loss"]


def label_targets(
    row_labels: Tensor,
    column_labels: Tensor,
    self_index: Tensor,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """Uniform target distributions over the columns that share a row's label.

    Args:
        row_labels: ``(M,)`` integer labels of the anchors.
        column_labels: ``(N,)`` integer labels of the candidates.
        self_index: ``(M,)`` int64, the column each row excludes, or ``-1``.
        dtype: floating dtype of the result.

    Returns:
        ``(M, N)`` targets; a row without any positive is all zeros.

    Example:
        >>> import torch
        >>> labels = torch.tensor([0, 0, 1, 0])
        >>> label_targets(labels, labels, torch.arange(4))[0]
        tensor([0.0000, 0.5000, 0.0000, 0.5000])
    """
    columns = torch.arange(column_labels.shape[0], device=column_labels.device)
    positive = (row_labels[:, None] == column_labels[None, :]) & (
        columns[None, :] != self_index[:, None]
    )
    positive = positive.to(dtype)
    return positive / positive.sum(dim=1, keepdim=True).clamp_min(1.0)


def pseudo_semantic_loss(
    out0: Tensor,
    out1: Tensor,
    labels: Tensor,
    temperature: TemperatureLike = 0.2,
    weight: Optional[Tensor] = None,
    reduction: str = "mean",
    instance_mass: float = 0.0,
) -> Tensor:
    """Multi-positive NT-Xent: positives are the other view and all same-label views.

    Args:
        out0: ``(B, D)`` embeddings of the first view; normalized inside.
        out1: ``(B, D)`` embeddings of the second view.
        labels: ``(B,)`` integer pseudo-labels (e.g. ``PseudoLabeler.labels[index]``);
            any integers, only equality matters. Distinct labels give NT-Xent.
        temperature: a float or a ``(B,)`` tensor of per-sample temperatures ``> 0``.
        weight: ``(B,)`` per-sample weights ``>= 0``, or ``None``.
        reduction: ``"mean"``, ``"sum"`` or ``"none"`` (the ``(2B,)`` vector
            ``w_a l_a``, first view's anchors first).
        instance_mass: ``lambda`` in ``[0, 1]``, the target share held by the other
            view; ``0`` is SupCon's ``L_out``, ``1`` is NT-Xent whatever the labels.

    Returns:
        The loss: a scalar, or ``(2B,)`` for ``reduction="none"``.

    Example:
        >>> import torch
        >>> from tase_loss import nt_xent_loss
        >>> out0, out1 = torch.randn(8, 16), torch.randn(8, 16)
        >>> distinct = pseudo_semantic_loss(out0, out1, torch.arange(8))
        >>> torch.allclose(distinct, nt_xent_loss(out0, out1))
        True
        >>> pseudo_semantic_loss(out0, out1, torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])).shape
        torch.Size([])
    """
    check_embeddings("out0", out0)
    batch_size = out0.shape[0]
    check_labels("labels", labels, batch_size, out0.device, "out0")
    instance_mass = check_real("instance_mass", instance_mass, 0.0, 1.0)
    rows = torch.arange(2 * batch_size, device=out0.device)
    view_labels = labels.long().repeat(2)
    target = (1.0 - instance_mass) * label_targets(
        view_labels, view_labels, rows, accumulation_dtype(out0.dtype)
    )
    target[rows, rows.roll(batch_size)] += instance_mass
    return nt_xent_target_loss(out0, out1, target, temperature, weight, reduction)
