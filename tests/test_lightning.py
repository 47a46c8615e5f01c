"""The Lightning callback runs the labeler's schedule in a real Trainer (CPU)."""

import csv
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


def test_a_run_as_long_as_the_warmup_warns_since_no_batch_is_guided():
    # warm-up 2: the first estimate ends epoch 2, so a 2-epoch run guides nothing
    with pytest.warns(UserWarning, match="warm-up of 2") as caught:
        labeler, module = _fit(epochs=2, warmup_epochs=2)
    assert labeler.is_fitted and not any(module.seen_guided)
    messages = [str(warning.message) for warning in caught]
    assert any(message.startswith("Trainer(max_epochs=2) ends inside") for message in messages), messages
    assert any("below 2" in message for message in messages), messages


def test_a_run_one_epoch_longer_than_the_warmup_does_not_warn():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        labeler, module = _fit(epochs=3, warmup_epochs=2)
    assert labeler.is_fitted and module.seen_guided[-1]
    assert not [w for w in caught if "warm-up" in str(w.message)]


def test_the_estimate_summary_reaches_a_csv_logger(tmp_path):
    torch.manual_seed(0)
    data = IndexedDataset(TensorDataset(torch.randn(96, 6)))
    labeler = PseudoLabeler(len(data), 8, warmup_epochs=1)
    module = _SimCLR(labeler)
    trainer = lightning.Trainer(
        max_epochs=2,
        accelerator="cpu",
        logger=lightning.pytorch.loggers.CSVLogger(tmp_path, name="run"),
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[PseudoLabelerCallback(labeler)],
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(module, DataLoader(data, batch_size=32, shuffle=True))
    (metrics_file,) = tmp_path.glob("run/*/metrics.csv")
    rows = list(csv.DictReader(metrics_file.open()))
    logged = [row for row in rows if row.get("tase/num_groups")]
    assert len(logged) == 2  # one row per estimate: the ends of epochs 0 and 1
    summary = module.criterion.guidance.summary()
    temperature = module.criterion.guidance.tables(torch.device("cpu"))[0]
    assert float(logged[-1]["tase/temperature_min"]) == pytest.approx(float(temperature.min()))
    assert float(logged[-1]["tase/temperature_max"]) == pytest.approx(summary["temperature_max"])
    assert float(logged[-1]["tase/num_groups"]) == float((labeler.group_sizes > 0).sum())
