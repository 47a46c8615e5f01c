"""The baseline methods in the runner: rwSAM, TS, OOD-guided (registry, a tiny run, exact resume)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tase_loss import RwSAM
from tase_loss.experiments import cli
from tase_loss.experiments.augmentations import simclr_augmentation
from tase_loss.experiments.encoders import build_model
from tase_loss.experiments.methods import Batch, MethodContext, MethodSettings, build_method
from tase_loss.experiments.methods.contrastive import MoCoSettings, TASESettings
from tase_loss.experiments.methods.ood import digits_ood_patches
from tase_loss.experiments.methods.rwsam import RwSAMSettings
from tase_loss.experiments.methods.schedule import ScheduleSettings
from tase_loss.experiments.training import TrainingConfig, train

NEW_METHODS = ["rwsam", "ts", "tase-ts", "ood-guided"]


def _context(epochs, rwsam=None, schedule=None):
    settings = MethodSettings(
        tase=TASESettings(num_clusters=(4,), warmup_epochs=1),
        moco=MoCoSettings(queue_size=64),
        rwsam=rwsam or RwSAMSettings(),
        schedule=schedule or ScheduleSettings(),
    )
    return MethodContext(40, 0, torch.device("cpu"), settings, epochs=epochs, image_shape=(1, 8, 8),
                         augment=simclr_augmentation(8, 1))


def _train_tiny(loss, tmp_path, name, stop_after=None, epochs=4, **settings):
    """Train ``loss`` on 40 random images; ``settings`` are ``rwsam=`` / ``schedule=`` overrides."""
    torch.manual_seed(0)
    images = torch.rand(40, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    model = build_model("digits-cnn", 1, projection_dim=16)
    method = build_method(loss, _context(epochs, **settings), model)
    config = TrainingConfig(
        epochs=epochs, batch_size=16, checkpoint_path=str(tmp_path / f"{name}.pt"),
        stop_after_epochs=stop_after, progress=False,
    )
    history = train(model, method, images, simclr_augmentation(8, 1), config)
    return model, method, history


def test_list_methods_shows_the_baselines(capsys):
    assert cli.main(["--list-methods"]) == 0
    listed = {line.split()[0] for line in capsys.readouterr().out.splitlines()}
    assert set(NEW_METHODS) <= listed


@pytest.mark.parametrize("loss", NEW_METHODS)
def test_resume_matches_uninterrupted_run(tmp_path, loss):
    full_model, _, full_history = _train_tiny(loss, tmp_path, "full")
    _train_tiny(loss, tmp_path, "split", stop_after=2)
    resumed_model, _, resumed_history = _train_tiny(loss, tmp_path, "split")
    assert len(full_history) == len(resumed_history) == 4
    assert all(np.isfinite(record["loss"]) for record in full_history)
    assert [record["loss"] for record in resumed_history] == [record["loss"] for record in full_history]
    for (name, value), (_, other) in zip(full_model.state_dict().items(), resumed_model.state_dict().items()):
        assert torch.equal(value, other), name
    assert _untimed(full_history) == _untimed(resumed_history)


def _untimed(history):
    """The history without its wall-clock fields (the only values that may differ)."""
    return [{key: value for key, value in record.items() if not key.endswith("seconds")} for record in history]


def test_rwsam_wraps_the_loops_optimizer_and_estimates_densities(tmp_path):
    model, method, history = _train_tiny("rwsam", tmp_path, "rwsam", epochs=2)
    assert isinstance(method._sam, RwSAM) and isinstance(method._sam.base_optimizer, torch.optim.AdamW)
    assert method._sam.param_groups is method._sam.base_optimizer.param_groups
    assert not method._sam.is_perturbed
    assert [record.get("density_estimated") for record in history] == [1.0, 1.0]
    weight = method.sample_statistics()["weight"]
    assert weight.shape == (40,) and np.isfinite(weight).all() and weight.std() > 0
    # BatchNorm statistics move once per step (pass 1 only): 3 batches of 16/16/8 per epoch
    batch_norm = next(m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))
    assert int(batch_norm.num_batches_tracked) == 2 * 3


def test_rwsam_step_equals_a_hand_written_sam_step():
    """Before the first estimate the weights are 1: one step is SAM on NT-Xent, written out here."""
    torch.manual_seed(0)
    model = build_model("digits-cnn", 1, projection_dim=16)
    twin = build_model("digits-cnn", 1, projection_dim=16)
    twin.load_state_dict(model.state_dict())
    method = build_method("rwsam", _context(4, rwsam=RwSAMSettings(rho=0.05, adaptive=False)), model)
    views = torch.rand(2, 12, 1, 8, 8)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    method.training_step(Batch(views[0], views[1], torch.arange(12)), model, optimizer)

    def loss_of(network):
        out0, out1 = network(torch.cat([views[0], views[1]]))[1].chunk(2)
        return method.criterion(out0, out1)

    start = [p.detach().clone() for p in twin.parameters()]
    gradients = torch.autograd.grad(loss_of(twin), list(twin.parameters()))
    norm = torch.stack([g.norm() for g in gradients]).norm()
    with torch.no_grad():
        for p, g in zip(twin.parameters(), gradients):
            p.add_(0.05 * g / (norm + 1e-12))
    from tase_loss import frozen_batch_norm

    with frozen_batch_norm(twin):
        gradients = torch.autograd.grad(loss_of(twin), list(twin.parameters()))
    with torch.no_grad():
        for p, p0, g in zip(twin.parameters(), start, gradients):
            p.copy_(p0 - 0.1 * g)
    for (name, value), other in zip(model.named_parameters(), twin.parameters()):
        torch.testing.assert_close(value, other, rtol=1e-5, atol=1e-6, msg=name)


def test_ts_follows_the_schedule_over_the_run(tmp_path):
    _, _, history = _train_tiny("ts", tmp_path, "ts", epochs=4)
    # period = 4 epochs: epochs 1..4 start at t(1..4) = 0.55, 0.1, 0.55, 1.0
    assert [record["temperature"] for record in history] == pytest.approx([0.55, 0.1, 0.55, 1.0])
    _, tase_ts, _ = _train_tiny("tase-ts", tmp_path, "tase-ts", epochs=2, schedule=ScheduleSettings(period=4.0))
    assert tase_ts.criterion.temperature == pytest.approx(0.1)
    assert tase_ts.guidance.temperature_map.base_temperature == pytest.approx(0.1)
    assert set(tase_ts.sample_statistics()) == {"frequency", "temperature", "weight"}
    fixed = build_method("ts", _context(40, schedule=ScheduleSettings(period=8.0)),
                         build_model("digits-cnn", 1, projection_dim=16))
    assert fixed.schedule.period == 8.0


def test_tase_ts_refuses_a_schedule_outside_an_explicit_clip_range_before_training():
    # the schedule reaches 0.1, below the explicit 0.3: refused when the method is built
    settings = MethodSettings(tase=TASESettings(temperature=0.5, min_temperature=0.3, num_clusters=(4,)))
    context = MethodContext(40, 0, torch.device("cpu"), settings, epochs=4, image_shape=(1, 8, 8))
    refused = "base temperature 0.1 is below the map's explicit min_temperature 0.3"
    with pytest.raises(ValueError, match=refused):
        build_method("tase-ts", context, build_model("digits-cnn", 1, projection_dim=16))


def test_ood_guided_runs_both_stages(tmp_path):
    _, method, history = _train_tiny("ood-guided", tmp_path, "ood", epochs=4)
    assert [record["stage"] for record in history] == [1.0, 1.0, 2.0, 2.0]
    assert method.recipe.guide is not None
    statistics = method.sample_statistics()
    assert statistics["frequency"].shape == (40,) and np.isfinite(statistics["weight"]).all()


def test_ood_guided_refuses_data_without_an_ood_source():
    with pytest.raises(ValueError, match=r"ood-guided needs an OOD source for \(3, 32, 32\) images"):
        digits_ood_patches(4, (3, 32, 32))
    context = _context(4)
    context.image_shape = (3, 32, 32)
    with pytest.raises(ValueError, match="OOD source"):
        build_method("ood-guided", context, build_model("small-cnn", 3, projection_dim=16))
    patches = digits_ood_patches(8, (1, 8, 8))
    assert float(patches.min()) == 0.0 and float(patches.max()) == 1.0


def test_methods_needing_the_run_length_say_so():
    model = build_model("digits-cnn", 1, projection_dim=16)
    for loss in ("ts", "ood-guided"):
        with pytest.raises(ValueError, match="number of epochs"):
            build_method(loss, MethodContext(40, 0, torch.device("cpu"), MethodSettings()), model)


def test_cli_ood_guided_on_data_without_source_ends_with_one_error_line(capsys, tmp_path):
    path = str(tmp_path / "rgb.npz")
    generator = np.random.default_rng(0)
    np.savez(path, x=generator.integers(0, 256, (24, 8, 8, 3), dtype=np.uint8), y=np.arange(24) % 3,
             x_test=generator.integers(0, 256, (12, 8, 8, 3), dtype=np.uint8), y_test=np.arange(12) % 3)
    code = cli.main(["--data", path, "--methods", "ood-guided", "--epochs", "2", "--seeds", "0",
                     "--no-progress", "--output", str(tmp_path / "out")])
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert lines[-1].startswith("tase-experiment: error: ood-guided needs an OOD source for (3, 8, 8) images")
