"""tase-loss: TASE contrastive learning for long-tailed self-supervised learning.

Public names only; see the README for the API at a glance.
"""

from tase_loss.functional import byol_loss, moco_loss, nt_xent_loss, simsiam_loss
from tase_loss.loss import TASEContrastiveLoss, TASECosineLoss
from tase_loss.pseudo_labeler import NotFittedError, PseudoLabeler
from tase_loss.reweighting import FrequencyReference, SampleReweighter, TemperatureMap

__version__ = "0.1.0"

__all__ = [
    "FrequencyReference",
    "NotFittedError",
    "PseudoLabeler",
    "SampleReweighter",
    "TASEContrastiveLoss",
    "TASECosineLoss",
    "TemperatureMap",
    "byol_loss",
    "moco_loss",
    "nt_xent_loss",
    "simsiam_loss",
]
