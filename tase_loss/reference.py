"""Deprecated: the pure-PyTorch rows moved to :mod:`tase_loss.ops` (0.2.0).

``from tase_loss.reference import contrastive_rows_reference`` (and its other former names)
keeps working with a ``DeprecationWarning`` naming the new path.
"""

from __future__ import annotations

import importlib
import warnings
from typing import Any

_MOVED = {
    "contrastive_rows_reference": "tase_loss.ops.reference",
    "contrastive_targets_reference": "tase_loss.ops.reference",
    "contrastive_rows_chunked": "tase_loss.ops.chunked",
    "scaled_logits": "tase_loss.ops._common",
}


def __getattr__(name: str) -> Any:
    if name not in _MOVED:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    warnings.warn(
        f"tase_loss.reference.{name} moved to {_MOVED[name]}.{name}; import it from there "
        "(tase_loss.reference goes away in a later release)",
        DeprecationWarning,
        stacklevel=2,
    )
    return getattr(importlib.import_module(_MOVED[name]), name)
