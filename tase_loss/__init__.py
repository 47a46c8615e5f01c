"""tase-loss: TASE contrastive learning for long-tailed self-supervised learning.

Public names only; see the README for the API at a glance and ``docs/ARCHITECTURE.md``
for which file owns what. Importing the package compiles nothing: the optional fused op
is loaded (or JIT-built, on request) at the first loss call that can use it.
"""

from tase_loss.bank import FeatureBank
from tase_loss.data import IndexedDataset
from tase_loss.estimators import (
    DEFAULT_ESTIMATOR,
    ClusterSizeEstimator,
    FrequencyEstimate,
    FrequencyEstimator,
    KNNDensityEstimator,
    MergedClusterEstimator,
    MomentumLossEstimator,
    build_estimator,
    knn_log_density,
)
from tase_loss.functional import byol_loss, moco_loss, nt_xent_loss, nt_xent_target_loss, simsiam_loss
from tase_loss.guidance import FrequencyWeights, Guidance
from tase_loss.loss import TASEContrastiveLoss, TASECosineLoss
from tase_loss.pseudo_labeler import FrequencyReference, NotFittedError, PseudoLabeler
from tase_loss.reweighting import SampleReweighter, TemperatureMap
from tase_loss.rwsam import RwSAM, frozen_batch_norm, rwsam_step
from tase_loss.schedules import CosineTemperatureSchedule

__version__ = "0.2.0"

__all__ = [
    "DEFAULT_ESTIMATOR",
    "ClusterSizeEstimator",
    "CosineTemperatureSchedule",
    "FeatureBank",
    "FrequencyEstimate",
    "FrequencyEstimator",
    "FrequencyReference",
    "FrequencyWeights",
    "Guidance",
    "IndexedDataset",
    "KNNDensityEstimator",
    "MergedClusterEstimator",
    "MomentumLossEstimator",
    "NotFittedError",
    "PseudoLabeler",
    "RwSAM",
    "SampleReweighter",
    "TASEContrastiveLoss",
    "TASECosineLoss",
    "TemperatureMap",
    "build_estimator",
    "byol_loss",
    "frozen_batch_norm",
    "knn_log_density",
    "moco_loss",
    "nt_xent_loss",
    "nt_xent_target_loss",
    "rwsam_step",
    "simsiam_loss",
]
