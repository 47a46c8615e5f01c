"""rwSAM against a hand-written two-pass reference (float64), and its running-state rules."""

import copy

import pytest
import torch
from oracles import nt_xent_loop
from torch import nn

from tase_loss import (
    RwSAM,
    TASEContrastiveLoss,
    TASECosineLoss,
    frozen_batch_norm,
    rwsam_step,
)

F64 = torch.float64
TEMPERATURE = 0.5
LR, MOMENTUM, WEIGHT_DECAY = 0.1, 0.9, 5e-4
BATCH = 6


def _tiny_mlp(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(5, 7), nn.BatchNorm1d(7), nn.ReLU(), nn.Linear(7, 4)).double()


def _batch(seed=1):
    generator = torch.Generator().manual_seed(seed)
    x0 = torch.randn(BATCH, 5, dtype=F64, generator=generator)
    x1 = torch.randn(BATCH, 5, dtype=F64, generator=generator)
    weight = 0.2 + 2 * torch.rand(BATCH, dtype=F64, generator=generator)
    return x0, x1, weight


def _mlp_by_hand(params, x):
    """The tiny MLP written out: Linear -> BatchNorm (batch statistics) -> ReLU -> Linear."""
    hidden = x @ params["0.weight"].T + params["0.bias"]
    mean = hidden.mean(dim=0)
    variance = ((hidden - mean) ** 2).mean(dim=0)
    hidden = (hidden - mean) / torch.sqrt(variance + 1e-5) * params["1.weight"] + params["1.bias"]
    hidden = torch.clamp(hidden, min=0)
    return hidden @ params["3.weight"].T + params["3.bias"]


def _loss_by_hand(params, x0, x1, weight):
    out = _mlp_by_hand(params, torch.cat([x0, x1]))
    return nt_xent_loop(out[:BATCH], out[BATCH:], torch.full((BATCH,), TEMPERATURE, dtype=F64), weight)


def _reference_steps(model, batches, rho, adaptive, weighted_ascent=True):
    """Two-pass SAM steps with SGD (momentum, weight decay), from the formulas.

    Pass 1: gradient g of the weighted loss (unit weights when weighted_ascent is False),
    e = rho * g / (||g|| + 1e-12) or rho * p^2 g / (|| |p| g || + 1e-12), global norms.
    Pass 2: gradient of the unweighted loss at p + e; SGD from p with that gradient.
    """
    params = {name: p.detach().clone() for name, p in model.named_parameters()}
    velocity = None
    trajectory = []
    for x0, x1, weight in batches:
        names = list(params)
        leaves = [params[name].clone().requires_grad_() for name in names]
        ascent_weight = weight if weighted_ascent else torch.ones_like(weight)
        loss = _loss_by_hand(dict(zip(names, leaves)), x0, x1, ascent_weight)
        grads = torch.autograd.grad(loss, leaves)
        if adaptive:
            squared = sum(((p.abs() * g) ** 2).sum() for p, g in zip(leaves, grads))
        else:
            squared = sum((g**2).sum() for g in grads)
        scale = rho / (torch.sqrt(squared) + 1e-12)
        perturbed = [
            (p.detach() + (p.detach() ** 2 if adaptive else 1.0) * g * scale).requires_grad_()
            for p, g in zip(leaves, grads)
        ]
        loss = _loss_by_hand(dict(zip(names, perturbed)), x0, x1, torch.ones_like(weight))
        grads = torch.autograd.grad(loss, perturbed)
        directions = [g + WEIGHT_DECAY * params[name] for name, g in zip(names, grads)]
        velocity = (
            directions
            if velocity is None
            else [MOMENTUM * v + d for v, d in zip(velocity, directions)]
        )
        params = {name: params[name] - LR * v for name, v in zip(names, velocity)}
        trajectory.append(params)
    return trajectory


def _library_step(model, optimizer, criterion, x0, x1, weight):
    def compute_loss(batch_weight):
        out = model(torch.cat([x0, x1]))
        return criterion(out[:BATCH], out[BATCH:], weight=batch_weight)

    return rwsam_step(optimizer, compute_loss, weight, freeze=[model, criterion])


def _make_optimizer(model, rho, adaptive):
    return RwSAM(
        model.parameters(),
        torch.optim.SGD,
        rho=rho,
        adaptive=adaptive,
        lr=LR,
        momentum=MOMENTUM,
        weight_decay=WEIGHT_DECAY,
    )


def _assert_params(model, expected):
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.detach(), expected[name], rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("adaptive,rho", [(False, 0.05), (True, 0.5)])
def test_two_steps_match_the_hand_written_reference(adaptive, rho):
    model = _tiny_mlp()
    batches = [_batch(1), _batch(2)]
    expected = _reference_steps(copy.deepcopy(model), batches, rho, adaptive)
    optimizer = _make_optimizer(model, rho, adaptive)
    criterion = TASEContrastiveLoss(temperature=TEMPERATURE)
    for batch, params in zip(batches, expected):
        _library_step(model, optimizer, criterion, *batch)
        _assert_params(model, params)


@pytest.mark.parametrize("adaptive,rho", [(False, 0.05), (True, 0.5)])
def test_manual_first_second_step_and_closure_match_the_reference(adaptive, rho):
    x0, x1, weight = _batch(3)
    expected = _reference_steps(_tiny_mlp(), [(x0, x1, weight)], rho, adaptive)[0]
    criterion = TASEContrastiveLoss(temperature=TEMPERATURE)

    def loss_of(model, batch_weight):
        out = model(torch.cat([x0, x1]))
        return criterion(out[:BATCH], out[BATCH:], weight=batch_weight)

    manual = _tiny_mlp()
    optimizer = _make_optimizer(manual, rho, adaptive)
    loss_of(manual, weight).backward()
    optimizer.first_step(zero_grad=True)
    assert optimizer.is_perturbed
    with frozen_batch_norm(manual):
        loss_of(manual, None).backward()
    optimizer.second_step(zero_grad=True)
    _assert_params(manual, expected)

    closure_model = _tiny_mlp()
    optimizer = _make_optimizer(closure_model, rho, adaptive)
    loss_of(closure_model, weight).backward()

    def closure():
        loss = loss_of(closure_model, None)
        loss.backward()
        return loss

    optimizer.step(closure)
    _assert_params(closure_model, expected)


def _step_with_ascent_reduction(rho, adaptive, weight, reduction, x0, x1):
    """One rwSAM step whose pass 1 uses ``reduction`` and whose pass 2 is the plain mean."""
    model = _tiny_mlp()
    optimizer = _make_optimizer(model, rho, adaptive)
    ascent = TASEContrastiveLoss(temperature=TEMPERATURE, reduction=reduction)
    descent = TASEContrastiveLoss(temperature=TEMPERATURE)

    def compute_loss(batch_weight):
        out0, out1 = model(torch.cat([x0, x1])).split(BATCH)
        if batch_weight is None:
            return descent(out0, out1)
        return ascent(out0, out1, weight=batch_weight)

    rwsam_step(optimizer, compute_loss, weight, freeze=[model])
    return {name: p.detach().clone() for name, p in model.named_parameters()}


@pytest.mark.parametrize("adaptive", [False, True])
def test_all_equal_weights_give_plain_sam(adaptive):
    x0, x1, weight = _batch(4)
    plain_sam = _reference_steps(_tiny_mlp(), [(x0, x1, weight)], 0.1, adaptive, weighted_ascent=False)[0]
    weighted = _reference_steps(_tiny_mlp(), [(x0, x1, weight)], 0.1, adaptive)[0]
    # The test can fail: unequal weights do move the step.
    assert max((plain_sam[n] - weighted[n]).abs().max() for n in plain_sam) > 1e-6
    equal = torch.full((BATCH,), 3.7, dtype=F64)
    for reduction in ("mean", "sum"):
        # "sum" (the official sum_j w_j l_j form) scales the ascent gradient by 3.7 * 2B;
        # only the 1e-12 in the norm's denominator tells them apart.
        params = _step_with_ascent_reduction(0.1, adaptive, equal, reduction, x0, x1)
        for name, value in params.items():
            torch.testing.assert_close(value, plain_sam[name], rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("adaptive", [False, True])
def test_only_relative_weights_matter(adaptive):
    """Scaling every weight, or the official sum_j w_j l_j instead of the weighted mean,
    leaves the step unchanged (the perturbation is normalized)."""
    x0, x1, weight = _batch(5)
    results = [
        _step_with_ascent_reduction(0.2, adaptive, scale * weight, reduction, x0, x1)
        for scale, reduction in ((1.0, "mean"), (7.3, "mean"), (1.0, "sum"), (0.01, "sum"))
    ]
    # Exact but for the 1e-12 in the norm's denominator: with weights scaled by 0.01 and
    # summed, ||g|| is small enough that it moves e by about 1e-11 relative, so the
    # parameters agree to about 1e-13 rather than to rounding.
    for other in results[1:]:
        for name in results[0]:
            torch.testing.assert_close(other[name], results[0][name], rtol=1e-12, atol=1e-12)


def test_batch_norm_statistics_update_once_per_step():
    x0, x1, weight = _batch(6)
    inputs = torch.cat([x0, x1])
    plain = _tiny_mlp()
    plain(inputs)  # one ordinary training forward at the unperturbed weights
    model = _tiny_mlp()
    optimizer = _make_optimizer(model, 0.5, True)
    _library_step(model, optimizer, TASEContrastiveLoss(temperature=TEMPERATURE), x0, x1, weight)
    for name, buffer in plain.named_buffers():
        torch.testing.assert_close(dict(model.named_buffers())[name], buffer, rtol=0, atol=0)
    assert int(model[1].num_batches_tracked) == 1

    # Without freezing, the official code's behaviour: two updates per step.
    unfrozen = _tiny_mlp()
    optimizer = _make_optimizer(unfrozen, 0.5, True)
    criterion = TASEContrastiveLoss(temperature=TEMPERATURE)
    rwsam_step(
        optimizer,
        lambda w: criterion(*unfrozen(inputs).split(BATCH), weight=w),
        weight,
    )
    assert int(unfrozen[1].num_batches_tracked) == 2


def test_frozen_batch_norm_restores_the_flag_and_keeps_momentum_none_layers():
    layer = nn.BatchNorm1d(3, momentum=None).double()
    untracked = nn.BatchNorm1d(3, track_running_stats=False).double()
    model = nn.Sequential(layer, untracked)
    inputs = torch.randn(8, 3, dtype=F64)
    with pytest.raises(RuntimeError, match="boom"), frozen_batch_norm(model):
        frozen_out = model(inputs)
        raise RuntimeError("boom")
    assert layer.track_running_stats and not untracked.track_running_stats
    assert int(layer.num_batches_tracked) == 0
    torch.testing.assert_close(layer.running_mean, torch.zeros(3, dtype=F64))
    torch.testing.assert_close(frozen_out, model(inputs))  # same batch-statistics output
    with pytest.raises(TypeError, match=r"nn\.Module"), frozen_batch_norm("model"):
        pass


def _moco_setup(seed=7):
    torch.manual_seed(seed)
    encoder = nn.Sequential(nn.Linear(5, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 4)).double()
    momentum_encoder = copy.deepcopy(encoder).requires_grad_(False)
    criterion = TASEContrastiveLoss(temperature=0.2, queue_size=16, feature_dim=4).double()
    return encoder, momentum_encoder, criterion


def test_moco_queue_is_enqueued_once_and_both_passes_see_the_same_queue():
    encoder, momentum_encoder, criterion = _moco_setup()
    optimizer = RwSAM(encoder.parameters(), torch.optim.SGD, rho=0.05, lr=0.1)
    x0, x1, weight = _batch(8)
    with torch.no_grad():
        criterion(encoder(x0), momentum_encoder(x1))  # a first batch fills part of the queue
        queue_before = criterion.queue.keys.clone()
        keys = momentum_encoder(x1)  # keys once per step
    seen_lengths = []

    def compute_loss(batch_weight):
        seen_lengths.append(int(criterion.queue.length))
        return criterion(encoder(x0), keys, weight=batch_weight)

    loss = rwsam_step(optimizer, compute_loss, weight, freeze=[encoder, criterion])
    assert torch.isfinite(loss)
    assert seen_lengths == [BATCH, BATCH]  # pass 2 did not see this batch's keys
    assert int(criterion.queue.length) == 2 * BATCH
    torch.testing.assert_close(criterion.queue.keys[:BATCH], queue_before[:BATCH])
    torch.testing.assert_close(
        criterion.queue.keys[BATCH : 2 * BATCH], torch.nn.functional.normalize(keys, dim=1)
    )


def test_queue_frozen_context_reads_without_writing():
    criterion = TASEContrastiveLoss(temperature=0.2, queue_size=8, feature_dim=3)
    queries, keys = torch.randn(4, 3), torch.randn(4, 3)
    criterion(queries, keys)
    with criterion.queue_frozen():
        with criterion.queue_frozen():
            frozen_loss = criterion(queries, keys)
        criterion(queries, keys)
        assert int(criterion.queue.length) == 4
    # Outside the block the same call enqueues again and reads the same queue as before.
    torch.testing.assert_close(criterion(queries, keys), frozen_loss)
    assert int(criterion.queue.length) == 8


@pytest.mark.parametrize("variant", ["byol", "simsiam"])
def test_training_step_with_cosine_losses(variant):
    torch.manual_seed(9)
    online = nn.Sequential(nn.Linear(5, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 4)).double()
    predictor = nn.Linear(4, 4).double()
    parameters = list(online.parameters()) + list(predictor.parameters())
    optimizer = RwSAM(parameters, torch.optim.SGD, rho=0.05, adaptive=True, lr=0.05)
    criterion = TASECosineLoss(variant)
    x0, x1, weight = _batch(10)
    before = [p.detach().clone() for p in parameters]
    if variant == "byol":
        target_network = copy.deepcopy(online).requires_grad_(False)
        with torch.no_grad():
            targets = target_network(x1)  # the target (and its EMA) once per step

        def compute_loss(batch_weight):
            return criterion(predictor(online(x0)), targets, weight=batch_weight)

    else:

        def compute_loss(batch_weight):
            z0, z1 = online(x0), online(x1)
            p0, p1 = predictor(z0), predictor(z1)
            return 0.5 * (
                criterion(p0, z1, weight=batch_weight) + criterion(p1, z0, weight=batch_weight)
            )

    loss = rwsam_step(optimizer, compute_loss, weight, freeze=[online, predictor])
    assert torch.isfinite(loss) and not optimizer.is_perturbed
    # (The first bias feeds a BatchNorm, so its gradient is zero; the rest must move.)
    for p, q in zip([online[3].weight, predictor.weight], [before[4], before[6]]):
        assert not torch.equal(p, q)
    assert all(p.grad is None for p in parameters)


def test_training_step_with_simclr_changes_the_parameters():
    model = _tiny_mlp()
    before = [p.detach().clone() for p in model.parameters()]
    optimizer = _make_optimizer(model, 0.05, False)
    loss = _library_step(model, optimizer, TASEContrastiveLoss(temperature=0.2), *_batch(11))
    assert torch.isfinite(loss)
    assert all(not torch.equal(p, q) for p, q in zip(model.parameters(), before))


@pytest.mark.parametrize("base", [torch.optim.SGD, torch.optim.Adam])
def test_state_dict_round_trip_resumes_identically(base, tmp_path):
    kwargs = {"lr": 0.05, "momentum": 0.9} if base is torch.optim.SGD else {"lr": 0.01}
    batches = [_batch(seed) for seed in range(20, 24)]
    criterion = TASEContrastiveLoss(temperature=TEMPERATURE)
    model = _tiny_mlp()
    optimizer = RwSAM(model.parameters(), base, rho=0.3, adaptive=True, **kwargs)
    for batch in batches[:2]:
        _library_step(model, optimizer, criterion, *batch)
    path = tmp_path / "checkpoint.pt"
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict()}, path)
    for batch in batches[2:]:
        _library_step(model, optimizer, criterion, *batch)

    checkpoint = torch.load(path, weights_only=True)
    resumed = _tiny_mlp(seed=99)
    resumed.load_state_dict(checkpoint["model"])
    resumed_optimizer = RwSAM(resumed.parameters(), base, rho=0.01, **kwargs)
    resumed_optimizer.load_state_dict(checkpoint["optimizer"])
    assert resumed_optimizer.param_groups[0]["rho"] == 0.3
    assert resumed_optimizer.param_groups[0]["adaptive"] is True
    assert resumed_optimizer.param_groups is resumed_optimizer.base_optimizer.param_groups
    assert len(resumed_optimizer.base_optimizer.state) > 0
    for batch in batches[2:]:
        _library_step(resumed, resumed_optimizer, criterion, *batch)
    for (name, p), q in zip(model.named_parameters(), resumed.parameters()):
        torch.testing.assert_close(q, p, rtol=0, atol=0, msg=name)
    for name, buffer in model.named_buffers():
        torch.testing.assert_close(dict(resumed.named_buffers())[name], buffer, rtol=0, atol=0)


def test_learning_rate_scheduler_drives_the_base_optimizer_without_warnings():
    model = _tiny_mlp()
    optimizer = _make_optimizer(model, 0.05, False)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _library_step(model, optimizer, TASEContrastiveLoss(temperature=0.2), *_batch(30))
        scheduler.step()
    assert optimizer.base_optimizer.param_groups[0]["lr"] == pytest.approx(LR / 2)


def test_existing_optimizer_instance_as_base():
    model = _tiny_mlp()
    base = torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY)
    optimizer = RwSAM(model.parameters(), base, rho=0.05)
    x0, x1, weight = _batch(1)
    expected = _reference_steps(_tiny_mlp(), [(x0, x1, weight)], 0.05, False)[0]
    _library_step(model, optimizer, TASEContrastiveLoss(temperature=TEMPERATURE), x0, x1, weight)
    _assert_params(model, expected)
    with pytest.raises(TypeError, match="instance"):
        RwSAM(model.parameters(), base, lr=0.1)
    with pytest.raises(ValueError, match="exactly the parameters"):
        RwSAM(list(model.parameters())[:2], base)


def test_misuse_raises_instead_of_stepping_silently():
    model = _tiny_mlp()
    optimizer = _make_optimizer(model, 0.05, False)
    with pytest.raises(RuntimeError, match="two passes"):
        optimizer.step()
    with pytest.raises(RuntimeError, match="needs first_step"):
        optimizer.second_step()
    with pytest.raises(RuntimeError, match="no gradients"):
        optimizer.first_step()
    x0, x1, weight = _batch(1)
    criterion = TASEContrastiveLoss(temperature=TEMPERATURE)
    criterion(*model(torch.cat([x0, x1])).split(BATCH), weight=weight).backward()
    before = [p.detach().clone() for p in model.parameters()]
    optimizer.first_step()
    with pytest.raises(RuntimeError, match="twice"):
        optimizer.first_step()
    with pytest.raises(RuntimeError, match="already perturbed"):
        optimizer.step(lambda: None)
    with pytest.raises(RuntimeError, match="finish the step"):
        optimizer.state_dict()
    optimizer._restore()
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), before))


def test_a_failing_second_pass_restores_the_parameters():
    model = _tiny_mlp()
    optimizer = _make_optimizer(model, 0.05, False)
    before = [p.detach().clone() for p in model.parameters()]
    calls = []

    def compute_loss(batch_weight):
        calls.append(batch_weight)
        if batch_weight is None:
            raise ValueError("bad batch")
        x0, x1, _ = _batch(1)
        return TASEContrastiveLoss()(*model(torch.cat([x0, x1])).split(BATCH), weight=weight)

    weight = torch.ones(BATCH, dtype=F64)
    with pytest.raises(ValueError, match="bad batch"):
        rwsam_step(optimizer, compute_loss, weight, freeze=[model])
    assert not optimizer.is_perturbed
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), before))


def test_invalid_arguments_name_themselves():
    params = list(_tiny_mlp().parameters())
    with pytest.raises(ValueError, match="rho"):
        RwSAM(params, torch.optim.SGD, rho=-0.1, lr=0.1)
    with pytest.raises(ValueError, match="rho"):
        RwSAM(params, torch.optim.SGD, rho=float("nan"), lr=0.1)
    with pytest.raises(TypeError, match="adaptive"):
        RwSAM(params, torch.optim.SGD, adaptive=1, lr=0.1)
    with pytest.raises(TypeError, match="base_optimizer"):
        RwSAM(params, "sgd", lr=0.1)
    with pytest.raises(ValueError, match="state_dict"):
        RwSAM(params, torch.optim.SGD, lr=0.1).load_state_dict({"state": {}})
    with pytest.raises(TypeError, match="optimizer"):
        rwsam_step(torch.optim.SGD(params, lr=0.1), lambda w: None, torch.ones(2))
