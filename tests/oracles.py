"""Independent oracles: plain loops written from the formulas, not from the library.

Each returns a differentiable scalar or vector, so gradients can be compared too.
Use float64 inputs.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def _unit(vector: Tensor) -> Tensor:
    return vector / torch.sqrt((vector * vector).sum())


def row_losses_loop(
    queries: Tensor,
    keys: Tensor,
    positive_index: list[int],
    self_index: list[int],
    temperature: Tensor,
) -> list[Tensor]:
    """l_a = -s_ap / t_a + log sum_{k != self(a)} exp(s_ak / t_a), one row at a time."""
    losses = []
    for a in range(queries.shape[0]):
        similarities = [torch.dot(queries[a], keys[k]) / temperature[a] for k in range(keys.shape[0])]
        denominator = sum(
            torch.exp(similarities[k]) for k in range(keys.shape[0]) if k != self_index[a]
        )
        losses.append(-similarities[positive_index[a]] + torch.log(denominator))
    return losses


def nt_xent_loop(out0: Tensor, out1: Tensor, temperature: Tensor, weight: Tensor) -> Tensor:
    """Weighted NT-Xent over 2B anchors; temperature and weight are per sample (B,)."""
    batch_size = out0.shape[0]
    views = [_unit(out0[b]) for b in range(batch_size)] + [_unit(out1[b]) for b in range(batch_size)]
    embeddings = torch.stack(views)
    anchors = range(2 * batch_size)
    losses = row_losses_loop(
        embeddings,
        embeddings,
        [(a + batch_size) % (2 * batch_size) for a in anchors],
        list(anchors),
        torch.cat([temperature, temperature]),
    )
    weights = torch.cat([weight, weight])
    return sum(weights[a] * losses[a] for a in anchors) / weights.sum()


def moco_loop(
    queries: Tensor, keys: Tensor, queue: Tensor, temperature: Tensor, weight: Tensor
) -> Tensor:
    """Weighted InfoNCE; candidates are [keys; queue], query b's positive is key b."""
    batch_size = queries.shape[0]
    candidates = torch.stack([_unit(row) for row in torch.cat([keys, queue])])
    anchors = torch.stack([_unit(row) for row in queries])
    losses = row_losses_loop(
        anchors, candidates, list(range(batch_size)), [-1] * batch_size, temperature
    )
    return sum(weight[b] * losses[b] for b in range(batch_size)) / weight.sum()


def lightly_nt_xent(out0: Tensor, out1: Tensor, temperature: float) -> Tensor:
    """lightly's NTXentLoss (memory_bank_size=0, one process), transcribed.

    lightly builds the four blocks of the 2B x 2B logit matrix, drops the diagonal of
    the same-view blocks and takes a cross-entropy whose target is the other view.
    """
    out0 = torch.nn.functional.normalize(out0, dim=1)
    out1 = torch.nn.functional.normalize(out1, dim=1)
    batch_size = out0.shape[0]
    logits_00 = out0 @ out0.T / temperature
    logits_01 = out0 @ out1.T / temperature
    logits_10 = out1 @ out0.T / temperature
    logits_11 = out1 @ out1.T / temperature
    off_diagonal = ~torch.eye(batch_size, dtype=torch.bool)
    logits_00 = logits_00[off_diagonal].view(batch_size, -1)
    logits_11 = logits_11[off_diagonal].view(batch_size, -1)
    logits_0100 = torch.cat([logits_01, logits_00], dim=1)
    logits_1011 = torch.cat([logits_10, logits_11], dim=1)
    logits = torch.cat([logits_0100, logits_1011], dim=0)
    labels = torch.arange(batch_size).repeat(2)
    return torch.nn.functional.cross_entropy(logits, labels)


def cosine_loop(prediction: Tensor, target: Tensor, weight: Tensor, variant: str) -> Tensor:
    """Weighted mean of BYOL's 2 - 2 cos or SimSiam's -cos, target detached."""
    values = []
    for b in range(prediction.shape[0]):
        cosine = torch.dot(_unit(prediction[b]), _unit(target[b].detach()))
        values.append(2 - 2 * cosine if variant == "byol" else -cosine)
    return sum(weight[b] * values[b] for b in range(len(values))) / weight.sum()


def power_map(frequency: list[float], exponent: float, scale: float, low: float, high: float) -> list[float]:
    """clip(scale * (f / geometric_mean(f)) ** exponent, low, high), in plain Python."""
    log_mean = sum(math.log(value) for value in frequency) / len(frequency)
    return [
        min(max(scale * math.exp(exponent * (math.log(value) - log_mean)), low), high)
        for value in frequency
    ]
