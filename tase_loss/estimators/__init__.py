"""Frequency estimators: how common is each training sample's kind? (label-free)

TASE maps a sample's estimated frequency ``f_i`` to a temperature and a weight; the
estimate is the method's central step. Every estimator here turns the stored features
(and, for one of them, per-sample losses) into per-sample log-frequencies behind one
interface, :meth:`FrequencyEstimator.estimate`, and is selected by name
(:data:`ESTIMATORS`, :func:`build_estimator`) in the library and in the runner
(``--estimator``):

- ``"cluster-size"`` (:class:`ClusterSizeEstimator`): the spec's ``f_i = n_c(i) / N`` from
  spherical k-means. Measured weakness: k-means makes clusters of similar size whatever
  the class sizes (it splits head classes and merges tail ones).
- ``"merged-clusters"`` (:class:`MergedClusterEstimator`): over-cluster (``k >> C``), then
  merge the centroids into ``C`` groups by average linkage; group sizes are summed, so a
  head class split into many small clusters is counted whole again.
- ``"knn-density"`` (:class:`KNNDensityEstimator`): the k-nearest-neighbour density,
  scaled by the data's intrinsic dimension so that differences in ``log f`` are nats of
  density (a class ``r`` times more frequent is ``log r`` denser when classes have alike
  shapes), smoothed along the mutual-kNN graph, whose edges rarely cross classes.
- ``"stable-count"`` (:class:`StableCountEstimator`): group shares of ``merged-clusters``
  where two seeds agree on the groups (a label-free test that the groups are the data's
  kinds), the kNN density where they do not, blended by that agreement. Counts whatever a
  class's spread when the classes form groups; no worse than the density when they do not.
- ``"momentum-loss"`` (:class:`MomentumLossEstimator`): BCL's training signal (Zhou et
  al., ICML 2022): samples with a high per-sample loss are memorized late, which is the
  tail. Uses losses, not features.

The study ``studies/frequency_estimators.py`` measures them against true class
frequencies (``docs/results.md``); its table chose :data:`DEFAULT_ESTIMATOR`.

Conventions: log-frequencies are float64, ``<= 0``. Cluster estimators give
``log(n / N)``; density estimators are relative, normalized so that the densest sample
has ``f = 1``. Only differences matter to TASE's maps (they compare ``f_i`` with the
geometric mean), and those are calibrated as described for each estimator. Every
estimator is deterministic for a seed (and a thread count: FAISS reduces in parallel).
"""

from __future__ import annotations

from typing import Any, Union

from tase_loss._validation import check_choice
from tase_loss.estimators.base import MAX_SEED, FrequencyEstimate, FrequencyEstimator
from tase_loss.estimators.clustering import ClusterSizeEstimator, MergedClusterEstimator
from tase_loss.estimators.density import KNNDensityEstimator, intrinsic_dimension, knn_log_density
from tase_loss.estimators.stable_count import StableCountEstimator, adjusted_rand_index
from tase_loss.estimators.training_signal import MomentumLossEstimator

__all__ = [
    "DEFAULT_ESTIMATOR",
    "ESTIMATORS",
    "MAX_SEED",
    "ClusterSizeEstimator",
    "FrequencyEstimate",
    "FrequencyEstimator",
    "KNNDensityEstimator",
    "MergedClusterEstimator",
    "MomentumLossEstimator",
    "StableCountEstimator",
    "adjusted_rand_index",
    "build_estimator",
    "intrinsic_dimension",
    "knn_log_density",
]


ESTIMATORS: dict[str, type[FrequencyEstimator]] = {
    estimator.name: estimator
    for estimator in (
        ClusterSizeEstimator,
        MergedClusterEstimator,
        KNNDensityEstimator,
        StableCountEstimator,
        MomentumLossEstimator,
    )
}
"""Estimator name -> class."""

DEFAULT_ESTIMATOR = "stable-count"
"""The estimator ``studies/frequency_estimators.py``'s selection rule chose (docs/results.md)."""


def build_estimator(estimator: Union[str, FrequencyEstimator, None] = None, **options: Any) -> FrequencyEstimator:
    """An estimator from its name (with options), or the given instance unchanged.

    Example:
        >>> build_estimator("cluster-size", num_clusters=5).num_clusters
        (5,)
        >>> type(build_estimator()).__name__
        'StableCountEstimator'
    """
    if isinstance(estimator, FrequencyEstimator):
        if options:
            raise ValueError(f"options {sorted(options)} apply to an estimator name, not an instance")
        return estimator
    name = DEFAULT_ESTIMATOR if estimator is None else estimator
    check_choice("estimator", name, tuple(ESTIMATORS))
    return ESTIMATORS[name](**options)
