"""Label-free per-sample weights for rwSAM: inverse kNN density of the features.

rwSAM (Liu et al., ICLR 2022) weights samples inversely to a kernel density estimate
on the encoder's features; the paper does not publish the kernel or the bandwidth
(the official code loads precomputed weights from a file). Our choice, configurable:

- features are L2-normalized and their ``k`` nearest neighbours found by FAISS exact
  inner-product search (``IndexFlatIP``), excluding the sample itself;
- ``kernel="exponential"`` (default): a von Mises-Fisher kernel over the neighbours,
  ``density_i = mean_{j in kNN(i)} exp(s_ij / h)`` with cosine similarity ``s_ij``
  and bandwidth ``h`` (default 0.1);
  ``kernel="kth_neighbor"``: the classical kNN estimate with the dimension folded into
  ``beta``, ``density_i = 1 / r_k(i)``, ``r_k`` the chordal distance to the k-th
  neighbour;
- ``w_i = clip((density_i / g) ** -beta, 1 / w_max, w_max)`` with ``g`` the geometric
  mean density of the dataset, then normalized to mean 1 in the batch (rwSAM only
  uses relative weights).

The similarities of the neighbours FAISS returns are recomputed in float64, so the
estimate matches a brute-force float64 computation whenever the neighbour sets agree.
:class:`FrequencyWeights` offers TASE's cluster-frequency estimate as the alternative
weight source; both are called as ``weights(index)``.

Like :mod:`tase_loss.pseudo_labeler`, ``faiss`` is imported lazily.
"""

from __future__ import annotations

import math
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from tase_loss._faiss import faiss_threads, import_faiss
from tase_loss._validation import check_embeddings, check_index, check_state_dict
from tase_loss.pseudo_labeler import PseudoLabeler
from tase_loss.reweighting import SampleReweighter

__all__ = ["FrequencyWeights", "KNNDensityWeights", "inverse_density_weights", "knn_log_density"]

KERNELS = ("exponential", "kth_neighbor")
_MIN_DISTANCE = 1e-6
_QUERY_CHUNK = 4096


def _check_density_options(k: object, kernel: object, bandwidth: object) -> None:
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be an integer >= 1, got {k!r}")
    if kernel not in KERNELS:
        raise ValueError(f"kernel must be one of {KERNELS}, got {kernel!r}")
    if not (isinstance(bandwidth, (int, float)) and math.isfinite(bandwidth) and bandwidth > 0):
        raise ValueError(f"bandwidth must be a finite value > 0, got {bandwidth!r}")


def knn_log_density(
    features: Tensor,
    k: int = 10,
    kernel: str = "exponential",
    bandwidth: float = 0.1,
    num_threads: Optional[int] = None,
) -> Tensor:
    """Log kNN density of each row among the other rows, up to an additive constant.

    Args:
        features: ``(N, D)`` features (any device); L2-normalized inside, in float64.
        k: neighbours per point, ``1 <= k < N``.
        kernel: ``"exponential"``: ``log mean_j exp(s_ij / bandwidth)``;
            ``"kth_neighbor"``: ``-log r_k`` with ``r_k = sqrt(2 - 2 s_ik)``
            (clamped at ``1e-6`` for duplicates).
        bandwidth: ``h`` of the exponential kernel.
        num_threads: OpenMP threads FAISS may use; ``None`` leaves FAISS's setting.

    Returns:
        ``(N,)`` float64 log densities on the CPU.

    Example:
        >>> import torch
        >>> _ = torch.manual_seed(0)
        >>> points = torch.cat([torch.randn(50, 8) * 0.1 + 1.0, torch.randn(5, 8)])
        >>> log_density = knn_log_density(points, k=4)
        >>> bool(log_density[:50].mean() > log_density[50:].mean())
        True
    """
    check_embeddings("features", features)
    _check_density_options(k, kernel, bandwidth)
    num_points = features.shape[0]
    if k >= num_points:
        raise ValueError(f"k={k} needs more than {k} points, got {num_points}")
    unit = F.normalize(features.detach().to("cpu", torch.float64), dim=1)
    neighbors = _knn_excluding_self(unit, k, num_threads)
    similarity = torch.cat(
        [
            torch.einsum(
                "nd,nkd->nk",
                unit[start : start + _QUERY_CHUNK],
                unit[neighbors[start : start + _QUERY_CHUNK]],
            )
            for start in range(0, num_points, _QUERY_CHUNK)
        ]
    )
    if kernel == "exponential":
        return torch.logsumexp(similarity / bandwidth, dim=1) - math.log(k)
    kth_similarity = similarity.min(dim=1).values
    distance = torch.sqrt(torch.clamp(2.0 - 2.0 * kth_similarity, min=0.0)).clamp(min=_MIN_DISTANCE)
    return -torch.log(distance)


def _knn_excluding_self(unit: Tensor, k: int, num_threads: Optional[int]) -> Tensor:
    """``(N, k)`` indices of each row's k most similar other rows (exact search)."""
    faiss = import_faiss("kNN density weights")
    points = np.ascontiguousarray(unit.float().numpy())
    index = faiss.IndexFlatIP(points.shape[1])
    with faiss_threads(faiss, num_threads):
        index.add(points)
        _, found = index.search(points, k + 1)
    found = torch.from_numpy(found).long()
    # Move the point itself (wherever ties put it) to the end and keep the first k; if
    # duplicates pushed it out of the k + 1, the first k are k others anyway.
    is_self = found == torch.arange(found.shape[0])[:, None]
    order = torch.argsort(is_self.to(torch.int8), dim=1, stable=True)
    return torch.gather(found, 1, order)[:, :k]


def inverse_density_weights(
    log_density: Tensor,
    beta: float = 1.0,
    max_weight: float = 10.0,
    log_reference: Optional[float] = None,
) -> Tensor:
    """``w_i ∝ clip((density_i / g) ** -beta, 1 / w_max, w_max)``, normalized to mean 1.

    Args:
        log_density: ``(B,)`` log densities of the batch.
        beta: exponent ``>= 0``; ``0`` gives unit weights.
        max_weight: clip bound ``>= 1`` of the weight relative to the reference.
        log_reference: ``log g``; ``None`` uses the batch's mean log density.

    Returns:
        ``(B,)`` float32 weights with mean 1, on ``log_density``'s device.

    Example:
        >>> import torch
        >>> inverse_density_weights(torch.tensor([0.0, 0.0, -2.0]), beta=0.5)
        tensor([0.6358, 0.6358, 1.7284])
    """
    _check_weight_options(beta, max_weight)
    if not isinstance(log_density, Tensor) or log_density.dim() != 1 or log_density.numel() == 0:
        raise ValueError("log_density must be a (B,) tensor with B > 0")
    log_density = log_density.double()
    reference = log_density.mean() if log_reference is None else log_reference
    weight = torch.exp(-beta * (log_density - reference)).clamp(1.0 / max_weight, max_weight)
    return (weight / weight.mean()).float()


def _check_weight_options(beta: object, max_weight: object) -> None:
    if not (isinstance(beta, (int, float)) and math.isfinite(beta) and beta >= 0):
        raise ValueError(f"beta must be a finite value >= 0, got {beta!r}")
    if not (isinstance(max_weight, (int, float)) and math.isfinite(max_weight) and max_weight >= 1):
        raise ValueError(f"max_weight must be a finite value >= 1, got {max_weight!r}")


class KNNDensityWeights:
    """Per-sample rwSAM weights from the kNN density of a feature bank.

    Feed it detached features as batches pass (:meth:`update`), call :meth:`refresh`
    (e.g. at the end of every epoch) to re-estimate every stored sample's density
    among the stored samples, and ask for a batch's weights with ``weights(index)``.
    Before the first refresh every weight is 1 (rwSAM is then plain SAM); a sample
    not stored at the last refresh gets the neutral weight of the reference density.

    Args:
        num_samples: ``N``, the size of the training set; indices lie in ``[0, N)``.
        feature_dim: ``D`` of the stored features.
        k: neighbours per sample.
        kernel: ``"exponential"`` or ``"kth_neighbor"`` (see :func:`knn_log_density`).
        bandwidth: ``h`` of the exponential kernel.
        beta: weight exponent (see :func:`inverse_density_weights`).
        max_weight: clip bound of the weights relative to the geometric mean density.
        num_threads: OpenMP threads FAISS may use.

    Example:
        >>> import torch
        >>> weights = KNNDensityWeights(num_samples=60, feature_dim=8, k=5)
        >>> weights.update(torch.arange(60), torch.randn(60, 8))
        >>> weights.refresh()
        >>> batch = weights(torch.tensor([0, 1, 2, 3]))
        >>> batch.shape, round(float(batch.mean()), 4)
        (torch.Size([4]), 1.0)
    """

    def __init__(
        self,
        num_samples: int,
        feature_dim: int,
        *,
        k: int = 10,
        kernel: str = "exponential",
        bandwidth: float = 0.1,
        beta: float = 1.0,
        max_weight: float = 10.0,
        num_threads: Optional[int] = None,
    ) -> None:
        for name, value in (("num_samples", num_samples), ("feature_dim", feature_dim)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        _check_density_options(k, kernel, bandwidth)
        _check_weight_options(beta, max_weight)
        if num_threads is not None and (
            isinstance(num_threads, bool) or not isinstance(num_threads, int) or num_threads < 1
        ):
            raise ValueError(f"num_threads must be an integer >= 1, got {num_threads!r}")
        self.num_samples = num_samples
        self.feature_dim = feature_dim
        self.k = k
        self.kernel = kernel
        self.bandwidth = float(bandwidth)
        self.beta = float(beta)
        self.max_weight = float(max_weight)
        self.num_threads = num_threads
        self.bank = torch.zeros(num_samples, feature_dim)
        self.seen = torch.zeros(num_samples, dtype=torch.bool)
        self.log_density = torch.zeros(num_samples, dtype=torch.float64)
        self.has_estimate = torch.zeros(num_samples, dtype=torch.bool)

    @property
    def is_fitted(self) -> bool:
        """Whether :meth:`refresh` has produced estimates."""
        return bool(self.has_estimate.any())

    def update(self, index: Tensor, features: Tensor) -> None:
        """Store detached, L2-normalized ``(B, D)`` features of the samples ``index``."""
        check_embeddings("features", features)
        if features.shape[1] != self.feature_dim:
            raise ValueError(f"features must have {self.feature_dim} columns, got {features.shape[1]}")
        index = check_index(index, features.shape[0], self.num_samples).cpu().long()
        self.bank[index] = F.normalize(features.detach().float(), dim=1).cpu()
        self.seen[index] = True

    def refresh(self) -> None:
        """Re-estimate the density of every stored sample among the stored samples.

        Raises:
            ValueError: if at most ``k`` samples are stored.
        """
        seen_index = self.seen.nonzero().squeeze(1)
        if seen_index.numel() <= self.k:
            raise ValueError(
                f"refresh() needs more than k={self.k} stored samples, got {seen_index.numel()}"
            )
        log_density = knn_log_density(
            self.bank[seen_index], self.k, self.kernel, self.bandwidth, self.num_threads
        )
        self.log_density.zero_()
        self.has_estimate.zero_()
        self.log_density[seen_index] = log_density
        self.has_estimate[seen_index] = True

    def __call__(self, index: Tensor) -> Tensor:
        """``(B,)`` float32 weights of the samples ``index`` (mean 1), on ``index``'s device."""
        if not isinstance(index, Tensor) or index.dim() != 1:
            raise ValueError("index must be a (B,) torch.Tensor")
        cpu_index = check_index(index, index.shape[0], self.num_samples).cpu().long()
        if not self.is_fitted:
            return torch.ones(index.shape[0], device=index.device)
        log_reference = float(self.log_density[self.has_estimate].mean())
        log_density = torch.where(
            self.has_estimate[cpu_index],
            self.log_density[cpu_index],
            torch.tensor(log_reference, dtype=torch.float64),
        )
        weight = inverse_density_weights(log_density, self.beta, self.max_weight, log_reference)
        return weight.to(index.device)

    def state_dict(self) -> dict[str, Tensor]:
        """The bank and the estimates; the options are the constructor's."""
        return {
            "bank": self.bank.clone(),
            "seen": self.seen.clone(),
            "log_density": self.log_density.clone(),
            "has_estimate": self.has_estimate.clone(),
        }

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        """Restore :meth:`state_dict`'s output; shapes must match."""
        expected = {
            "bank": (self.num_samples, self.feature_dim),
            "seen": (self.num_samples,),
            "log_density": (self.num_samples,),
            "has_estimate": (self.num_samples,),
        }
        check_state_dict(state, expected)
        self.bank = state["bank"].float().clone()
        self.seen = state["seen"].bool().clone()
        self.log_density = state["log_density"].double().clone()
        self.has_estimate = state["has_estimate"].bool().clone()

    def __repr__(self) -> str:
        return (
            f"KNNDensityWeights(num_samples={self.num_samples}, feature_dim={self.feature_dim}, "
            f"k={self.k}, kernel={self.kernel!r}, bandwidth={self.bandwidth}, beta={self.beta}, "
            f"max_weight={self.max_weight})"
        )


class FrequencyWeights:
    """TASE's cluster-frequency estimate as an rwSAM weight source.

    ``weights(index)`` maps :meth:`PseudoLabeler.frequency` through a
    :class:`~tase_loss.SampleReweighter` (against the dataset's reference) and
    normalizes to mean 1 in the batch; before the labeler's first clustering every
    weight is 1.

    Args:
        pseudo_labeler: the source of frequency estimates.
        reweighter: frequency -> weight; ``SampleReweighter()`` by default.

    Example:
        >>> import torch
        >>> from tase_loss import PseudoLabeler
        >>> labeler = PseudoLabeler(num_samples=40, feature_dim=4, num_clusters=3,
        ...                         warmup_epochs=0)
        >>> weights = FrequencyWeights(labeler)
        >>> weights(torch.tensor([0, 1]))
        tensor([1., 1.])
    """

    def __init__(
        self, pseudo_labeler: PseudoLabeler, reweighter: Optional[SampleReweighter] = None
    ) -> None:
        if not isinstance(pseudo_labeler, PseudoLabeler):
            raise TypeError(f"pseudo_labeler must be a PseudoLabeler, got {type(pseudo_labeler).__name__}")
        self.pseudo_labeler = pseudo_labeler
        self.reweighter = reweighter or SampleReweighter()

    def __call__(self, index: Tensor) -> Tensor:
        """``(B,)`` float32 weights of the samples ``index`` (mean 1), on ``index``'s device."""
        if not self.pseudo_labeler.is_fitted:
            if not isinstance(index, Tensor) or index.dim() != 1:
                raise ValueError("index must be a (B,) torch.Tensor")
            check_index(index, index.shape[0], self.pseudo_labeler.num_samples)
            return torch.ones(index.shape[0], device=index.device)
        frequency = self.pseudo_labeler.frequency(index)
        weight = self.reweighter(frequency, self.pseudo_labeler.frequency_reference())
        return weight / weight.mean()

    def __repr__(self) -> str:
        return f"FrequencyWeights({self.pseudo_labeler!r}, {self.reweighter!r})"
