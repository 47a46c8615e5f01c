"""Deprecated: the chunked rows moved to :mod:`tase_loss.ops.chunked` (0.2.0).

``from tase_loss.chunked import ChunkedRows`` (and its other former names) keeps
working with a ``DeprecationWarning`` naming the new path.
"""

from __future__ import annotations

import warnings
from typing import Any

from tase_loss.ops import chunked as _chunked

_MOVED = ("ChunkedRows", "LOGITS_PER_BLOCK", "default_block_rows")


def __getattr__(name: str) -> Any:
    if name not in _MOVED:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    warnings.warn(
        f"tase_loss.chunked.{name} moved to tase_loss.ops.chunked.{name}; import it from there "
        "(tase_loss.chunked goes away in a later release)",
        DeprecationWarning,
        stacklevel=2,
    )
    return getattr(_chunked, name)
