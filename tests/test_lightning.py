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
    logged = module.trainer.callback_metrics
    assert float(logged["tase/num_groups"]) == float((labeler.group_sizes > 0).sum())
    assert float(logged["tase/log_frequency_span"]) == pytest.approx(labeler.summary()["log_frequency_span"])


def test_training_that_ends_inside_the_warmup_warns():
    with pytest.warns(UserWarning, match="inside the pseudo-labeler's warm-up of 5") as caught:
        labeler, _ = _fit(epochs=2, warmup_epochs=5)
    assert not labeler.is_fitted
    messages = [str(warning.message) for warning in caught]
    # once before training (from max_epochs), once at its end
    assert any(message.startswith("Trainer(max_epochs=2) ends inside") for message in messages), messages
    assert any(message.startswith("training ended after") for message in messages), messages


def test_a_run_long_enough_for_the_warmup_does_not_warn_up_front():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        labeler, _ = _fit(epochs=2, warmup_epochs=2)
    assert labeler.is_fitted
    assert not [w for w in caught if "warm-up" in str(w.message)]
