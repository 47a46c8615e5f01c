"""Pseudo-labels and frequency estimates from spherical k-means over a feature bank.

FAISS is imported lazily (through :mod:`tase_loss._faiss`), so the losses work without it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Optional, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from tase_loss import distributed
from tase_loss._faiss import faiss_threads, import_faiss
from tase_loss._validation import check_embeddings, check_index, check_state_dict
from tase_loss.reweighting import FrequencyReference

__all__ = ["NotFittedError", "PseudoLabeler"]


class NotFittedError(ValueError):
    """The pseudo-labeler was asked for estimates before its first clustering."""


class PseudoLabeler:
    """Feature bank + FAISS spherical k-means -> per-sample pseudo-labels and frequencies.

    Feed it detached features as batches pass (:meth:`update`) and call
    :meth:`maybe_recluster` at the end of every epoch. After ``warmup_epochs`` it
    clusters the whole bank every ``recluster_every`` epochs; sample ``i`` in a cluster
    of size ``n_c`` gets the frequency ``n_c / N``. With several values of
    ``num_clusters`` (an ensemble) a sample's estimate is the geometric mean over the
    members. Across re-clusterings the log-frequency is smoothed by an exponential
    moving average (cluster ids change between fits; a sample's frequency does not).
    A sample that has no estimate yet gets the neutral value ``g``, the geometric mean
    of all estimates, so the temperature and weight maps leave it at NT-Xent's values.

    The bank stays on the CPU (FAISS clusters there); ``bank_dtype=torch.float16``
    halves its memory for datasets of millions of samples.

    With ``gather_distributed=True`` under ``torch.distributed``, :meth:`update`
    gathers every rank's ``(index, features)`` so that all banks stay identical, and
    :meth:`recluster` fits k-means on rank 0 only and broadcasts the labels and
    estimates: every rank ends with bit-identical labels and frequencies (FAISS's
    multi-threaded k-means need not be bit-reproducible across processes, and one fit
    costs the shared host CPUs one fit instead of ``W``). Every rank must call
    :meth:`update` and :meth:`recluster` (or :meth:`maybe_recluster`) alike.

    Args:
        num_samples: ``N``, the size of the training set; indices lie in ``[0, N)``.
        feature_dim: ``D``, the feature size stored in the bank.
        num_clusters: ``k``, or a sequence of ``k`` values for an ensemble.
        warmup_epochs: index of the first epoch at whose end the bank is clustered
            (0-based), so epochs ``0 .. warmup_epochs`` train plain NT-Xent.
        recluster_every: epochs between clusterings after the warm-up.
        momentum: EMA factor of the log-frequency, in ``[0, 1)``; ``0`` keeps only the
            latest clustering.
        num_iterations: k-means iterations per fit.
        seed: seed of the k-means initialization (member ``j`` uses ``seed + j``).
        num_threads: OpenMP threads FAISS may use; ``None`` leaves FAISS's setting.
        bank_dtype: ``torch.float32`` or ``torch.float16``.
        gather_distributed: share updates and clusterings across the ranks of the
            default process group (the identity without one).

    Example:
        >>> import torch
        >>> labeler = PseudoLabeler(num_samples=100, feature_dim=8, num_clusters=4,
        ...                         warmup_epochs=0)
        >>> labeler.update(torch.arange(100), torch.randn(100, 8))
        >>> labeler.maybe_recluster(epoch=0)
        True
        >>> labeler.frequency(torch.tensor([0, 1])).shape
        torch.Size([2])
    """

    def __init__(
        self,
        num_samples: int,
        feature_dim: int,
        num_clusters: Union[int, Sequence[int]] = 10,
        *,
        warmup_epochs: int = 10,
        recluster_every: int = 1,
        momentum: float = 0.5,
        num_iterations: int = 20,
        seed: int = 0,
        num_threads: Optional[int] = None,
        bank_dtype: torch.dtype = torch.float32,
        gather_distributed: bool = False,
    ) -> None:
        cluster_counts = (num_clusters,) if isinstance(num_clusters, int) else tuple(num_clusters)
        _check_count("num_samples", num_samples, minimum=1)
        _check_count("feature_dim", feature_dim, minimum=1)
        if not cluster_counts:
            raise ValueError("num_clusters must not be empty")
        for count in cluster_counts:
            _check_count("num_clusters", count, minimum=1)
            if count > num_samples:
                raise ValueError(
                    f"num_clusters={count} is larger than num_samples={num_samples}"
                )
        _check_count("warmup_epochs", warmup_epochs, minimum=0)
        _check_count("recluster_every", recluster_every, minimum=1)
        _check_count("num_iterations", num_iterations, minimum=1)
        if num_threads is not None:
            _check_count("num_threads", num_threads, minimum=1)
        if not (isinstance(momentum, (int, float)) and 0 <= momentum < 1):
            raise ValueError(f"momentum must lie in [0, 1), got {momentum!r}")
        if bank_dtype not in (torch.float32, torch.float16):
            raise TypeError(f"bank_dtype must be torch.float32 or torch.float16, got {bank_dtype}")

        self.num_samples = num_samples
        self.feature_dim = feature_dim
        self.num_clusters = cluster_counts
        self.warmup_epochs = warmup_epochs
        self.recluster_every = recluster_every
        self.momentum = float(momentum)
        self.num_iterations = num_iterations
        self.seed = seed
        self.num_threads = num_threads
        self.gather_distributed = bool(gather_distributed)

        self.bank = torch.zeros(num_samples, feature_dim, dtype=bank_dtype)
        self.seen = torch.zeros(num_samples, dtype=torch.bool)
        self.labels = torch.full((num_samples,), -1, dtype=torch.int64)
        self.log_frequency = torch.zeros(num_samples, dtype=torch.float64)
        self.has_estimate = torch.zeros(num_samples, dtype=torch.bool)
        self.num_fits = 0
        self._reference: Optional[FrequencyReference] = None

    @property
    def is_fitted(self) -> bool:
        """Whether at least one clustering has produced estimates."""
        return self.num_fits > 0

    def update(self, index: Tensor, features: Tensor) -> None:
        """Store detached, L2-normalized features of a batch in the bank.

        Args:
            index: ``(B,)`` dataset indices of the batch (this rank's, when gathering).
            features: ``(B, D)`` features (any device; copied to the CPU).
        """
        check_embeddings("features", features)
        if features.shape[1] != self.feature_dim:
            raise ValueError(
                f"features must have {self.feature_dim} columns, got {features.shape[1]}"
            )
        index = check_index(index, features.shape[0], self.num_samples).long()
        features = features.detach()
        if self.gather_distributed:
            index = distributed.all_gather_rows(index.to(features.device))[0]
            features = distributed.all_gather_rows(features)[0]
        index = index.cpu()
        rows = F.normalize(features.float(), dim=1).cpu()
        self.bank[index] = rows.to(self.bank.dtype)
        self.seen[index] = True

    def should_recluster(self, epoch: int) -> bool:
        """Whether the schedule asks for a clustering at the end of ``epoch`` (0-based)."""
        since_warmup = epoch - self.warmup_epochs
        return since_warmup >= 0 and since_warmup % self.recluster_every == 0

    def maybe_recluster(self, epoch: int) -> bool:
        """Re-cluster if the schedule says so; returns whether it did."""
        if not self.should_recluster(epoch):
            return False
        self.recluster()
        return True

    def recluster(self) -> None:
        """Cluster every sample seen so far and fold the result into the estimates.

        When gathering, rank 0 clusters and the others receive its results.

        Raises:
            NotFittedError: if the bank is empty.
            ValueError: if a ``num_clusters`` exceeds the number of samples seen.
        """
        if not self.gather_distributed or not distributed.is_distributed():
            self._recluster_here()
            return
        # The banks are identical, so these checks fail on every rank or on none.
        self._check_can_cluster(int(self.seen.sum()))
        if distributed.get_rank() == 0:
            self._recluster_here()
        self._copy_estimates_from_rank0()

    def _copy_estimates_from_rank0(self) -> None:
        self.labels = distributed.broadcast_from_root(self.labels)
        self.log_frequency = distributed.broadcast_from_root(self.log_frequency)
        self.has_estimate = distributed.broadcast_from_root(self.has_estimate)
        self.num_fits = int(distributed.broadcast_from_root(torch.tensor(self.num_fits)))
        # Rank 0's statistics, not a recomputation: a parallel mean over millions of
        # values may round differently under another thread count.
        statistics = torch.zeros(3, dtype=torch.float64)
        if distributed.get_rank() == 0:
            reference = self.frequency_reference()
            statistics = torch.tensor(
                [reference.log_mean, reference.log_min, reference.log_max], dtype=torch.float64
            )
        log_mean, log_min, log_max = distributed.broadcast_from_root(statistics).tolist()
        self._reference = FrequencyReference(log_mean=log_mean, log_min=log_min, log_max=log_max)

    def _check_can_cluster(self, num_points: int) -> None:
        if num_points == 0:
            raise NotFittedError("the bank is empty: call update() before clustering")
        for count in self.num_clusters:
            if count > num_points:
                raise ValueError(
                    f"num_clusters={count} is larger than the {num_points} samples seen so far"
                )

    def _recluster_here(self) -> None:
        seen_index = self.seen.nonzero().squeeze(1)
        num_points = seen_index.numel()
        self._check_can_cluster(num_points)
        points = np.ascontiguousarray(self.bank[seen_index].float().numpy())
        log_frequencies = []
        labels = None
        for member, count in enumerate(self.num_clusters):
            member_labels = self._kmeans_labels(points, count, self.seed + member)
            sizes = np.bincount(member_labels, minlength=count)
            log_frequencies.append(np.log(sizes[member_labels] / num_points))
            labels = member_labels if labels is None else labels
        new_log_frequency = torch.from_numpy(np.mean(log_frequencies, axis=0))

        previous = self.has_estimate[seen_index]
        blended = torch.where(
            previous,
            self.momentum * self.log_frequency[seen_index] + (1 - self.momentum) * new_log_frequency,
            new_log_frequency,
        )
        self.log_frequency[seen_index] = blended
        self.has_estimate[seen_index] = True
        self.labels[seen_index] = torch.from_numpy(labels).long()
        self.num_fits += 1
        self._reference = self._compute_reference()

    def _kmeans_labels(self, points: np.ndarray, count: int, seed: int) -> np.ndarray:
        faiss = import_faiss("PseudoLabeler")
        kmeans = faiss.Kmeans(
            points.shape[1],
            count,
            niter=self.num_iterations,
            seed=seed,
            spherical=True,
            verbose=False,
            # Use every point (no subsampling) and accept small clusters: tail clusters
            # are the point of the exercise.
            max_points_per_centroid=math.ceil(points.shape[0] / count) + 1,
            min_points_per_centroid=1,
        )
        with faiss_threads(faiss, self.num_threads):
            kmeans.train(points)
            _, assignment = kmeans.index.search(points, 1)
        return assignment[:, 0].astype(np.int64)

    def _compute_reference(self) -> FrequencyReference:
        estimates = self.log_frequency[self.has_estimate]
        return FrequencyReference(
            log_mean=float(estimates.mean()),
            log_min=float(estimates.min()),
            log_max=float(estimates.max()),
        )

    def frequency_reference(self) -> FrequencyReference:
        """The dataset's log-frequency statistics (geometric mean, minimum, maximum)."""
        if self._reference is None:
            raise NotFittedError(
                "PseudoLabeler has not clustered yet: call maybe_recluster() after the warm-up"
            )
        return self._reference

    def frequency(self, index: Tensor) -> Tensor:
        """Frequency estimates ``f_i`` of a batch, float32, on ``index``'s device.

        Args:
            index: ``(B,)`` dataset indices.

        Returns:
            ``(B,)`` frequencies in ``(0, 1]``; samples without an estimate get the
            geometric mean of all estimates.
        """
        return self.log_frequency_of(index).exp().float().to(index.device)

    def log_frequency_of(self, index: Tensor) -> Tensor:
        """``log f_i`` of a batch, float64, on the CPU (see :meth:`frequency`)."""
        reference = self.frequency_reference()
        if not isinstance(index, Tensor) or index.dim() != 1:
            raise ValueError("index must be a (B,) torch.Tensor")
        # Checked on the CPU copy: a CUDA index costs one transfer and no extra syncs.
        cpu_index = check_index(index.cpu(), index.shape[0], self.num_samples).long()
        return torch.where(
            self.has_estimate[cpu_index],
            self.log_frequency[cpu_index],
            torch.tensor(reference.log_mean, dtype=torch.float64),
        )

    def state_dict(self) -> dict[str, Any]:
        """Everything a resumed run needs: the bank, labels, estimates and fit count."""
        return {
            "bank": self.bank.clone(),
            "seen": self.seen.clone(),
            "labels": self.labels.clone(),
            "log_frequency": self.log_frequency.clone(),
            "has_estimate": self.has_estimate.clone(),
            "num_fits": self.num_fits,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`'s output; shapes must match this labeler's."""
        expected = {
            "bank": (self.num_samples, self.feature_dim),
            "seen": (self.num_samples,),
            "labels": (self.num_samples,),
            "log_frequency": (self.num_samples,),
            "has_estimate": (self.num_samples,),
        }
        check_state_dict(state, expected, other_keys=("num_fits",))
        self.bank = state["bank"].to(self.bank.dtype).clone()
        self.seen = state["seen"].bool().clone()
        self.labels = state["labels"].long().clone()
        self.log_frequency = state["log_frequency"].double().clone()
        self.has_estimate = state["has_estimate"].bool().clone()
        self.num_fits = int(state["num_fits"])
        self._reference = self._compute_reference() if self.num_fits else None

    def __repr__(self) -> str:
        return (
            f"PseudoLabeler(num_samples={self.num_samples}, feature_dim={self.feature_dim}, "
            f"num_clusters={self.num_clusters}, warmup_epochs={self.warmup_epochs}, "
            f"recluster_every={self.recluster_every}, momentum={self.momentum}, "
            f"gather_distributed={self.gather_distributed})"
        )


def _check_count(name: str, value: object, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
