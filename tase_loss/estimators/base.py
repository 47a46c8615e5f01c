"""The estimator interface: what every frequency estimator takes and returns."""

from __future__ import annotations

import abc
import dataclasses
import time
from dataclasses import dataclass, field
from typing import ClassVar, Optional

import numpy as np
import torch
from torch import Tensor

from tase_loss._faiss import spherical_kmeans
from tase_loss._validation import check_int, check_unit_rows

__all__ = ["MAX_SEED", "FrequencyEstimate", "FrequencyEstimator"]

MAX_SEED = 2**31 - 2**16
"""The largest seed an estimator takes. FAISS keeps seeds in a C ``int``, and an estimator
may use ``seed + j`` for a member ``j`` of an ensemble or a second or third grouping."""


@dataclass(frozen=True)
class FrequencyEstimate:
    """One estimate for the ``n`` samples an estimator was given.

    Attributes:
        log_frequency: ``(n,)`` float64, ``log f_i <= 0``.
        labels: ``(n,)`` int64 group ids, each of ``0 .. num_groups - 1`` used. A clustering estimator's
            frequency is its group's share (``stable-count``'s starts from its first
            grouping's groups: :class:`~tase_loss.StableCountEstimator`); for the others (kNN density, momentum loss)
            :meth:`FrequencyEstimator.estimate` adds FAISS spherical k-means groups
            (:attr:`FrequencyEstimator.num_groups`), reported beside the estimate. ``None``
            only inside an estimator's ``_estimate``.
        diagnostics: scalars describing the fit (its time, sizes, scales).
    """

    log_frequency: Tensor
    labels: Optional[Tensor] = None
    diagnostics: dict[str, float] = field(default_factory=dict)


class FrequencyEstimator(abc.ABC):
    """Per-sample log-frequencies from unit-norm features (and, if it says so, losses).

    Subclasses set :attr:`name`, :attr:`uses_loss` and implement :meth:`_estimate`;
    :meth:`estimate` validates the input and times the call.
    """

    name: ClassVar[str]
    uses_loss: ClassVar[bool] = False
    """Whether :meth:`estimate` reads per-sample losses instead of features."""

    minimum_samples: int = 2

    num_groups: int = 10
    """k-means groups given as labels when the estimator has no groups of its own."""

    def estimate(
        self,
        features: Tensor,
        *,
        seed: int = 0,
        num_threads: Optional[int] = None,
        loss: Optional[Tensor] = None,
    ) -> FrequencyEstimate:
        """Estimate the frequency of each of ``n`` samples.

        Args:
            features: ``(n, D)`` unit rows, norm 1 within ``1e-2`` (a
                :class:`~tase_loss.FeatureBank`'s :meth:`~tase_loss.FeatureBank.rows`); read
                as float32 on the CPU.
            seed: seed of every random choice (k-means initialization, subsampling), in
                ``[0, MAX_SEED]``.
            num_threads: OpenMP threads FAISS may use; ``None`` leaves its setting.
            loss: ``(n,)`` float per-sample losses, for estimators with :attr:`uses_loss`.

        Returns:
            A :class:`FrequencyEstimate` with labels for every sample, whose
            ``diagnostics`` include ``seconds``.

        Raises:
            TypeError: ``features`` not a floating tensor, or ``seed`` or ``num_threads``
                not an integer.
            ValueError: ``features`` not finite unit rows, ``seed`` or ``num_threads`` out
                of range, too few samples for this estimator, or missing losses.
        """
        check_unit_rows("features", features)
        check_int("seed", seed, 0, MAX_SEED)
        if num_threads is not None:
            check_int("num_threads", num_threads, minimum=1)
        count = features.shape[0]
        if count < self.minimum_samples:
            raise ValueError(f"the {self.name} estimator needs at least {self.minimum_samples} samples, got {count}")
        if self.uses_loss and (loss is None or tuple(loss.shape) != (count,)):
            raise ValueError(f"the {self.name} estimator needs a ({count},) tensor of per-sample losses")
        started = time.perf_counter()
        points = np.ascontiguousarray(features.detach().to("cpu", torch.float32).numpy())
        estimate = self._estimate(points, seed, num_threads, loss)
        if estimate.labels is None:
            labels, _ = spherical_kmeans(points, min(self.num_groups, count), seed=seed, num_threads=num_threads)
        else:
            labels = estimate.labels.numpy()
        if not np.bincount(labels).all():  # a k-means cluster ended up empty: close the gap in the ids
            labels = np.unique(labels, return_inverse=True)[1].reshape(-1)
        estimate = dataclasses.replace(estimate, labels=torch.from_numpy(labels))
        estimate.diagnostics["seconds"] = time.perf_counter() - started
        return estimate

    @abc.abstractmethod
    def _estimate(
        self, points: np.ndarray, seed: int, num_threads: Optional[int], loss: Optional[Tensor]
    ) -> FrequencyEstimate:
        """The estimate for validated ``(n, D)`` float32 points."""

    def __repr__(self) -> str:
        options = ", ".join(f"{key}={value!r}" for key, value in vars(self).items() if key != "minimum_samples")
        return f"{type(self).__name__}({options})"
