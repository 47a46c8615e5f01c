"""tase-loss: TASE contrastive learning for long-tailed self-supervised learning.

Public names only; see the README for the API at a glance and ``docs/ARCHITECTURE.md``
for which file owns what. Importing the package compiles nothing: the optional fused op
is loaded (or JIT-built, on request) at the first loss call that can use it.

Names 0.2.0 removed without a faithful alias (``KNNDensityWeights``, the module
``tase_loss.density``) raise an ``ImportError`` that names their replacement.
"""

import sys
from importlib.abc import MetaPathFinder
from importlib.machinery import ModuleSpec
from typing import Any, NoReturn, Optional

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
    StableCountEstimator,
    build_estimator,
    knn_log_density,
)
from tase_loss.functional import byol_loss, moco_loss, nt_xent_loss, nt_xent_target_loss, simsiam_loss
from tase_loss.guidance import FrequencyWeights, Guidance
from tase_loss.loss import TASEContrastiveLoss, TASECosineLoss
from tase_loss.ops import Backend, backend_info
from tase_loss.pseudo_labeler import FrequencyReference, NotFittedError, PseudoLabeler
from tase_loss.reweighting import SampleReweighter, TemperatureMap
from tase_loss.rwsam import RwSAM, frozen_batch_norm, rwsam_step
from tase_loss.schedules import CosineTemperatureSchedule

__version__ = "0.2.0"

_DENSITY_WEIGHTS_NOW = (
    "rwSAM's kNN density weights are FrequencyWeights(PseudoLabeler(num_samples, feature_dim, "
    'estimator=KNNDensityEstimator(kernel="exponential", smoothing_rounds=0))): the labeler\'s '
    "update() and end_epoch() replace KNNDensityWeights.update() and refresh()"
)
_REMOVED = {
    "KNNDensityWeights": f"tase_loss.KNNDensityWeights was removed in 0.2.0: {_DENSITY_WEIGHTS_NOW}",
}
_REMOVED_MODULES = {
    "tase_loss.density": "tase_loss.density was removed in 0.2.0: FrequencyWeights and knn_log_density "
    "are imported from tase_loss (knn_log_density's default kernel is now \"kth_neighbor\"; pass "
    f'kernel="exponential" for 0.1\'s); {_DENSITY_WEIGHTS_NOW}',
}


def __getattr__(name: str) -> NoReturn:
    if name in _REMOVED:
        # An ImportError (not an AttributeError, which `from tase_loss import ...` would
        # replace by a bare "cannot import name") carries the replacement to the user.
        raise ImportError(_REMOVED[name], name=name)
    raise AttributeError(f"module 'tase_loss' has no attribute {name!r}")


class _RemovedModuleFinder(MetaPathFinder):
    """Last on ``sys.meta_path``: a removed module's import fails naming its replacement."""

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> Optional[ModuleSpec]:
        if fullname in _REMOVED_MODULES:
            raise ImportError(_REMOVED_MODULES[fullname], name=fullname)
        return None


if not any(isinstance(finder, _RemovedModuleFinder) for finder in sys.meta_path):
    sys.meta_path.append(_RemovedModuleFinder())

__all__ = [
    "DEFAULT_ESTIMATOR",
    "Backend",
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
    "StableCountEstimator",
    "TASEContrastiveLoss",
    "TASECosineLoss",
    "TemperatureMap",
    "backend_info",
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
