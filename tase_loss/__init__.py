"""tase-loss: TASE contrastive learning for long-tailed self-supervised learning.

Public names only; see the README for the API at a glance.
"""

from tase_loss.density import FrequencyWeights, KNNDensityWeights, knn_log_density
from tase_loss.functional import byol_loss, moco_loss, nt_xent_loss, simsiam_loss
from tase_loss.loss import TASEContrastiveLoss, TASECosineLoss
from tase_loss.pseudo_labeler import NotFittedError, PseudoLabeler
from tase_loss.reweighting import FrequencyReference, SampleReweighter, TemperatureMap
from tase_loss.rwsam import RwSAM, frozen_batch_norm, rwsam_step
from tase_loss.schedules import CosineTemperatureSchedule

__version__ = "0.1.0"

__all__ = [
    "CosineTemperatureSchedule",
    "FrequencyReference",
    "FrequencyWeights",
    "KNNDensityWeights",
    "NotFittedError",
    "PseudoLabeler",
    "RwSAM",
    "SampleReweighter",
    "TASEContrastiveLoss",
    "TASECosineLoss",
    "TemperatureMap",
    "byol_loss",
    "frozen_batch_norm",
    "knn_log_density",
    "moco_loss",
    "nt_xent_loss",
    "rwsam_step",
    "simsiam_loss",
]
