"""Per-sample frequency estimates over training: a feature bank, an estimator, a schedule.

FAISS is imported lazily (through :mod:`tase_loss._faiss`), so the losses work without it.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, Optional, Union

import numpy as np
import torch
from torch import Tensor

from tase_loss import distributed
from tase_loss._validation import (
    check_bool,
    check_embeddings,
    check_index,
    check_int,
    check_real,
    check_state_dict,
    renamed_keywords,
    require,
    warn_renamed,
)
from tase_loss.bank import BANK_DTYPES, FeatureBank
from tase_loss.estimators import MAX_SEED, FrequencyEstimate, FrequencyEstimator, build_estimator

__all__ = ["FrequencyReference", "NotFittedError", "PseudoLabeler"]

DEFAULT_WARMUP_EPOCHS = 1
"""Plain NT-Xent epochs before the first estimate, chosen by ``studies/warmup.py``'s rule
(docs/results.md): on digits-LT a first estimate after one epoch is poor (Spearman 0.24)
but the moving average of the next estimates catches up (0.60 at the end, as with a
warm-up of 10), and the accuracies differ little (Few +0.6 ± 0.9 points paired against a
warm-up of 10, 5 seeds); a short run then uses estimates from its second epoch on."""

# 0.1 code that uses a 0.1 name also used 0.1's warm-up count.
_WARMUP_CHANGED = (
    "Also changed in 0.2.0: warmup_epochs=W now means W epochs of plain NT-Xent, the first "
    "estimate at the end of epoch W - 1 (0.1: W + 1 epochs, at the end of epoch W); pass "
    "warmup_epochs=W + 1 to keep 0.1's schedule"
)


_DIAGNOSTICS_PREFIX = "last_diagnostics."


class NotFittedError(ValueError):
    """The pseudo-labeler was asked for estimates before its first estimate."""


@dataclass(frozen=True)
class FrequencyReference:
    """Log-frequency statistics a map compares a sample against.

    Attributes:
        log_mean: ``log g``, the mean log-frequency (log of the geometric mean).
        log_min: the smallest log-frequency (used by the ``"range"`` temperature map).
        log_max: the largest log-frequency.

    Example:
        >>> import torch
        >>> FrequencyReference.of_log(torch.tensor([-1.0, -3.0]))
        FrequencyReference(log_mean=-2.0, log_min=-3.0, log_max=-1.0)
    """

    log_mean: float
    log_min: float
    log_max: float

    def __post_init__(self) -> None:
        for name in ("log_mean", "log_min", "log_max"):
            value = getattr(self, name)
            if (isinstance(value, Tensor) and value.numel() == 1) or isinstance(value, np.number):
                value = value.item()  # a one-element tensor or a NumPy scalar
            object.__setattr__(self, name, check_real(name, value))  # a NaN would become NaN weights

    @classmethod
    def of_log(cls, log_frequency: Tensor) -> FrequencyReference:
        """The statistics of a non-empty tensor of log-frequencies."""
        return cls(
            log_mean=float(log_frequency.mean()),
            log_min=float(log_frequency.min()),
            log_max=float(log_frequency.max()),
        )


class PseudoLabeler:
    """A feature bank, a frequency estimator and a schedule -> per-sample frequencies ``f_i``.

    Feed it features as batches pass (:meth:`update`; a
    :class:`~tase_loss.TASEContrastiveLoss` called with ``index=`` does it for you) and
    call :meth:`end_epoch` after every epoch. The first ``warmup_epochs`` epochs train
    plain NT-Xent; at the end of epoch ``warmup_epochs - 1`` (0-based) and every
    ``estimate_every`` epochs after it, the estimator turns the bank into per-sample
    log-frequencies (:mod:`tase_loss.estimators`; k-means cluster sizes, kNN density,
    ...). Across estimates the log-frequency is smoothed by an exponential moving
    average (cluster ids change between fits; a sample's frequency does not). A sample
    without an estimate gets the neutral value ``g``, the geometric mean of all
    estimates, so the temperature and weight maps leave it at NT-Xent's values.

    With ``gather_distributed=True`` under ``torch.distributed``, :meth:`update` stores
    every rank's rows, so all banks stay identical, and :meth:`estimate` runs the
    estimator on rank 0 only and broadcasts the result: every rank ends with
    bit-identical estimates. Every rank must call :meth:`update` and :meth:`end_epoch`
    alike.

    Args:
        num_samples: ``N``, the size of the training set; indices lie in ``[0, N)``.
        feature_dim: ``D``, the feature size stored in the bank.
        estimator: a :class:`~tase_loss.estimators.FrequencyEstimator` or its name
            (``"stable-count"``, the measured default; ``"knn-density"``,
            ``"cluster-size"``, ``"merged-clusters"``, ``"momentum-loss"``).
        warmup_epochs: epochs of plain NT-Xent before the first estimate, ``>= 1``
            (:data:`DEFAULT_WARMUP_EPOCHS`, measured).
        estimate_every: epochs between estimates after the warm-up.
        momentum: EMA factor of the log-frequency, in ``[0, 1)``; ``0`` keeps only the
            latest estimate.
        seed: seed of the estimator's random choices, in ``[0, MAX_SEED]`` (its ``j``-th
            estimate uses ``seed`` too: a fixed bank gives a fixed estimate).
        num_threads: OpenMP threads FAISS may use; ``None`` leaves FAISS's setting.
        bank_dtype: storage dtype of the bank (``torch.float16`` by default).
        device: device of the bank; ``None`` follows the first features.
        gather_distributed: share updates and estimates across the ranks of the default
            process group (the identity without one).

    Example:
        >>> import torch
        >>> labeler = PseudoLabeler(num_samples=100, feature_dim=8, warmup_epochs=1)
        >>> labeler.update(torch.arange(100), torch.randn(100, 8))
        >>> labeler.end_epoch(epoch=0)
        True
        >>> labeler.frequency(torch.tensor([0, 1])).shape
        torch.Size([2])
    """

    @renamed_keywords(
        {"recluster_every": "estimate_every"},
        removed={
            "num_clusters": "num_clusters= moved to the clustering estimators in 0.2.0: pass "
            "estimator=ClusterSizeEstimator(num_clusters={value!r}) (from tase_loss.estimators) "
            "for 0.1's k-means cluster-size estimate. " + _WARMUP_CHANGED,
        },
        note=_WARMUP_CHANGED,
    )
    def __init__(
        self,
        num_samples: int,
        feature_dim: int,
        estimator: Union[str, FrequencyEstimator, None] = None,
        *,
        warmup_epochs: int = DEFAULT_WARMUP_EPOCHS,
        estimate_every: int = 1,
        momentum: float = 0.5,
        seed: int = 0,
        num_threads: Optional[int] = None,
        bank_dtype: torch.dtype = torch.float16,
        device: Optional[Union[str, torch.device]] = None,
        gather_distributed: bool = False,
    ) -> None:
        if isinstance(estimator, int) and not isinstance(estimator, bool):
            # 0.1's third positional argument was num_clusters
            raise TypeError(
                f"PseudoLabeler's third argument is the estimator since 0.2.0, got {estimator!r}: 0.1's "
                f"positional num_clusters moved to the clustering estimators; pass "
                f"estimator=ClusterSizeEstimator(num_clusters={estimator!r}) (from tase_loss.estimators)"
            )
        self.estimator = build_estimator(estimator)
        self.warmup_epochs = check_int("warmup_epochs", warmup_epochs, minimum=1)
        self.estimate_every = check_int("estimate_every", estimate_every, minimum=1)
        self.momentum = check_real("momentum", momentum, 0.0, 1.0, exclusive_maximum=True)
        self.seed = check_int("seed", seed, 0, MAX_SEED)
        self.num_threads = None if num_threads is None else check_int("num_threads", num_threads, minimum=1)
        self.gather_distributed = check_bool("gather_distributed", gather_distributed)
        self.bank = FeatureBank(
            num_samples, feature_dim, dtype=bank_dtype, device=device, gather_distributed=gather_distributed
        )
        self.num_samples = num_samples
        self.feature_dim = feature_dim
        self.labels = torch.full((num_samples,), -1, dtype=torch.int64)
        self.log_frequency = torch.zeros(num_samples, dtype=torch.float64)
        self.has_estimate = torch.zeros(num_samples, dtype=torch.bool)
        # Only an estimator that reads losses keeps them: the latest loss of each sample.
        self.sample_loss = torch.zeros(num_samples if self.estimator.uses_loss else 0, dtype=torch.float32)
        self.num_estimates = 0
        self.last_diagnostics: dict[str, float] = {}
        # rows stored by this process before the first end_epoch(): the never-called check
        self._rows_before_end_epoch: Optional[int] = 0
        self._reference: Optional[FrequencyReference] = None
        self._version = 0

    @property
    def is_fitted(self) -> bool:
        """Whether at least one estimate exists."""
        return self.num_estimates > 0

    @property
    def num_fits(self) -> int:
        """Deprecated 0.1 name of :attr:`num_estimates`."""
        warn_renamed("PseudoLabeler.num_fits", "num_estimates")
        return self.num_estimates

    @property
    def version(self) -> int:
        """Changes whenever the estimates change (an estimate, a load): a cache key."""
        return self._version

    @property
    def uses_loss(self) -> bool:
        """Whether :meth:`update` needs the per-sample ``loss`` (the estimator reads losses)."""
        return self.estimator.uses_loss

    def update(self, index: Tensor, features: Tensor, loss: Optional[Tensor] = None) -> None:
        """Store a batch's detached features (and per-sample losses, if the estimator reads them).

        Args:
            index: ``(B,)`` dataset indices of the batch (this rank's, when gathering).
            features: ``(B, D)`` features (any device).
            loss: ``(B,)`` per-sample losses; required when :attr:`uses_loss`, ignored otherwise.
        """
        if self.uses_loss:
            rows = check_embeddings("features", features).shape[0]
            if not isinstance(loss, Tensor) or not loss.is_floating_point() or tuple(loss.shape) != (rows,):
                raise ValueError(
                    f"the {self.estimator.name} estimator needs loss=, a floating ({rows},) tensor "
                    "of per-sample losses"
                )
            finite = torch.isfinite(loss.detach()).all()
            require(finite, loss, lambda: "loss contains NaN or Inf values", "loss must be finite")
            check_index(index, rows, self.num_samples)
        self.bank.update(index, features)
        self._check_end_epoch_is_called(features.shape[0])
        if self.uses_loss:
            values, rows = loss.detach().float(), index.to(loss.device, torch.int64)
            if self.gather_distributed:
                rows = distributed.all_gather_rows(rows)[0]
                values = distributed.all_gather_rows(values)[0]
            self.sample_loss[rows.cpu()] = values.cpu()

    def _check_end_epoch_is_called(self, rows: int) -> None:
        """Warn once when more than ``warmup_epochs + 1`` epochs of rows came, no end_epoch() and no estimate.

        A labeler whose estimate was loaded (:meth:`load_state_dict`, as the runner's fixed
        oracle does) guides the loss without end_epoch(), so it is not warned.
        """
        if self._rows_before_end_epoch is None:
            return
        self._rows_before_end_epoch += rows
        world = distributed.get_world_size() if self.gather_distributed else 1
        epochs = self._rows_before_end_epoch * world / self.num_samples
        if epochs > self.warmup_epochs + 1:
            self._rows_before_end_epoch = None
            if self.is_fitted:
                return
            warnings.warn(
                f"PseudoLabeler: {epochs:.1f} epochs of rows stored and end_epoch() was never called: "
                "without it no frequency estimate is made and TASE stays plain NT-Xent; call "
                "criterion.end_epoch(epoch) (or labeler.end_epoch(epoch)) after every epoch",
                stacklevel=3,
            )

    def should_estimate(self, epoch: int) -> bool:
        """Whether the schedule asks for an estimate at the end of ``epoch`` (0-based)."""
        check_int("epoch", epoch, minimum=0)
        since_warmup = epoch + 1 - self.warmup_epochs
        return since_warmup >= 0 and since_warmup % self.estimate_every == 0

    def end_epoch(self, epoch: int) -> bool:
        """Call after every epoch: estimates when the schedule says so; returns whether it did."""
        self._rows_before_end_epoch = None
        if not self.should_estimate(epoch):
            return False
        self.estimate()
        return True

    def maybe_recluster(self, epoch: int) -> bool:
        """Deprecated 0.1 name of :meth:`end_epoch` (whose warm-up ends one epoch earlier)."""
        warn_renamed("PseudoLabeler.maybe_recluster()", "end_epoch()", _WARMUP_CHANGED)
        return self.end_epoch(epoch)

    def recluster(self) -> None:
        """Deprecated 0.1 name of :meth:`estimate`."""
        warn_renamed("PseudoLabeler.recluster()", "estimate()")
        self.estimate()

    def warmup_advice(self, epochs: int) -> str:
        """What to change so that a run of ``epochs`` epochs uses an estimate."""
        if epochs > 1:
            return f"pass PseudoLabeler(warmup_epochs=...) below {epochs}"
        return "TASE needs at least 2 epochs (the first estimate ends epoch 1)"

    def warn_if_unfitted(self, epochs: int) -> None:
        """Warn that a run of ``epochs`` epochs never used an estimate (TASE was plain NT-Xent).

        The first estimate is made at the end of epoch ``warmup_epochs`` (1-based) and
        guides the epochs after it, so a run of ``epochs <= warmup_epochs`` guided no batch,
        even when that last estimate was made; a longer run without any estimate never
        called :meth:`end_epoch`.
        """
        if epochs <= self.warmup_epochs:
            warnings.warn(
                f"training ended after {epochs} epoch(s) inside the pseudo-labeler's warm-up of "
                f"{self.warmup_epochs}: no batch used a frequency estimate, so TASE was plain NT-Xent; "
                f"{self.warmup_advice(epochs)}",
                stacklevel=2,
            )
        elif not self.is_fitted:
            warnings.warn(
                f"training ended after {epochs} epoch(s) without a frequency estimate, so TASE was plain "
                "NT-Xent: call end_epoch(epoch) after every epoch",
                stacklevel=2,
            )

    def estimate(self) -> None:
        """Estimate every stored sample's frequency now and fold it into the estimates.

        When gathering, rank 0 estimates and the others receive its results.

        Raises:
            NotFittedError: if the bank is empty.
            ValueError: if the bank holds too few samples for the estimator.
        """
        if not self.gather_distributed or not distributed.is_distributed():
            self._estimate_here()
            return
        # The banks are identical, so these checks fail on every rank or on none.
        self._check_can_estimate(self.bank.num_seen)
        if distributed.get_rank() == 0:
            self._estimate_here()
        self._copy_estimates_from_rank0()

    def _check_can_estimate(self, num_seen: int) -> None:
        if num_seen == 0:
            raise NotFittedError("the bank is empty: call update() before estimating")
        if num_seen < self.estimator.minimum_samples:
            raise ValueError(
                f"the {self.estimator.name} estimator needs at least {self.estimator.minimum_samples} "
                f"samples, the bank holds {num_seen}"
            )

    def _estimate_here(self) -> None:
        seen_index = self.bank.seen_index()
        self._check_can_estimate(seen_index.numel())
        result: FrequencyEstimate = self.estimator.estimate(
            self.bank.rows(seen_index),
            seed=self.seed,
            num_threads=self.num_threads,
            loss=self.sample_loss[seen_index] if self.uses_loss else None,
        )
        fresh = result.log_frequency.to(torch.float64)
        previous = self.has_estimate[seen_index]
        blended = torch.where(
            previous, self.momentum * self.log_frequency[seen_index] + (1 - self.momentum) * fresh, fresh
        )
        self.log_frequency[seen_index] = blended
        self.has_estimate[seen_index] = True
        self.labels[seen_index] = result.labels
        self.num_estimates += 1
        self.last_diagnostics = dict(result.diagnostics)
        self._refresh()

    def _copy_estimates_from_rank0(self) -> None:
        self.labels = distributed.broadcast_from_root(self.labels)
        self.log_frequency = distributed.broadcast_from_root(self.log_frequency)
        self.has_estimate = distributed.broadcast_from_root(self.has_estimate)
        self.num_estimates = int(distributed.broadcast_from_root(torch.tensor(self.num_estimates)))
        # Rank 0's statistics, not a recomputation: a parallel mean over millions of
        # values may round differently under another thread count.
        statistics = torch.zeros(3, dtype=torch.float64)
        if distributed.get_rank() == 0:
            reference = self.frequency_reference()
            statistics = torch.tensor([reference.log_mean, reference.log_min, reference.log_max], dtype=torch.float64)
        log_mean, log_min, log_max = distributed.broadcast_from_root(statistics).tolist()
        self._reference = FrequencyReference(log_mean=log_mean, log_min=log_min, log_max=log_max)
        self._version += 1

    def _refresh(self) -> None:
        estimates = self.log_frequency[self.has_estimate]
        self._reference = FrequencyReference.of_log(estimates) if estimates.numel() else None
        self._version += 1

    @property
    def group_sizes(self) -> Tensor:
        """``(G,)`` int64 sizes of the latest estimate's groups (:attr:`labels`), empty before it.

        ``labels[i]`` is sample ``i``'s group: every estimator gives one (a clustering
        estimator the groups whose share is the frequency, the others FAISS k-means
        groups beside their estimate); ``-1`` marks samples never estimated. Labels are
        in :meth:`state_dict` and, when gathering, identical on every rank.
        """
        labelled = self.labels[self.labels >= 0]
        return torch.bincount(labelled) if labelled.numel() else torch.zeros(0, dtype=torch.int64)

    def summary(self, diagnostics: bool = False) -> dict[str, float]:
        """Scalars describing the latest estimate, for a logger; empty before the first.

        Args:
            diagnostics: also include the estimator's own scalars (:attr:`last_diagnostics`:
                its ``seconds``, scales, sizes), as ``criterion.end_epoch`` and the Lightning
                callback log them. The keys below win a clash.

        Returns:
            ``num_groups`` (non-empty groups), ``largest_group_share``,
            ``smallest_group_share``, ``log_frequency_span`` (``log_max - log_min``).
        """
        if not self.is_fitted:
            return {}
        sizes = self.group_sizes
        sizes = sizes[sizes > 0].to(torch.float64)
        reference = self.frequency_reference()
        total = float(sizes.sum()) if sizes.numel() else 1.0
        return {
            **(self.last_diagnostics if diagnostics else {}),
            "num_groups": float(sizes.numel()),
            "largest_group_share": float(sizes.max()) / total if sizes.numel() else 0.0,
            "smallest_group_share": float(sizes.min()) / total if sizes.numel() else 0.0,
            "log_frequency_span": reference.log_max - reference.log_min,
        }

    def frequency_reference(self) -> FrequencyReference:
        """The dataset's log-frequency statistics (geometric mean, minimum, maximum)."""
        if self._reference is None:
            raise NotFittedError("PseudoLabeler has no estimate yet: call end_epoch() after every epoch")
        return self._reference

    def log_frequency_table(self) -> Tensor:
        """``(N,)`` float64 ``log f_i`` of every sample; the neutral ``log g`` where none exists."""
        reference = self.frequency_reference()
        return torch.where(
            self.has_estimate, self.log_frequency, torch.tensor(reference.log_mean, dtype=torch.float64)
        )

    def frequency(self, index: Tensor) -> Tensor:
        """Frequency estimates ``f_i`` of a batch, float32, on ``index``'s device.

        Args:
            index: ``(B,)`` dataset indices.

        Returns:
            ``(B,)`` frequencies in ``(0, 1]``; samples without an estimate get the
            geometric mean of all estimates.
        """
        index = check_index(index, None, self.num_samples)
        return self.log_frequency_table()[index.cpu()].exp().float().to(index.device)

    def state_dict(self) -> dict[str, Any]:
        """Everything a resumed run needs: the bank, labels, estimates and their count.

        Also the latest estimate's :attr:`last_diagnostics`, one float64 scalar tensor each
        under ``last_diagnostics.<name>`` (optional when loading), so that a resumed run
        reports them as the uninterrupted one does.
        """
        bank = self.bank.state_dict()
        return {
            "bank.features": bank["features"],
            "bank.seen": bank["seen"],
            "labels": self.labels.clone(),
            "log_frequency": self.log_frequency.clone(),
            "has_estimate": self.has_estimate.clone(),
            "sample_loss": self.sample_loss.clone(),
            "num_estimates": self.num_estimates,
            **{
                _DIAGNOSTICS_PREFIX + name: torch.tensor(float(value), dtype=torch.float64)
                for name, value in self.last_diagnostics.items()
            },
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`'s output; validated completely before anything changes."""
        count = self.num_samples
        check_state_dict(
            state,
            {
                "bank.features": ((count, self.feature_dim), BANK_DTYPES),
                "bank.seen": ((count,), (torch.bool,)),
                "labels": ((count,), (torch.int64,)),
                "log_frequency": ((count,), (torch.float64,)),
                "has_estimate": ((count,), (torch.bool,)),
                "sample_loss": ((self.sample_loss.shape[0],), (torch.float32,)),
            },
            scalars=("num_estimates",),
        )
        has_estimate, labels = state["has_estimate"], state["labels"]
        if bool((state["log_frequency"][has_estimate] > 0).any()):
            raise ValueError("state_dict['log_frequency'] must be <= 0 where has_estimate is set")
        if (state["num_estimates"] > 0) != bool(has_estimate.any()):
            raise ValueError("state_dict['num_estimates'] disagrees with state_dict['has_estimate']")
        # a fixed estimate may come without groups (labels -1), but no sample has a group
        # without an estimate, and no group id exceeds the number of samples
        if bool(((labels < -1) | (labels >= count)).any()):
            raise ValueError(f"state_dict['labels'] must lie in [-1, {count}), got values outside")
        if bool((labels[~has_estimate] != -1).any()):
            raise ValueError("state_dict['labels'] must be -1 where has_estimate is not set")
        bank = {"features": state["bank.features"], "seen": state["bank.seen"]}
        self.bank._check_state(bank, "state_dict['bank.features']")
        diagnostics = {}
        for key, value in state.items():
            if key.startswith(_DIAGNOSTICS_PREFIX):
                if not isinstance(value, Tensor) or value.numel() != 1 or not value.is_floating_point():
                    raise TypeError(f"state_dict[{key!r}] must be a floating scalar tensor, got {value!r}")
                diagnostics[key[len(_DIAGNOSTICS_PREFIX) :]] = float(value)
        # checked: from here on nothing fails
        self.bank._assign(bank)
        self.labels = labels.clone()
        self.log_frequency = state["log_frequency"].clone()
        self.has_estimate = has_estimate.clone()
        self.sample_loss = state["sample_loss"].clone()
        self.num_estimates = int(state["num_estimates"])
        self.last_diagnostics = diagnostics
        self._refresh()

    def __repr__(self) -> str:
        return (
            f"PseudoLabeler(num_samples={self.num_samples}, feature_dim={self.feature_dim}, "
            f"estimator={self.estimator!r}, warmup_epochs={self.warmup_epochs}, "
            f"estimate_every={self.estimate_every}, momentum={self.momentum}, "
            f"gather_distributed={self.gather_distributed})"
        )
