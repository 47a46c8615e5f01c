"""Stage 2 of the OOD recipe: a frozen guide steers contrastive learning on ID data.

The paper's abstract says the stage-1 network guides a second, ID-only stage with a
guided contrastive loss and a distillation loss that keep the embedding space
balanced and well separated. Everything below the names is our design
(``docs/ood.md``); both losses are rows of
:func:`tase_loss.functional.contrastive_targets` over the ``2B`` views of a batch.

Guided contrastive loss. ``G = g g^T`` are the guide's cosine similarities. Anchor
``a``'s positives are its other view ``o(a)`` and its ``K`` nearest neighbours
``N(a)`` in the guide's space (excluding ``a`` and ``o(a)``); the guide sets the
attraction ``pi`` and the repulsion ``r``::

    pi[a, o(a)] = 1 - m,  pi[a, k] = m * softmax_{j in N(a)}(G[a, j] / tau_n)[k]  (k in N(a))
    r[a, k]     = u[a, k] / mean_{j negative} u[a, j],  u[a, k] = ((1 - G[a, k]) / 2) ** beta
    l_a = sum_k pi[a, k] (log sum_{j != a} r[a, j] exp(s[a, j] / t_a) - s[a, k] / t_a)

(``r = 1`` on positive columns). Negatives the guide finds close, likely same-class
samples of a tail class, are pushed less; ``K = 0`` and ``beta = 0`` give NT-Xent.

Similarity distillation. Per anchor, the KL divergence from the guide's similarity
distribution to the student's (as in SEED, Fang et al., ICLR 2021, within the batch)::

    p[a, k] = softmax_{k != a}(G[a, k] / tau_g),  q[a, k] = softmax_{k != a}(s[a, k] / t_a)
    l_a     = KL(p[a] || q[a]) = sum_k p[a, k] (log p[a, k] - log q[a, k])
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from tase_loss._numerics import accumulation_dtype, unit_rows
from tase_loss._validation import (
    TemperatureLike,
    check_embeddings,
    check_int,
    check_real,
    check_reduction,
    check_same_shape,
)
from tase_loss.functional import nt_xent_target_loss, weighted_reduce

__all__ = ["guided_contrastive_loss", "guided_targets", "similarity_distillation_loss"]


def guided_targets(
    guide: Tensor,
    num_neighbors: int,
    neighbor_mass: float,
    neighbor_temperature: float,
    repulsion_power: float,
) -> tuple[Tensor, Tensor]:
    """Attraction targets and repulsion weights for ``2B`` views from the guide.

    Args:
        guide: ``(2B, D)`` L2-normalized guide embeddings, first views first.
        num_neighbors: ``K``, guide neighbours added as positives per anchor.
        neighbor_mass: ``m``, the target mass the neighbours share.
        neighbor_temperature: ``tau_n``, sharpness of the split among neighbours.
        repulsion_power: ``beta``; ``0`` gives unit repulsion.

    Returns:
        ``(target, pair_weight)``, both ``(2B, 2B)`` in ``guide``'s dtype.

    Example:
        >>> import torch
        >>> guide = torch.nn.functional.normalize(torch.randn(8, 4), dim=1)
        >>> target, pair_weight = guided_targets(guide, 2, 0.5, 0.1, 1.0)
        >>> bool(torch.allclose(target.sum(dim=1), torch.ones(8)))
        True
        >>> int((target > 0).sum(dim=1)[0])  # the other view and 2 neighbours
        3
    """
    num_views = guide.shape[0]
    rows = torch.arange(num_views, device=guide.device)
    partner = rows.roll(num_views // 2)
    similarity = guide @ guide.T
    excluded = torch.zeros_like(similarity, dtype=torch.bool)
    excluded[rows, rows] = True
    excluded[rows, partner] = True

    target = torch.zeros_like(similarity)
    positive = excluded.clone()
    if num_neighbors > 0 and neighbor_mass > 0:
        neighbor_similarity, neighbors = similarity.masked_fill(excluded, float("-inf")).topk(
            num_neighbors, dim=1
        )
        split = torch.softmax(neighbor_similarity / neighbor_temperature, dim=1)
        target.scatter_(1, neighbors, neighbor_mass * split)
        positive.scatter_(1, neighbors, True)
        target[rows, partner] = 1.0 - neighbor_mass
    else:
        target[rows, partner] = 1.0

    pair_weight = torch.ones_like(similarity)
    negative = ~positive
    if repulsion_power != 0 and bool(negative.any()):
        closeness = ((1.0 - similarity) / 2.0).clamp_min(1e-6) ** repulsion_power
        closeness = closeness.masked_fill(positive, 0.0)
        mean = closeness.sum(dim=1, keepdim=True) / negative.sum(dim=1, keepdim=True)
        pair_weight = torch.where(negative, closeness / mean, pair_weight)
    return target, pair_weight


def _unit_guide(out0: Tensor, guide0: Tensor, guide1: Tensor) -> Tensor:
    """Validate the guide's views against ``out0``; return them as detached unit rows ``(2B, E)``."""
    check_embeddings("out0", out0)
    check_embeddings("guide0", guide0)
    check_embeddings("guide1", guide1)
    check_same_shape("guide1", guide1, "guide0", guide0)
    if guide0.shape[0] != out0.shape[0]:
        raise ValueError(f"guide0 holds {guide0.shape[0]} samples but out0 holds {out0.shape[0]}")
    if guide0.device != out0.device:
        raise ValueError(f"guide0 is on {guide0.device} but out0 is on {out0.device}")
    return unit_rows(torch.cat([guide0, guide1]).detach(), accumulation_dtype(out0.dtype))


def guided_contrastive_loss(
    out0: Tensor,
    out1: Tensor,
    guide0: Tensor,
    guide1: Tensor,
    num_neighbors: int = 4,
    neighbor_mass: float = 0.5,
    neighbor_temperature: float = 0.1,
    repulsion_power: float = 1.0,
    temperature: TemperatureLike = 0.2,
    weight: Optional[Tensor] = None,
    reduction: str = "mean",
) -> Tensor:
    """Contrastive loss whose positives and per-pair strengths come from a frozen guide.

    Args:
        out0: ``(B, D)`` student embeddings of the first view; normalized inside.
        out1: ``(B, D)`` student embeddings of the second view.
        guide0: ``(B, E)`` guide embeddings of the first view (any ``E``); detached
            and normalized inside.
        guide1: ``(B, E)`` guide embeddings of the second view.
        num_neighbors: ``K >= 0`` guide neighbours per anchor, at most ``2B - 2``.
        neighbor_mass: ``m`` in ``[0, 1)``, target mass on the neighbours.
        neighbor_temperature: ``tau_n > 0``, sharpness of the split among neighbours.
        repulsion_power: ``beta >= 0``; larger pushes guide-close negatives less.
        temperature: a float or a ``(B,)`` tensor of per-sample temperatures ``> 0``.
        weight: ``(B,)`` per-sample weights ``>= 0``, or ``None``.
        reduction: ``"mean"``, ``"sum"`` or ``"none"`` (``(2B,)``).

    Returns:
        The loss: a scalar, or ``(2B,)`` for ``reduction="none"``.

    Example:
        >>> import torch
        >>> from tase_loss import nt_xent_loss
        >>> out0, out1, g0, g1 = (torch.randn(8, 16) for _ in range(4))
        >>> plain = guided_contrastive_loss(out0, out1, g0, g1, num_neighbors=0,
        ...                                 repulsion_power=0.0)
        >>> torch.allclose(plain, nt_xent_loss(out0, out1))
        True
    """
    guide = _unit_guide(out0, guide0, guide1)
    batch_size = out0.shape[0]
    check_int("num_neighbors", num_neighbors, 0, max(0, 2 * batch_size - 2))
    neighbor_mass = check_real("neighbor_mass", neighbor_mass, 0.0, 1.0, exclusive_maximum=True)
    neighbor_temperature = check_real("neighbor_temperature", neighbor_temperature, 0.0, exclusive_minimum=True)
    repulsion_power = check_real("repulsion_power", repulsion_power, 0.0)
    target, pair_weight = guided_targets(guide, num_neighbors, neighbor_mass, neighbor_temperature, repulsion_power)
    return nt_xent_target_loss(out0, out1, target, temperature, weight, reduction, pair_weight=pair_weight)


def similarity_distillation_loss(
    out0: Tensor,
    out1: Tensor,
    guide0: Tensor,
    guide1: Tensor,
    guide_temperature: float = 0.1,
    temperature: TemperatureLike = 0.2,
    weight: Optional[Tensor] = None,
    reduction: str = "mean",
) -> Tensor:
    """KL divergence from the guide's in-batch similarity distribution to the student's.

    Args:
        out0: ``(B, D)`` student embeddings of the first view; normalized inside.
        out1: ``(B, D)`` student embeddings of the second view.
        guide0: ``(B, E)`` guide embeddings of the first view; detached and normalized.
        guide1: ``(B, E)`` guide embeddings of the second view.
        guide_temperature: ``tau_g > 0`` of the guide's distribution.
        temperature: the student's temperature, a float or ``(B,)`` tensor ``> 0``.
        weight: ``(B,)`` per-sample weights ``>= 0``, or ``None``.
        reduction: ``"mean"``, ``"sum"`` or ``"none"`` (``(2B,)``).

    Returns:
        The loss, ``>= 0``: a scalar, or ``(2B,)`` for ``reduction="none"``.

    Example:
        >>> import torch
        >>> out0, out1 = torch.randn(8, 16), torch.randn(8, 16)
        >>> same = similarity_distillation_loss(out0, out1, out0, out1,
        ...                                     guide_temperature=0.2, temperature=0.2)
        >>> abs(float(same)) < 1e-5
        True
    """
    check_reduction(reduction)  # the per-row entropy joins the rows before the reduction
    guide = _unit_guide(out0, guide0, guide1)
    guide_temperature = check_real("guide_temperature", guide_temperature, 0.0, exclusive_minimum=True)
    guide_logits = (guide @ guide.T / guide_temperature).fill_diagonal_(float("-inf"))
    guide_distribution = torch.softmax(guide_logits, dim=1)
    cross_entropy = nt_xent_target_loss(out0, out1, guide_distribution, temperature, weight, "none")
    row_weight = None if weight is None else weight.to(cross_entropy.dtype).repeat(2)
    negative_entropy = torch.special.xlogy(guide_distribution, guide_distribution).sum(dim=1)
    unit_weight = torch.ones_like(negative_entropy) if row_weight is None else row_weight
    return weighted_reduce(cross_entropy + unit_weight * negative_entropy, row_weight, reduction)
