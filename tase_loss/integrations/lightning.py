"""A PyTorch Lightning callback that runs the pseudo-labeler's schedule.

Needs ``pip install "tase-loss[lightning]"``; nothing in the core imports this module.

The loss stores each batch's features when called with ``index=`` (the bank is fed
there); the callback adds what a Lightning loop has no line for: the estimate at the end
of an epoch, a warning when training ended inside the warm-up, and the labeler's state in
the trainer's checkpoints. If your ``training_step`` feeds the bank itself (or calls the
loss without ``index=``), return ``{"loss": ..., "index": ..., "features": ...}`` and the
callback stores them.
"""

from __future__ import annotations

import warnings
from typing import Any

from lightning.pytorch.callbacks import Callback

from tase_loss.pseudo_labeler import PseudoLabeler

__all__ = ["PseudoLabelerCallback"]


class PseudoLabelerCallback(Callback):
    """Estimates frequencies at epoch ends and checkpoints the pseudo-labeler.

    Args:
        pseudo_labeler: the labeler the loss was built with.

    Example:
        >>> from tase_loss import PseudoLabeler
        >>> callback = PseudoLabelerCallback(PseudoLabeler(num_samples=100, feature_dim=8))
        >>> sorted(callback.state_dict())[:2]
        ['bank.features', 'bank.seen']
    """

    def __init__(self, pseudo_labeler: PseudoLabeler) -> None:
        if not isinstance(pseudo_labeler, PseudoLabeler):
            raise TypeError(f"pseudo_labeler must be a PseudoLabeler, got {type(pseudo_labeler).__name__}")
        self.pseudo_labeler = pseudo_labeler

    def on_fit_start(self, trainer: Any, pl_module: Any) -> None:
        """Warn before training when ``max_epochs`` ends inside the warm-up: TASE would never act."""
        max_epochs = getattr(trainer, "max_epochs", None)
        warmup = self.pseudo_labeler.warmup_epochs
        if isinstance(max_epochs, int) and 0 < max_epochs <= warmup:
            warnings.warn(
                f"Trainer(max_epochs={max_epochs}) ends inside the pseudo-labeler's warm-up of {warmup} "
                f"epochs: the first estimate comes after epoch {warmup}, so no batch will use it and TASE "
                f"will train plain NT-Xent; {self.pseudo_labeler.warmup_advice(max_epochs)}",
                stacklevel=2,
            )

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        if isinstance(outputs, dict) and "index" in outputs and "features" in outputs:
            self.pseudo_labeler.update(outputs["index"], outputs["features"], outputs.get("per_sample_loss"))

    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        """Estimate when the schedule says so and log the estimate's summary as ``tase/*``.

        The summary is :meth:`~tase_loss.Guidance.summary` of the loss in ``pl_module`` that
        uses this labeler (temperature and weight ranges included), else the labeler's own.
        """
        if self.pseudo_labeler.end_epoch(trainer.current_epoch):
            guidance = next(
                (
                    module.guidance
                    for module in pl_module.modules()
                    if getattr(module, "guidance", None) is not None
                    and module.guidance.pseudo_labeler is self.pseudo_labeler
                ),
                None,
            )
            scalars = (guidance or self.pseudo_labeler).summary(diagnostics=True)
            pl_module.log_dict({f"tase/{name}": value for name, value in scalars.items()}, on_epoch=True)

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        self.pseudo_labeler.warn_if_unfitted(trainer.current_epoch)

    def state_dict(self) -> dict[str, Any]:
        return self.pseudo_labeler.state_dict()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.pseudo_labeler.load_state_dict(state_dict)
