"""The TASE losses as functions: validate, compute per-row losses, reduce.

Every contrastive loss here is one weighted, per-anchor-temperature softmax
cross-entropy over rows (see :mod:`tase_loss.ops` for the exact contract):

    l_a = -s_{a,p(a)} / t_a + log sum_{k != a} exp(s_{a,k} / t_a)
    L   = sum_a w_a l_a / sum_a w_a            (reduction "mean")

With one temperature and unit weights, :func:`nt_xent_loss` is NT-Xent (SimCLR).
"""

from tase_loss.functional.contrastive import moco_loss, moco_loss_and_all_keys, nt_xent_loss, nt_xent_target_loss
from tase_loss.functional.cosine import byol_loss, simsiam_loss
from tase_loss.functional.rows import (
    CHUNKED_ABOVE,
    FUSED_ABOVE_ON_CPU,
    contrastive_rows,
    contrastive_targets,
    reduce_per_sample,
    weighted_reduce,
)

__all__ = [
    "CHUNKED_ABOVE",
    "FUSED_ABOVE_ON_CPU",
    "byol_loss",
    "contrastive_rows",
    "contrastive_targets",
    "moco_loss",
    "moco_loss_and_all_keys",
    "nt_xent_loss",
    "nt_xent_target_loss",
    "reduce_per_sample",
    "simsiam_loss",
    "weighted_reduce",
]
