"""MoCo's queue of earlier keys, as a module: its buffers are part of ``state_dict()``."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Optional

import torch
from torch import Tensor, nn

from tase_loss._numerics import unit_rows
from tase_loss._validation import check_int, check_unit_rows

__all__ = ["KeyQueue"]


class KeyQueue(nn.Module):
    """A ring of the last ``size`` keys: read before this batch's keys are written.

    It starts empty (no random keys), wraps around without dropping keys, and stores
    unit rows in at least float32. Its fill level is tracked on the host as well, so
    that reading it costs no device synchronization. Inside :meth:`frozen` reads work
    and writes are skipped (two passes over one batch, as in rwSAM, enqueue once).

    Args:
        size: ``S``, the number of keys kept.
        feature_dim: ``D`` of the keys.

    Example:
        >>> import torch
        >>> queue = KeyQueue(size=4, feature_dim=2)
        >>> queue.write(torch.tensor([[3.0, 4.0], [0.0, 2.0], [1.0, 0.0]]))
        >>> queue.read(torch.zeros(1, 2)).shape, int(queue.length), int(queue.pointer)
        (torch.Size([3, 2]), 3, 3)
    """

    keys: Tensor
    pointer: Tensor
    length: Tensor

    def __init__(self, size: int, feature_dim: int) -> None:
        super().__init__()
        self.size = check_int("queue_size", size, minimum=1)
        check_int("feature_dim", feature_dim, minimum=1)
        self.register_buffer("keys", torch.zeros(size, feature_dim))
        self.register_buffer("pointer", torch.zeros((), dtype=torch.int64))
        self.register_buffer("length", torch.zeros((), dtype=torch.int64))
        self._frozen = False
        self._host_length: Optional[int] = 0

    def read(self, like: Tensor) -> Tensor:
        """The ``(L, D)`` keys held so far, in ``like``'s dtype; checks ``like``'s width and device."""
        if like.shape[1] != self.keys.shape[1]:
            raise ValueError(f"out1 has feature size {like.shape[1]} but the queue holds {self.keys.shape[1]}")
        if self.keys.device != like.device:
            raise ValueError(f"the queue is on {self.keys.device} but out1 is on {like.device}: move the loss module")
        if self._host_length is None:  # after a load: read the buffer once
            self._host_length = int(self.length)
        return self.keys[: self._host_length].to(dtype=like.dtype)

    def check_fits(self, count: int) -> None:
        if count > self.size:
            raise ValueError(f"a batch of {count} keys does not fit in a queue of {self.size}")

    @torch.no_grad()
    def write(self, keys: Tensor) -> None:
        """Store ``(B, D)`` keys at the pointer (normalized, detached), unless :meth:`frozen`."""
        self.check_fits(keys.shape[0])
        if self._frozen:
            return
        count = keys.shape[0]
        slots = (self.pointer + torch.arange(count, device=self.keys.device)) % self.size
        # Normalize in at least float32 and never below the queue's own precision.
        wide = keys.detach().to(torch.promote_types(self.keys.dtype, torch.float32))
        self.keys[slots] = unit_rows(wide).to(self.keys)
        self.pointer.copy_((self.pointer + count) % self.size)
        self.length.copy_(torch.clamp(self.length + count, max=self.size))
        if self._host_length is not None:
            self._host_length = min(self._host_length + count, self.size)

    @contextlib.contextmanager
    def frozen(self) -> Iterator[None]:
        """Within the block, :meth:`write` stores nothing."""
        previous = self._frozen
        self._frozen = True
        try:
            yield
        finally:
            self._frozen = previous

    def _check_loaded(self, state_dict: dict, prefix: str) -> None:
        """Require what :meth:`write` could have left, of the entries just loaded.

        The three buffers come together (floating keys, int64 scalars), ``0 <= pointer <
        S``, ``0 <= length <= S``, ``pointer == length`` until the ring is full, and finite
        unit rows in the first ``length`` slots.
        """
        names = ("keys", "pointer", "length")
        present = [name for name in names if prefix + name in state_dict]
        if present and len(present) < len(names):
            raise ValueError(f"keys, pointer and length load together, got only {present}")
        if present:
            keys, pointer, length = (state_dict[prefix + name] for name in names)
            if not all(isinstance(value, Tensor) for value in (keys, pointer, length)):
                raise TypeError("keys, pointer and length must be tensors")
            if not keys.is_floating_point() or any(
                value.dtype != torch.int64 or value.dim() for value in (pointer, length)
            ):
                raise TypeError(
                    f"keys must be floating and pointer and length int64 scalars, got {keys.dtype}, "
                    f"{pointer.dtype} {tuple(pointer.shape)}, {length.dtype} {tuple(length.shape)}"
                )
        at, filled = int(self.pointer), int(self.length)
        if not (0 <= at < self.size and 0 <= filled <= self.size and (filled == self.size or at == filled)):
            raise ValueError(
                f"pointer {at} and length {filled} do not describe a ring of {self.size}: "
                "0 <= pointer < size, 0 <= length <= size, pointer == length until it is full"
            )
        check_unit_rows(f"keys (its first {filled} rows)", self.keys[:filled])

    def _load_from_state_dict(
        self,
        state_dict: dict,
        prefix: str,
        local_metadata: dict,
        strict: bool,
        missing_keys: list,
        unexpected_keys: list,
        error_msgs: list,
    ) -> None:
        # Checked after loading, so that load pre-hooks run first (they edit state_dict in
        # place), and undone when wrong: values back into the buffers this queue had, and
        # those buffers bound again (assign=True binds the caller's tensors).
        before = {name: (buffer, buffer.clone()) for name, buffer in self.named_buffers(recurse=False)}
        errors = len(error_msgs)
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )
        try:
            self._check_loaded(state_dict, prefix)
        except (TypeError, ValueError) as error:
            error_msgs.append(f"{prefix.rstrip('.') or 'queue'}: {error}")
        if len(error_msgs) > errors:
            for name, (buffer, saved) in before.items():
                buffer.copy_(saved)
                setattr(self, name, buffer)
        self._host_length = None  # re-read from the loaded buffer on the next read

    def extra_repr(self) -> str:
        return f"size={self.size}, feature_dim={self.keys.shape[1]}"
