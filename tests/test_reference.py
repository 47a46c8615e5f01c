"""The pure-PyTorch rows (materialized and chunked) against the float64 loop oracle; dispatch."""

import importlib

import pytest
import torch
from oracles import row_losses_loop

from tase_loss import functional
from tase_loss import ops as dispatch
from tase_loss.ops.chunked import contrastive_rows_chunked
from tase_loss.ops.reference import contrastive_rows_reference

F64 = torch.float64


def _case(rows, num_keys, dim, self_mode="mixed", dtype=F64, seed=0, keys_grad=True):
    generator = torch.Generator().manual_seed(seed)
    queries = torch.nn.functional.normalize(torch.randn(rows, dim, generator=generator, dtype=F64), dim=1)
    keys = torch.nn.functional.normalize(torch.randn(num_keys, dim, generator=generator, dtype=F64), dim=1)
    positive = torch.randint(0, num_keys, (rows,), generator=generator)
    self_index = (positive + 1 + torch.randint(0, num_keys - 1, (rows,), generator=generator)) % num_keys
    if self_mode == "none":
        self_index = torch.full((rows,), -1)
    elif self_mode == "mixed":
        self_index[::3] = -1
    inverse_temperature = 1.0 / (0.05 + torch.rand(rows, generator=generator, dtype=F64))
    weight = torch.rand(rows, generator=generator, dtype=F64) * 2
    row_dtype = F64 if dtype == F64 else torch.float32
    return (
        queries.to(dtype).requires_grad_(),
        keys.to(dtype).requires_grad_(keys_grad),
        positive,
        self_index,
        inverse_temperature.to(row_dtype).requires_grad_(),
        weight.to(row_dtype).requires_grad_(),
    )


def _detached(case, keys_grad=True):
    return tuple(t.detach().clone().requires_grad_(t.requires_grad) if t.is_floating_point() else t for t in case)


def _values_and_grads(rows_fn, case, grad_rows):
    loss = rows_fn(*case)
    inputs = [t for t in (case[0], case[1], case[4], case[5]) if t.requires_grad]
    return (loss, *torch.autograd.grad(loss, inputs, grad_rows))


@pytest.mark.parametrize("self_mode", ["none", "distinct", "mixed"])
def test_materialized_rows_match_the_loop_oracle(self_mode):
    case = _case(7, 11, 4, self_mode=self_mode, seed=1)
    queries, keys, positive, self_index, inverse_temperature, weight = case
    loop = torch.stack(row_losses_loop(queries, keys, positive.tolist(), self_index.tolist(), 1 / inverse_temperature))
    expected = weight * loop
    grad_rows = torch.rand(7, dtype=F64, generator=torch.Generator().manual_seed(2))
    ours = _values_and_grads(contrastive_rows_reference, case, grad_rows)
    theirs = (expected, *torch.autograd.grad(expected, [queries, keys, inverse_temperature, weight], grad_rows))
    for actual, wanted in zip(ours, theirs):
        torch.testing.assert_close(actual, wanted, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("rows,num_keys,block_rows", [(9, 13, 4), (64, 64, 64), (130, 70, 64), (5, 300, 2)])
@pytest.mark.parametrize("uniform_grad", [True, False])
@pytest.mark.parametrize("self_mode", ["none", "mixed"])
def test_chunked_rows_match_the_materialized_rows_in_float64(rows, num_keys, block_rows, uniform_grad, self_mode):
    case = _case(rows, num_keys, 6, self_mode=self_mode, seed=3)
    twin = _detached(case)
    grad_rows = (
        torch.full((rows,), 0.7, dtype=F64)
        if uniform_grad
        else torch.randn(rows, dtype=F64, generator=torch.Generator().manual_seed(4))
    )

    def chunked(*arguments):
        return contrastive_rows_chunked(*arguments, uniform_grad=uniform_grad, block_rows=block_rows)

    for actual, wanted in zip(
        _values_and_grads(chunked, case, grad_rows), _values_and_grads(contrastive_rows_reference, twin, grad_rows)
    ):
        torch.testing.assert_close(actual, wanted, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("uniform_grad", [True, False])
def test_chunked_moco_shape_without_key_gradient(uniform_grad):
    case = _case(20, 75, 8, self_mode="none", seed=5, keys_grad=False)
    twin = _detached(case)
    grad_rows = torch.full((20,), 0.1, dtype=F64)
    chunked = _values_and_grads(
        lambda *a: contrastive_rows_chunked(*a, uniform_grad=uniform_grad, block_rows=8), case, grad_rows
    )
    materialized = _values_and_grads(contrastive_rows_reference, twin, grad_rows)
    assert case[1].grad is None
    for actual, wanted in zip(chunked, materialized):
        torch.testing.assert_close(actual, wanted, rtol=1e-12, atol=1e-12)


def test_chunked_gradcheck_float64():
    queries, keys, positive, self_index, inverse_temperature, weight = _case(9, 13, 4, seed=6)

    def recompute(q, k, t, w):
        return contrastive_rows_chunked(q, k, positive, self_index, t, w, block_rows=4)

    def promised(q, k, t, w):
        return contrastive_rows_chunked(q, k, positive, self_index, t, w, uniform_grad=True, block_rows=4).sum()

    assert torch.autograd.gradcheck(recompute, (queries, keys, inverse_temperature, weight))
    assert torch.autograd.gradcheck(promised, (queries, keys, inverse_temperature, weight))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_inputs_chunked_equal_materialized_in_the_same_dtype(dtype):
    case = _case(40, 90, 16, dtype=dtype, seed=7)
    twin = _detached(case)
    grad_rows = torch.full((40,), 1 / 40)
    chunked = _values_and_grads(lambda *a: contrastive_rows_chunked(*a, block_rows=16), case, grad_rows)
    materialized = _values_and_grads(contrastive_rows_reference, twin, grad_rows)
    for actual, wanted in zip(chunked, materialized):
        assert actual.dtype == wanted.dtype
        torch.testing.assert_close(actual.float(), wanted.float(), rtol=2e-2, atol=2e-3)


def test_dispatch_order_fused_then_chunked_then_materialized(monkeypatch):
    """The one dispatch of ops.contrastive_rows, documented in its docstring."""
    called = []

    def spy(name, result_of):
        def run(*arguments, **options):
            called.append(name)
            return result_of(*arguments[:6])

        return run

    monkeypatch.setattr(dispatch, "contrastive_rows_fused", spy("fused", contrastive_rows_reference))
    monkeypatch.setattr(dispatch, "contrastive_rows_chunked", spy("chunked", contrastive_rows_reference))
    monkeypatch.setattr(dispatch, "contrastive_rows_reference", spy("materialized", contrastive_rows_reference))
    case = tuple(t.detach() if t.is_floating_point() else t for t in _case(8, 8, 4))
    monkeypatch.setattr(dispatch, "missing_kernel", lambda device_type, dtype: None)
    monkeypatch.setattr(dispatch, "FUSED_ABOVE_ON_CPU", 63)
    dispatch.contrastive_rows(*case)  # the op: 64 logits > 63
    monkeypatch.setattr(dispatch, "FUSED_ABOVE_ON_CPU", 64)
    monkeypatch.setattr(dispatch, "CHUNKED_ABOVE", 64)
    dispatch.contrastive_rows(*case)  # too small for the op on the CPU: materialized
    monkeypatch.setattr(dispatch, "missing_kernel", lambda device_type, dtype: "no kernel (test)")
    monkeypatch.setattr(dispatch, "CHUNKED_ABOVE", 63)
    dispatch.contrastive_rows(*case)  # 8 x 8 = 64 logits > 63
    monkeypatch.setattr(dispatch, "CHUNKED_ABOVE", 64)
    dispatch.contrastive_rows(*case)
    assert called == ["fused", "materialized", "chunked", "materialized"]


def test_nt_xent_through_the_chunked_path_equals_the_materialized(monkeypatch):
    out0, out1 = (
        torch.randn(12, 5, dtype=F64, generator=torch.Generator().manual_seed(8)).requires_grad_() for _ in range(2)
    )
    temperature = torch.rand(12, dtype=F64) * 0.3 + 0.05
    weight = torch.rand(12, dtype=F64)
    monkeypatch.setattr(dispatch, "missing_kernel", lambda device_type, dtype: "no kernel (test)")
    expected = functional.nt_xent_loss(out0, out1, temperature, weight)
    expected_grads = torch.autograd.grad(expected, [out0, out1])
    monkeypatch.setattr(dispatch, "CHUNKED_ABOVE", 0)
    chunked = functional.nt_xent_loss(out0, out1, temperature, weight)
    torch.testing.assert_close(chunked, expected, rtol=1e-12, atol=1e-12)
    for actual, wanted in zip(torch.autograd.grad(chunked, [out0, out1]), expected_grads):
        torch.testing.assert_close(actual, wanted, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(
    "old,name,new",
    [
        ("tase_loss.reference", "contrastive_rows_reference", "tase_loss.ops.reference"),
        ("tase_loss.reference", "contrastive_targets_reference", "tase_loss.ops.reference"),
        ("tase_loss.reference", "contrastive_rows_chunked", "tase_loss.ops.chunked"),
        ("tase_loss.chunked", "ChunkedRows", "tase_loss.ops.chunked"),
        ("tase_loss.chunked", "default_block_rows", "tase_loss.ops.chunked"),
    ],
)
def test_former_module_paths_warn_and_name_the_new_one(old, name, new):
    module = importlib.import_module(old)
    with pytest.warns(DeprecationWarning, match=rf"moved to {new}\.{name}"):
        value = getattr(module, name)
    assert value is getattr(importlib.import_module(new), name)
    with pytest.raises(AttributeError, match="no_such_name"):
        _ = module.no_such_name
