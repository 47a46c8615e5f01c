"""Independent loop oracles for the OOD losses, written from the formulas in docs/ood.md.

Plain Python loops over float64 tensors; they share no code with tase_loss.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def _unit(vector: Tensor) -> Tensor:
    return vector / torch.sqrt((vector * vector).sum())


def _views(out0: Tensor, out1: Tensor) -> list[Tensor]:
    return [_unit(row) for row in out0] + [_unit(row) for row in out1]


def _weighted_mean(losses: list[Tensor], weights: list[Tensor]) -> Tensor:
    return sum(w * loss for w, loss in zip(weights, losses)) / sum(weights)


def target_rows_loop(queries, keys, target, self_index, temperature, pair_weight=None):
    """sum_k pi_ak (log sum_{j != self} r_aj exp(s_aj / t_a) - s_ak / t_a), row by row."""
    losses = []
    for a in range(queries.shape[0]):
        logits = [torch.dot(queries[a], keys[k]) / temperature[a] for k in range(keys.shape[0])]
        denominator = 0.0
        for k in range(keys.shape[0]):
            if k != self_index[a]:
                r = 1.0 if pair_weight is None else float(pair_weight[a][k])
                denominator = denominator + r * torch.exp(logits[k])
        lse = torch.log(denominator)
        loss = 0.0
        for k in range(keys.shape[0]):
            if float(target[a][k]) != 0.0:
                loss = loss + float(target[a][k]) * (lse - logits[k])
        losses.append(loss)
    return losses


def pseudo_semantic_loop(out0, out1, labels, temperature, weight, instance_mass=0.0):
    """SupCon L_out over 2B views with per-sample temperature and weight, a share
    instance_mass of the target on the other view."""
    views = _views(out0, out1)
    size = len(views)
    view_labels = [int(label) for label in labels] * 2
    temperatures = list(temperature) * 2
    losses = []
    for a in range(size):
        positives = [k for k in range(size) if k != a and view_labels[k] == view_labels[a]]
        logits = [torch.dot(views[a], views[k]) / temperatures[a] for k in range(size)]
        lse = torch.log(sum(torch.exp(logits[k]) for k in range(size) if k != a))
        supervised = lse - sum(logits[p] for p in positives) / len(positives)
        instance = lse - logits[(a + size // 2) % size]
        losses.append((1.0 - instance_mass) * supervised + instance_mass * instance)
    return _weighted_mean(losses, list(weight) * 2)


def guided_loop(out0, out1, guide0, guide1, num_neighbors, neighbor_mass, neighbor_temperature,
                repulsion_power, temperature, weight):
    """Guided contrastive loss: guide neighbours as soft positives, guide-scaled repulsion."""
    views = _views(out0, out1)
    guides = [_unit(row.detach()) for row in guide0] + [_unit(row.detach()) for row in guide1]
    size = len(views)
    half = size // 2
    temperatures = list(temperature) * 2
    losses = []
    for a in range(size):
        partner = (a + half) % size
        guide_sim = [float(torch.dot(guides[a], guides[k])) for k in range(size)]
        candidates = sorted((k for k in range(size) if k not in (a, partner)),
                            key=lambda k: -guide_sim[k])
        neighbors = candidates[:num_neighbors] if neighbor_mass > 0 else []
        target = {}
        if neighbors:
            scores = [math.exp(guide_sim[k] / neighbor_temperature) for k in neighbors]
            for k, score in zip(neighbors, scores):
                target[k] = neighbor_mass * score / sum(scores)
            target[partner] = 1.0 - neighbor_mass
        else:
            target[partner] = 1.0
        negatives = [k for k in range(size) if k != a and k not in target]
        raw = {k: ((1.0 - guide_sim[k]) / 2.0) ** repulsion_power for k in negatives}
        mean_raw = sum(raw.values()) / len(raw) if raw else 1.0
        repulsion = {k: (raw[k] / mean_raw if repulsion_power != 0 else 1.0) for k in negatives}
        logits = [torch.dot(views[a], views[k]) / temperatures[a] for k in range(size)]
        lse = torch.log(sum(repulsion.get(k, 1.0) * torch.exp(logits[k])
                            for k in range(size) if k != a))
        losses.append(sum(mass * (lse - logits[k]) for k, mass in target.items()))
    return _weighted_mean(losses, list(weight) * 2)


def distillation_loop(out0, out1, guide0, guide1, guide_temperature, temperature, weight):
    """KL(p_a || q_a) with p, q softmaxes over k != a of guide and student similarities."""
    views = _views(out0, out1)
    guides = [_unit(row.detach()) for row in guide0] + [_unit(row.detach()) for row in guide1]
    size = len(views)
    temperatures = list(temperature) * 2
    losses = []
    for a in range(size):
        others = [k for k in range(size) if k != a]
        guide_exp = {k: torch.exp(torch.dot(guides[a], guides[k]) / guide_temperature) for k in others}
        student_exp = {k: torch.exp(torch.dot(views[a], views[k]) / temperatures[a]) for k in others}
        guide_total = sum(guide_exp.values())
        student_total = sum(student_exp.values())
        kl = 0.0
        for k in others:
            p = guide_exp[k] / guide_total
            q = student_exp[k] / student_total
            kl = kl + p * (torch.log(p) - torch.log(q))
        losses.append(kl)
    return _weighted_mean(losses, list(weight) * 2)


def domain_loop(logits, is_ood, weight):
    """Weighted mean of -[y log sigmoid(z) + (1 - y) log(1 - sigmoid(z))]."""
    losses = []
    for z, y in zip(logits, is_ood):
        probability = 1.0 / (1.0 + torch.exp(-z))
        losses.append(-torch.log(probability) if bool(y) else -torch.log(1.0 - probability))
    return _weighted_mean(losses, list(weight))
