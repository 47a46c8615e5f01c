"""The Lightning callback runs the labeler's schedule in a real Trainer (CPU)."""

import warnings

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from tase_loss import IndexedDataset, PseudoLabeler, TASEContrastiveLoss

lightning = pytest.importorskip("lightning")
from tase_loss.integrations.lightning import PseudoLabelerCallback  # noqa: E402


class _SimCLR(lightning.LightningModule):
    def __init__(self, labeler):
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 8))
        self.criterion = TASEContrastiveLoss(temperature=0.5, pseudo_labeler=labeler)
        self.seen_guided = []

    def training_step(self, batch, batch_idx):
        x, index = batch
        out0, out1 = self.encoder(x + 0.1 * torch.randn_like(x)), self.encoder(x + 0.1 * torch.randn_like(x))
        self.seen_guided.append(self.criterion.per_sample(index)[0] is not None)
        return self.criterion(out0, out1, index=index)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05)


def _fit(epochs, warmup_epochs):
    torch.manual_seed(0)
    data = IndexedDataset(TensorDataset(torch.randn(96, 6)))
    labeler = PseudoLabeler(len(data), 8, warmup_epochs=warmup_epochs)
    module = _SimCLR(labeler)
    trainer = lightning.Trainer(
        max_epochs=epochs,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[PseudoLabelerCallback(labeler)],
    )
    trainer.fit(module, DataLoader(data, batch_size=32, shuffle=True))
    return labeler, module


def test_callback_estimates_after_the_warmup_and_the_loss_then_uses_it():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Lightning's advice on workers and logging
        labeler, module = _fit(epochs=3, warmup_epochs=1)
    assert labeler.num_estimates == 3 and labeler.bank.num_seen == 96
    # 3 batches per epoch: NT-Xent in epoch 0, TASE from epoch 1 on
    assert module.seen_guided == [False] * 3 + [True] * 6


def test_training_that_ends_inside_the_warmup_warns():
    with pytest.warns(UserWarning, match="inside the pseudo-labeler's warm-up of 5"):
        labeler, _ = _fit(epochs=2, warmup_epochs=5)
    assert not labeler.is_fitted
