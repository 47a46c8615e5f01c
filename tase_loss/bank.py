"""The feature bank: one detached, L2-normalized feature per training sample.

Every frequency estimate of TASE is computed from it (:class:`~tase_loss.PseudoLabeler`
owns one). It is filled as batches pass, on the device the features live on, so a
training step that updates it never waits for the device; estimators read a float32
CPU copy of the stored rows once per re-estimate.
"""

from __future__ import annotations

from typing import Any, Optional, Union

import torch
from torch import Tensor

from tase_loss import distributed
from tase_loss._numerics import unit_rows
from tase_loss._validation import (
    check_bool,
    check_choice,
    check_embeddings,
    check_index,
    check_int,
    check_state_dict,
    check_unit_rows,
)

__all__ = ["FeatureBank"]

BANK_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


class FeatureBank:
    """Detached, L2-normalized features of the training samples, indexed by dataset index.

    Args:
        num_samples: ``N``; indices lie in ``[0, N)``.
        feature_dim: ``D``.
        dtype: storage dtype: ``torch.float16`` (default; half the memory, a relative
            rounding of ``5e-4`` on unit rows, which no estimate here can see),
            ``torch.bfloat16`` or ``torch.float32``.
        device: where the rows are stored; ``None`` places the bank on the device of
            the first features it receives (so a GPU loop updates it without copies).
        gather_distributed: under ``torch.distributed``, every :meth:`update` stores
            the rows of all ranks, so all ranks hold the same bank (every rank must
            call it alike).

    Example:
        >>> import torch
        >>> bank = FeatureBank(num_samples=5, feature_dim=2)
        >>> bank.update(torch.tensor([3, 0]), torch.tensor([[3.0, 4.0], [0.0, 2.0]]))
        >>> bank.num_seen, bank.seen_index().tolist()
        (2, [0, 3])
        >>> bank.rows(torch.tensor([3]))
        tensor([[0.6001, 0.7998]])
    """

    def __init__(
        self,
        num_samples: int,
        feature_dim: int,
        *,
        dtype: torch.dtype = torch.float16,
        device: Optional[Union[str, torch.device]] = None,
        gather_distributed: bool = False,
    ) -> None:
        self.num_samples = check_int("num_samples", num_samples, minimum=1)
        self.feature_dim = check_int("feature_dim", feature_dim, minimum=1)
        self.dtype = check_choice("dtype", dtype, BANK_DTYPES)
        self.gather_distributed = check_bool("gather_distributed", gather_distributed)
        self._placed = device is not None
        placement = torch.device("cpu") if device is None else torch.device(device)
        self.features = torch.zeros(num_samples, feature_dim, dtype=dtype, device=placement)
        self.seen = torch.zeros(num_samples, dtype=torch.bool, device=placement)

    @property
    def device(self) -> torch.device:
        return self.features.device

    @property
    def num_seen(self) -> int:
        """How many samples have a stored feature (one host read)."""
        return int(self.seen.sum())

    def update(self, index: Tensor, features: Tensor) -> None:
        """Store the rows of a batch (detached, normalized); later rows overwrite earlier ones.

        Args:
            index: ``(B,)`` int64/int32 dataset indices (this rank's, when gathering),
                on the CPU or on the features' device.
            features: ``(B, D)`` finite features with no all-zero row.

        Raises:
            ValueError/TypeError: for a bad index or bad features; nothing is stored.
        """
        check_embeddings("features", features)
        if features.shape[1] != self.feature_dim:
            raise ValueError(f"features must have {self.feature_dim} columns, got {features.shape[1]}")
        index = check_index(index, features.shape[0], self.num_samples, "features")
        if not self._placed:
            self._move_to(features.device)
        rows = unit_rows(features.detach(), dtype=self.dtype)
        index = index.to(features.device, torch.int64, non_blocking=True)
        if self.gather_distributed:
            index = distributed.all_gather_rows(index)[0]
            rows = distributed.all_gather_rows(rows)[0]
        index = index.to(self.device, non_blocking=True)
        self.features[index] = rows.to(self.device, non_blocking=True)
        self.seen[index] = True

    def seen_index(self) -> Tensor:
        """``(n,)`` int64 indices of the samples with a stored feature, ascending, on the CPU."""
        return self.seen.nonzero().squeeze(1).cpu()

    def rows(self, index: Optional[Tensor] = None) -> Tensor:
        """Stored rows as float32 on the CPU: of ``index``, or of every seen sample.

        Returns:
            ``(n, D)`` float32, C-contiguous (what FAISS reads).
        """
        index = self.seen_index() if index is None else index.to(self.device)
        return self.features[index].float().cpu().contiguous()

    def _move_to(self, device: torch.device) -> None:
        self.features = self.features.to(device)
        self.seen = self.seen.to(device)
        self._placed = True

    def state_dict(self) -> dict[str, Any]:
        """The stored rows and the seen-mask (copies, on the bank's device)."""
        return {"features": self.features.clone(), "seen": self.seen.clone()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`'s output; validated completely before anything changes."""
        self._check_state(state)
        self._assign(state)

    def _check_state(self, state: dict[str, Any], name: str = "state_dict['features']") -> None:
        """Raise what loading ``state`` would; ``name`` is what errors call its rows."""
        check_state_dict(
            state,
            {
                "features": ((self.num_samples, self.feature_dim), BANK_DTYPES),
                "seen": ((self.num_samples,), (torch.bool,)),
            },
        )
        # update() stores unit rows, and the estimators require them
        check_unit_rows(f"{name} (its seen rows)", state["features"], rows=state["seen"].to(state["features"].device))

    def _assign(self, state: dict[str, Any]) -> None:
        self.features = state["features"].to(self.device, self.dtype).clone()
        self.seen = state["seen"].to(self.device).clone()

    def __repr__(self) -> str:
        return (
            f"FeatureBank(num_samples={self.num_samples}, feature_dim={self.feature_dim}, "
            f"dtype={self.dtype}, device={self.device})"
        )
