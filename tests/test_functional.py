"""Values and gradients of the functional losses against the loop oracles in float64."""

import pytest
import torch
from oracles import cosine_loop, lightly_nt_xent, moco_loop, nt_xent_loop

from tase_loss import byol_loss, moco_loss, nt_xent_loss, simsiam_loss
from tase_loss.functional import weighted_reduce

F64 = torch.float64


def _pair(batch_size=6, dim=5, seed=0, requires_grad=True):
    generator = torch.Generator().manual_seed(seed)
    out0 = torch.randn(batch_size, dim, dtype=F64, generator=generator)
    out1 = torch.randn(batch_size, dim, dtype=F64, generator=generator)
    return out0.requires_grad_(requires_grad), out1.requires_grad_(requires_grad)


def _grads(loss, *tensors):
    return torch.autograd.grad(loss, tensors, retain_graph=True)


def _assert_close(actual, expected):
    torch.testing.assert_close(actual, expected, rtol=1e-6, atol=1e-12)


@pytest.mark.parametrize("temperature", [0.07, 0.2, 1.0])
def test_nt_xent_matches_loop_and_lightly_with_one_temperature(temperature):
    out0, out1 = _pair()
    loss = nt_xent_loss(out0, out1, temperature)
    loop = nt_xent_loop(out0, out1, torch.full((6,), temperature, dtype=F64), torch.ones(6, dtype=F64))
    lightly = lightly_nt_xent(out0, out1, temperature)
    _assert_close(loss, loop)
    _assert_close(loss, lightly)
    for ours, theirs in zip(_grads(loss, out0, out1), _grads(lightly, out0, out1)):
        _assert_close(ours, theirs)
    for ours, theirs in zip(_grads(loss, out0, out1), _grads(loop, out0, out1)):
        _assert_close(ours, theirs)


def test_nt_xent_with_per_sample_temperature_and_weight_matches_loop():
    out0, out1 = _pair(batch_size=7, dim=3, seed=1)
    generator = torch.Generator().manual_seed(2)
    temperature = (0.05 + torch.rand(7, dtype=F64, generator=generator)).requires_grad_()
    weight = torch.rand(7, dtype=F64, generator=generator).requires_grad_()
    loss = nt_xent_loss(out0, out1, temperature, weight)
    loop = nt_xent_loop(out0, out1, temperature, weight)
    _assert_close(loss, loop)
    for ours, theirs in zip(
        _grads(loss, out0, out1, temperature, weight), _grads(loop, out0, out1, temperature, weight)
    ):
        _assert_close(ours, theirs)


@pytest.mark.parametrize("reduction", ["sum", "none"])
def test_nt_xent_reductions_are_consistent_with_the_mean(reduction):
    out0, out1 = _pair(requires_grad=False)
    weight = torch.rand(6, dtype=F64)
    value = nt_xent_loss(out0, out1, 0.3, weight, reduction=reduction)
    total = value if reduction == "sum" else value.sum()
    if reduction == "none":
        assert value.shape == (12,)
    _assert_close(total / (2 * weight.sum()), nt_xent_loss(out0, out1, 0.3, weight))


def test_moco_matches_loop_with_queue_temperature_and_weight():
    queries, keys = _pair(batch_size=5, dim=4, seed=3)
    generator = torch.Generator().manual_seed(4)
    queue = torch.randn(9, 4, dtype=F64, generator=generator)
    temperature = (0.1 + torch.rand(5, dtype=F64, generator=generator)).requires_grad_()
    weight = torch.rand(5, dtype=F64, generator=generator)
    loss = moco_loss(queries, keys, queue, temperature, weight)
    loop = moco_loop(queries, keys, queue, temperature, weight)
    _assert_close(loss, loop)
    for ours, theirs in zip(
        _grads(loss, queries, keys, temperature), _grads(loop, queries, keys, temperature)
    ):
        _assert_close(ours, theirs)


@pytest.mark.parametrize("variant,function", [("byol", byol_loss), ("simsiam", simsiam_loss)])
def test_weighted_cosine_losses_match_loop(variant, function):
    prediction, target = _pair(batch_size=5, dim=4, seed=5)
    weight = torch.rand(5, dtype=F64, generator=torch.Generator().manual_seed(6))
    loss = function(prediction, target, weight)
    loop = cosine_loop(prediction, target, weight, variant)
    _assert_close(loss, loop)
    _assert_close(_grads(loss, prediction)[0], _grads(loop, prediction)[0])
    detached = torch.autograd.grad(function(prediction, target), target, allow_unused=True)
    assert detached[0] is None


def test_gradcheck_embeddings_temperature_and_weight():
    out0, out1 = _pair(batch_size=4, dim=3, seed=7)
    temperature = torch.tensor([0.3, 0.5, 0.2, 0.8], dtype=F64, requires_grad=True)
    weight = torch.tensor([1.0, 0.5, 2.0, 0.1], dtype=F64, requires_grad=True)
    assert torch.autograd.gradcheck(nt_xent_loss, (out0, out1, temperature, weight))
    queue = torch.randn(6, 3, dtype=F64)
    assert torch.autograd.gradcheck(
        lambda q, k, t, w: moco_loss(q, k, queue, t, w), (out0, out1, temperature, weight)
    )


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_inputs_give_float32_loss_close_to_float32(dtype):
    out0, out1 = _pair(batch_size=64, dim=32, seed=8, requires_grad=False)
    reference = nt_xent_loss(out0.float(), out1.float(), 0.1)
    half = nt_xent_loss(out0.to(dtype), out1.to(dtype), 0.1)
    assert half.dtype == torch.float32 and torch.isfinite(half)
    # bf16 keeps 8 mantissa bits: similarities are off by ~4e-3, logits by ~4e-2 at t=0.1.
    assert abs(float(half) - float(reference)) < (0.05 if dtype == torch.bfloat16 else 0.01)


def test_cpu_autocast_bfloat16_stays_finite_and_close():
    out0, out1 = _pair(batch_size=64, dim=32, seed=9, requires_grad=False)
    reference = nt_xent_loss(out0.float(), out1.float(), 0.05)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = nt_xent_loss(out0.float() * 100, out1.float() * 100, 0.05)
    assert loss.dtype == torch.float32
    assert abs(float(loss) - float(reference)) < 0.1


def test_weighted_reduce_mean_divides_by_weight_sum():
    values = torch.tensor([2.0, 6.0])
    weight = torch.tensor([1.0, 3.0])
    assert float(weighted_reduce(values, weight, "mean")) == pytest.approx(2.0)
    assert float(weighted_reduce(values, None, "mean")) == pytest.approx(4.0)
