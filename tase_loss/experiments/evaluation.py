"""Evaluation the way the long-tailed SSL literature does it, plus pseudo-label diagnostics.

- :func:`linear_probe`: multinomial logistic regression on frozen, standardized features.
- :func:`knn_predict`: cosine k-nearest-neighbour vote weighted by similarity.
- :func:`per_class_accuracy` and :func:`group_accuracies`: Many / Medium / Few, their
  population Std, and All (the mean per-class accuracy; on a balanced test set it is the
  plain accuracy).
- :func:`pseudo_label_diagnostics`: how well the k-means pseudo-labels and frequency
  estimates track the true classes (NMI, rank correlation).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
from torch import nn

__all__ = [
    "extract_features",
    "group_accuracies",
    "knn_predict",
    "linear_probe",
    "per_class_accuracy",
    "pseudo_label_diagnostics",
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
) -> np.ndarray:
    """Cosine kNN: each query's ``k`` most similar memory items vote with their similarity.

    Ties between classes go to the lowest label.

    Example:
        >>> memory = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0]])
        >>> knn_predict(memory, np.array([0, 0, 1]), np.array([[0.2, 1.0]]), 2, k=2).tolist()
        [1]
    """
    memory = torch.nn.functional.normalize(torch.from_numpy(memory_features).double(), dim=1)
    queries = torch.nn.functional.normalize(torch.from_numpy(query_features).double(), dim=1)
    neighbours = min(k, memory.shape[0])
    similarity, index = (queries @ memory.T).topk(neighbours, dim=1)
    votes = torch.zeros(queries.shape[0], num_classes, dtype=torch.float64)
    votes.scatter_add_(1, torch.from_numpy(memory_labels).long()[index], similarity)
    return votes.argmax(dim=1).numpy()


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


def pseudo_label_diagnostics(
    pseudo_labels: np.ndarray,
    frequency: np.ndarray,
    true_labels: np.ndarray,
    groups: Mapping[str, Sequence[int]],
) -> dict[str, float]:
    """How well pseudo-labels and frequency estimates follow the true (long-tailed) classes.

    Returns:
        ``nmi``: normalized mutual information of pseudo-labels and true labels;
        ``frequency_spearman``: rank correlation of each sample's estimated frequency with
        its true class's frequency (1 = the estimate orders samples head to tail exactly;
        NaN when either is constant);
        ``frequency_few_over_many``: geometric-mean estimated frequency of true Few samples
        over that of true Many samples (the true ratio is far below 1).
    """
    from scipy.stats import spearmanr
    from sklearn.metrics import normalized_mutual_info_score

    class_frequency = np.bincount(true_labels) / true_labels.size
    log_frequency = np.log(frequency)
    few = np.isin(true_labels, list(groups["few"]))
    many = np.isin(true_labels, list(groups["many"]))
    constant = np.ptp(frequency) == 0 or np.ptp(class_frequency[true_labels]) == 0
    return {
        "nmi": float(normalized_mutual_info_score(true_labels, pseudo_labels)),
        "frequency_spearman": (
            float("nan") if constant else float(spearmanr(frequency, class_frequency[true_labels]).statistic)
        ),
        "frequency_few_over_many": float(np.exp(log_frequency[few].mean() - log_frequency[many].mean())),
    }
