"""An estimator from the training signal: BCL's per-sample momentum loss."""

from __future__ import annotations

import torch

from tase_loss._validation import check_real
from tase_loss.estimators.base import FrequencyEstimate, FrequencyEstimator

__all__ = ["MomentumLossEstimator"]


class MomentumLossEstimator(FrequencyEstimator):
    """BCL's memorization signal: a high per-sample loss means a rarely seen (tail) sample.

    ``log f_i = -scale * z_i - max``, with ``z`` the standardized per-sample loss of the
    latest epoch. Smoothed across epochs by the :class:`~tase_loss.PseudoLabeler`'s
    moving average (its ``momentum``), this is BCL's momentum loss. The scale is a
    convention (one standard deviation of loss = ``scale`` nats of frequency): a
    training signal carries no unit of frequency. Features only give the reported k-means
    groups (:meth:`~tase_loss.estimators.FrequencyEstimator.estimate`).

    Args:
        scale: nats of log-frequency per standard deviation of the loss.

    Example:
        >>> import torch
        >>> loss = torch.tensor([1.0, 2.0, 3.0])
        >>> features = torch.nn.functional.normalize(torch.randn(3, 2), dim=1)
        >>> estimate = MomentumLossEstimator().estimate(features, loss=loss)
        >>> estimate.log_frequency.argmax().item()    # the smallest loss: the most frequent
        0
    """

    name = "momentum-loss"
    uses_loss = True

    def __init__(self, scale: float = 1.0) -> None:
        self.scale = check_real("scale", scale, 0.0, exclusive_minimum=True)

    def _estimate(self, points, seed, num_threads, loss):  # type: ignore[no-untyped-def]
        values = loss.detach().to("cpu", torch.float64)
        if not bool(torch.isfinite(values).all()):
            raise ValueError("the per-sample losses contain NaN or Inf values")
        spread = float(values.std()) if values.numel() > 1 else 0.0
        z = (values - values.mean()) / spread if spread > 0 else torch.zeros_like(values)
        log_frequency = -self.scale * z
        return FrequencyEstimate(
            log_frequency - log_frequency.max(), None, {"loss_mean": float(values.mean()), "loss_std": spread}
        )
