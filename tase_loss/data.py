"""Dataset plumbing: every TASE loop needs each sample's dataset index."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch.utils.data import Dataset

__all__ = ["IndexedDataset"]

INDEX_KEY = "index"


class IndexedDataset(Dataset):
    """Any map-style dataset whose items also carry their own index.

    A tuple item gets the index appended (``(x, y)`` becomes ``(x, y, index)``; lightly's
    ``(views, y, filename)`` becomes ``(views, y, filename, index)``), so code that reads
    ``batch[0]`` keeps working and the index is ``batch[-1]``. A mapping item gets an
    ``"index"`` entry; any other item ``x`` becomes ``(x, index)``. The default collate
    function turns the indices of a batch into an int64 tensor, which is what
    ``TASEContrastiveLoss(..., index=...)`` expects.

    Args:
        dataset: a map-style dataset (``__getitem__`` and ``__len__``).

    Example:
        >>> import torch
        >>> from torch.utils.data import DataLoader, TensorDataset
        >>> data = IndexedDataset(TensorDataset(torch.randn(6, 2), torch.arange(6)))
        >>> x, y, index = next(iter(DataLoader(data, batch_size=3, shuffle=True)))
        >>> bool((y == index).all())
        True
    """

    def __init__(self, dataset: Any) -> None:
        if not hasattr(dataset, "__getitem__") or not hasattr(dataset, "__len__"):
            raise TypeError(
                f"dataset must be a map-style dataset (__getitem__ and __len__), got {type(dataset).__name__}"
            )
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> Any:
        item = self.dataset[index]
        if isinstance(item, tuple):
            return (*item, index)
        if isinstance(item, Mapping):
            if INDEX_KEY in item:
                raise ValueError(f"the dataset's items already have an {INDEX_KEY!r} entry")
            return {**item, INDEX_KEY: index}
        return item, index

    def __repr__(self) -> str:
        return f"IndexedDataset({self.dataset!r})"
