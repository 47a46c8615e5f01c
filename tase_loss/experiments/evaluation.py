"""Evaluation the way the long-tailed SSL literature does it, plus pseudo-label diagnostics.

- :func:`linear_probe`: multinomial logistic regression on frozen, standardized features.
- :func:`knn_predict`: cosine k-nearest-neighbour vote weighted by similarity.
- :func:`per_class_accuracy` and :func:`group_accuracies`: Many / Medium / Few, their
  population Std, and All (the mean per-class accuracy; on a balanced test set it is the
  plain accuracy).
- :func:`frequency_quality`: how well frequency estimates track the true class sizes
  (rank correlation, share of the Few/Many gap recovered, NMI of the groups).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Optional

import numpy as np
import torch
from torch import nn

__all__ = [
    "extract_features",
    "frequency_quality",
    "group_accuracies",
    "knn_predict",
    "linear_probe",
    "per_class_accuracy",
]


@torch.no_grad()
def extract_features(
    backbone: nn.Module, images: np.ndarray, device: torch.device, batch_size: int = 512
) -> np.ndarray:
    """Backbone features ``(N, F)`` of ``(N, C, H, W)`` images, in eval mode, float32."""
    was_training = backbone.training
    backbone.eval()
    features = [
        backbone(torch.from_numpy(images[start : start + batch_size]).to(device)).float().cpu()
        for start in range(0, images.shape[0], batch_size)
    ]
    backbone.train(was_training)
    return torch.cat(features).numpy()


def linear_probe(
    train_features: np.ndarray,
    train_labels: np.ndarray,
    test_features: np.ndarray,
    regularization: float = 1.0,
    max_iterations: int = 2000,
) -> np.ndarray:
    """Fit logistic regression on standardized frozen features; predict the test set.

    Standardization uses the training features' mean and std. The lbfgs solver is
    deterministic.

    Args:
        train_features: ``(N, F)``; train_labels: ``(N,)``.
        test_features: ``(M, F)``.
        regularization: sklearn's ``C`` (inverse L2 strength).
        max_iterations: lbfgs iterations.

    Returns:
        ``(M,)`` predicted labels.

    Example:
        >>> features = np.array([[0.0, 1.0], [0.1, 0.9], [1.0, 0.0], [0.9, 0.1]])
        >>> linear_probe(features, np.array([0, 0, 1, 1]), features).tolist()
        [0, 0, 1, 1]
    """
    from sklearn.linear_model import LogisticRegression

    mean = train_features.mean(axis=0)
    scale = train_features.std(axis=0) + 1e-6
    classifier = LogisticRegression(C=regularization, max_iter=max_iterations)
    classifier.fit((train_features - mean) / scale, train_labels)
    return classifier.predict((test_features - mean) / scale).astype(np.int64)


def knn_predict(
    memory_features: np.ndarray,
    memory_labels: np.ndarray,
    query_features: np.ndarray,
    num_classes: int,
    k: int = 20,
    device: Optional[torch.device] = None,
) -> np.ndarray:
    """Cosine kNN: each query's ``k`` most similar memory items vote with their similarity.

    Computed on ``device`` (default the CPU; float64 there, float32 elsewhere). Ties
    between classes go to the lowest label.

    Example:
        >>> memory = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0]])
        >>> knn_predict(memory, np.array([0, 0, 1]), np.array([[0.2, 1.0]]), 2, k=2).tolist()
        [1]
    """
    device = torch.device("cpu") if device is None else device
    dtype = torch.float64 if device.type == "cpu" else torch.float32
    memory = torch.nn.functional.normalize(torch.as_tensor(memory_features, dtype=dtype, device=device), dim=1)
    queries = torch.nn.functional.normalize(torch.as_tensor(query_features, dtype=dtype, device=device), dim=1)
    neighbours = min(k, memory.shape[0])
    similarity, index = (queries @ memory.T).topk(neighbours, dim=1)
    votes = torch.zeros(queries.shape[0], num_classes, dtype=dtype, device=device)
    votes.scatter_add_(1, torch.as_tensor(memory_labels, device=device).long()[index], similarity)
    return votes.argmax(dim=1).cpu().numpy()


def per_class_accuracy(predictions: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
    """``(C,)`` accuracy of each class (NaN for a class absent from ``labels``).

    Example:
        >>> per_class_accuracy(np.array([0, 1, 1, 1]), np.array([0, 0, 1, 1]), 2).tolist()
        [0.5, 1.0]
    """
    correct = np.bincount(labels, weights=(predictions == labels), minlength=num_classes)
    total = np.bincount(labels, minlength=num_classes)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, correct / np.maximum(total, 1), np.nan)


def group_accuracies(per_class: np.ndarray, groups: Mapping[str, Sequence[int]]) -> dict[str, float]:
    """Mean per-class accuracy per group, ``all`` over classes, ``std`` of the group means.

    ``std`` is the population standard deviation (``ddof=0``) of the Many / Medium / Few
    accuracies, the spread the long-tailed SSL papers report.

    Example:
        >>> result = group_accuracies(np.array([0.9, 0.8, 0.6, 0.5]),
        ...                           {"many": [0], "medium": [1], "few": [2, 3]})
        >>> {name: round(value, 4) for name, value in result.items()}
        {'many': 0.9, 'medium': 0.8, 'few': 0.55, 'all': 0.7, 'std': 0.1472}
    """
    result = {name: float(np.mean(per_class[list(members)])) for name, members in groups.items()}
    result["all"] = float(np.mean(per_class))
    result["std"] = float(np.std([result[name] for name in groups]))
    return result


def frequency_quality(
    log_frequency: np.ndarray,
    true_labels: np.ndarray,
    groups: Mapping[str, Sequence[int]],
    pseudo_labels: Optional[np.ndarray] = None,
) -> dict[str, Optional[float]]:
    """How well per-sample frequency estimates follow the true (long-tailed) class sizes.

    Args:
        log_frequency: ``(N,)`` estimated ``log f_i`` of the training samples.
        true_labels: ``(N,)`` true classes.
        groups: the classes of the Many / Medium / Few groups.
        pseudo_labels: ``(N,)`` the estimator's groups, if it has any.

    Returns:
        ``spearman``: rank correlation of ``f_i`` with the true frequency of ``i``'s class
        (1 = the estimate orders samples head to tail exactly; ``None`` when either is
        constant); ``class_spearman``: the same for each class's mean ``log f`` against
        its size (``None`` when either is constant); ``gap_recovered``: the estimated mean
        ``log f`` of true Few samples minus that of true Many samples, as a fraction of the
        true gap (1 = the scale is right too; 0 = no signal); ``few_over_many``: ``exp`` of
        the estimated gap (the true value is far below 1); ``floor``: the lowest estimated
        ``log f`` minus the rarest class's true ``log f``, both taken relative to their
        mean over samples (below 0: some sample is estimated rarer than the rarest class
        is, by that many nats); ``nmi``: normalized mutual information of the estimator's
        groups with the classes (``None`` without groups).

    Example:
        >>> labels = np.array([0, 0, 0, 1])
        >>> truth = np.log(np.bincount(labels)[labels] / labels.size)
        >>> quality = frequency_quality(truth, labels, {"many": [0], "medium": [], "few": [1]})
        >>> round(quality["spearman"], 6), round(quality["gap_recovered"], 6)
        (1.0, 1.0)
    """
    from scipy.stats import spearmanr
    from sklearn.metrics import normalized_mutual_info_score

    true_log_frequency = np.log(np.bincount(true_labels)[true_labels] / true_labels.size)
    few = np.isin(true_labels, list(groups["few"]))
    many = np.isin(true_labels, list(groups["many"]))
    true_gap = true_log_frequency[few].mean() - true_log_frequency[many].mean()
    gap = log_frequency[few].mean() - log_frequency[many].mean()
    constant = np.ptp(log_frequency) == 0 or np.ptp(true_log_frequency) == 0
    counts = np.bincount(true_labels)
    present = np.flatnonzero(counts)
    class_mean = np.bincount(true_labels, log_frequency)[present] / counts[present]
    class_constant = np.ptp(class_mean) == 0 or np.ptp(counts[present]) == 0
    floor = (log_frequency.min() - log_frequency.mean()) - (true_log_frequency.min() - true_log_frequency.mean())
    return {
        "spearman": None if constant else float(spearmanr(log_frequency, true_log_frequency).statistic),
        "class_spearman": None if class_constant else float(spearmanr(class_mean, counts[present]).statistic),
        "floor": float(floor),
        "gap_recovered": float(gap / true_gap) if true_gap != 0 else None,
        "few_over_many": float(np.exp(gap)),
        "nmi": None if pseudo_labels is None else float(normalized_mutual_info_score(true_labels, pseudo_labels)),
    }
