"""The fused op (tase_loss.ops.fused) against the reference path, the loop oracle and gradcheck.

Skipped when the extension is not built, unless TASE_LOSS_REQUIRE_EXT=1 (CI), where a
missing or mismatched build fails at import instead.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tase_loss.ops import _extension

if not _extension.has_ext():
    pytest.skip(f"extension not built: {_extension.load_error()}", allow_module_level=True)

from oracles import row_losses_loop

from tase_loss import ops as dispatch
from tase_loss.ops import contrastive_rows_fused, has_kernel, is_applicable
from tase_loss.ops.reference import contrastive_rows_reference

F64 = torch.float64
assert has_kernel("cpu")  # loads the op and registers its autograd formulas and fakes
OPS = torch.ops.tase_loss
REPO = Path(__file__).resolve().parent.parent


def _case(rows, num_keys, dim, dtype=F64, self_mode="mixed", seed=0):
    """Unit-norm queries/keys, distinct positive and self columns, per-row t and w."""
    generator = torch.Generator().manual_seed(seed)
    queries = torch.nn.functional.normalize(torch.randn(rows, dim, generator=generator, dtype=F64), dim=1)
    keys = torch.nn.functional.normalize(torch.randn(num_keys, dim, generator=generator, dtype=F64), dim=1)
    positive = torch.randint(0, num_keys, (rows,), generator=generator)
    if self_mode == "none":
        self_index = torch.full((rows,), -1)
    else:
        self_index = (positive + 1 + torch.randint(0, num_keys - 1, (rows,), generator=generator)) % num_keys
        if self_mode == "mixed":
            self_index[::3] = -1
    inverse_temperature = 1.0 / (0.05 + torch.rand(rows, generator=generator, dtype=F64))
    weight = torch.rand(rows, generator=generator, dtype=F64) * 2
    return (
        queries.to(dtype),
        keys.to(dtype),
        positive,
        self_index,
        inverse_temperature.to(torch.float32 if dtype != F64 else F64),
        weight.to(torch.float32 if dtype != F64 else F64),
    )


def _with_grad(case, keys_grad=True):
    queries, keys, positive, self_index, inverse_temperature, weight = case
    return (
        queries.clone().requires_grad_(),
        keys.clone().requires_grad_(keys_grad),
        positive,
        self_index,
        inverse_temperature.clone().requires_grad_(),
        weight.clone().requires_grad_(),
    )


def _grads(loss_rows, grad_rows, case):
    inputs = [case[0], case[1], case[4], case[5]]
    inputs = [tensor for tensor in inputs if tensor.requires_grad]
    return torch.autograd.grad(loss_rows, inputs, grad_rows)


SIZES = [(1, 2, 1), (7, 9, 3), (37, 53, 5), (300, 300, 128), (257, 1100, 17), (70, 130, 1024)]


@pytest.mark.parametrize("rows,num_keys,dim", SIZES)
@pytest.mark.parametrize("self_mode", ["none", "distinct", "mixed"])
def test_forward_matches_reference_in_float64_and_float32(rows, num_keys, dim, self_mode):
    if num_keys < 2 and self_mode != "none":
        pytest.skip("a self column needs a second key")
    case = _case(rows, num_keys, dim, self_mode=self_mode)
    loss, lse = OPS.contrastive_forward(*case)
    expected_loss, expected_lse = contrastive_rows_reference(*case, return_lse=True)
    assert loss.dtype == lse.dtype == F64
    torch.testing.assert_close(loss, expected_loss, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(lse, expected_lse, rtol=1e-12, atol=1e-12)
    case32 = tuple(t.float() if t.is_floating_point() else t for t in case)
    loss32, lse32 = OPS.contrastive_forward(*case32)
    assert loss32.dtype == torch.float32
    # float32: similarities carry ~1e-7 * sqrt(D) error, times invt <= 20.
    torch.testing.assert_close(loss32.double(), expected_loss, rtol=1e-5, atol=2e-5)
    torch.testing.assert_close(lse32.double(), expected_lse, rtol=1e-5, atol=2e-5)


def test_forward_matches_the_loop_oracle():
    queries, keys, positive, self_index, inverse_temperature, weight = _case(6, 11, 4, seed=3)
    loop = row_losses_loop(queries, keys, positive.tolist(), self_index.tolist(), 1 / inverse_temperature)
    loss = contrastive_rows_fused(queries, keys, positive, self_index, inverse_temperature, weight)
    torch.testing.assert_close(loss, weight * torch.stack(loop), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("rows,num_keys,dim", SIZES)
@pytest.mark.parametrize("dtype", [F64, torch.float32])
@pytest.mark.parametrize("uniform_grad", [True, False])
def test_gradients_match_reference(rows, num_keys, dim, dtype, uniform_grad):
    case = _with_grad(_case(rows, num_keys, dim, dtype=dtype, seed=1))
    reference_case = _with_grad(tuple(t.detach() for t in case))
    generator = torch.Generator().manual_seed(2)
    grad_rows = (
        torch.full((rows,), 0.7, dtype=dtype)
        if uniform_grad
        else torch.randn(rows, generator=generator, dtype=F64).to(dtype)
    )
    fused = _grads(contrastive_rows_fused(*case, uniform_grad=uniform_grad), grad_rows, case)
    expected = _grads(contrastive_rows_reference(*reference_case), grad_rows, reference_case)
    tolerance = {"rtol": 1e-10, "atol": 1e-10} if dtype == F64 else {"rtol": 1e-4, "atol": 2e-5}
    for actual, wanted in zip(fused, expected):
        assert actual.dtype == wanted.dtype
        torch.testing.assert_close(actual, wanted, **tolerance)


@pytest.mark.parametrize("uniform_grad", [True, False])
def test_keys_without_grad_moco_shape(uniform_grad):
    case = _with_grad(_case(20, 75, 8, self_mode="none", seed=4), keys_grad=False)
    reference_case = _with_grad(tuple(t.detach() for t in case), keys_grad=False)
    grad_rows = torch.full((20,), 0.1, dtype=F64) if uniform_grad else torch.rand(20, dtype=F64)
    for actual, wanted in zip(
        _grads(contrastive_rows_fused(*case, uniform_grad=uniform_grad), grad_rows, case),
        _grads(contrastive_rows_reference(*reference_case), grad_rows, reference_case),
    ):
        torch.testing.assert_close(actual, wanted, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("keys_grad", [True, False])
def test_gradcheck_float64(keys_grad):
    queries, keys, positive, self_index, inverse_temperature, weight = _with_grad(
        _case(9, 13, 4, seed=5), keys_grad=keys_grad
    )

    def rows(q, k, t, w, uniform_grad=False):
        return contrastive_rows_fused(q, k, positive, self_index, t, w, uniform_grad=uniform_grad)

    assert torch.autograd.gradcheck(rows, (queries, keys, inverse_temperature, weight))
    # the promised-uniform path: the rows only enter a sum
    assert torch.autograd.gradcheck(
        lambda q, k, t, w: rows(q, k, t, w, uniform_grad=True).sum(), (queries, keys, inverse_temperature, weight)
    )


def _opcheck_cases():
    plain = _case(10, 14, 6, dtype=torch.float32, seed=6)
    graded = _with_grad(plain)
    return [plain, graded]


@pytest.mark.parametrize("case_index", [0, 1])
def test_opcheck_forward_ops(case_index):
    case = _opcheck_cases()[case_index]
    torch.library.opcheck(OPS.contrastive_forward.default, case)
    torch.library.opcheck(OPS.contrastive_forward_with_grad.default, (*case, True))
    torch.library.opcheck(OPS.contrastive_forward_with_grad.default, (*case, False))


def test_opcheck_backward_op():
    case = _case(10, 14, 6, dtype=torch.float32, seed=7)
    _, lse = OPS.contrastive_forward(*case)
    grad_rows = torch.rand(10)
    torch.library.opcheck(OPS.contrastive_backward.default, (grad_rows, *case, lse, True))
    torch.library.opcheck(OPS.contrastive_backward.default, (grad_rows, *case, lse, False))
    assert OPS.contrastive_backward(grad_rows, *case, lse, False)[1].shape == (0,)


def _half_errors(dtype, seed):
    """Max abs error vs the float32 reference: (fused in dtype, reference in dtype)."""
    case32 = _case(96, 160, 64, dtype=torch.float32, self_mode="mixed", seed=seed)
    case32 = (case32[0], case32[1], case32[2], case32[3], case32[4] * 0 + 10.0, case32[5])
    half = (case32[0].to(dtype), case32[1].to(dtype), *case32[2:])

    def loss_and_grads(function, case):
        case = _with_grad(case)
        loss = function(*case)
        grads = torch.autograd.grad(loss.mean(), (case[0], case[1], case[4]))
        return [loss.float()] + [grad.float() for grad in grads]

    truth = loss_and_grads(lambda *c: contrastive_rows_reference(*c), case32)
    fused = loss_and_grads(contrastive_rows_fused, half)
    reference = loss_and_grads(lambda *c: contrastive_rows_reference(*c), half)
    error = lambda values: [float((v - t).detach().abs().max()) for v, t in zip(values, truth)]
    return error(fused), error(reference)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_inputs_no_worse_than_reference_in_same_dtype(dtype):
    fused_errors, reference_errors = _half_errors(dtype, seed=8)
    for fused_error, reference_error in zip(fused_errors, reference_errors):
        assert fused_error <= reference_error


def test_torch_compile_fullgraph():
    case = _with_grad(_case(12, 20, 8, dtype=torch.float32, seed=9))

    def mean_loss(q, k, t, w):
        return contrastive_rows_fused(q, k, case[2], case[3], t, w).mean()

    compiled = torch.compile(mean_loss, fullgraph=True, backend="aot_eager")
    inputs = (case[0], case[1], case[4], case[5])
    eager_value = mean_loss(*inputs)
    compiled_value = compiled(*inputs)
    torch.testing.assert_close(compiled_value, eager_value)
    for actual, wanted in zip(
        torch.autograd.grad(compiled_value, inputs), torch.autograd.grad(eager_value, inputs)
    ):
        torch.testing.assert_close(actual, wanted)


@pytest.mark.slow
def test_torch_compile_inductor():
    case = _with_grad(_case(12, 20, 8, dtype=torch.float32, seed=10))
    inputs = (case[0], case[1], case[4], case[5])

    def mean_loss(q, k, t, w):
        return contrastive_rows_fused(q, k, case[2], case[3], t, w).mean()

    compiled = torch.compile(mean_loss, fullgraph=True)
    torch.testing.assert_close(compiled(*inputs), mean_loss(*inputs))


def test_bad_index_is_a_clear_error():
    queries, keys, positive, self_index, inverse_temperature, weight = _case(4, 5, 3)
    with pytest.raises(RuntimeError, match="positive_index"):
        OPS.contrastive_forward(queries, keys, positive + 5, self_index, inverse_temperature, weight)
    with pytest.raises(RuntimeError, match=r"same|features"):
        OPS.contrastive_forward(queries, keys[:, :2], positive, self_index, inverse_temperature, weight)


def test_dispatch_uses_the_fused_op(monkeypatch):
    case = _case(8, 8, 4, dtype=torch.float32)
    assert is_applicable(case[0], case[1])

    def fail(*args):
        raise AssertionError("reference path used although the extension is applicable")

    monkeypatch.setattr(dispatch, "contrastive_rows_reference", fail)
    monkeypatch.setattr(dispatch, "FUSED_ABOVE_ON_CPU", 63)
    dispatch.contrastive_rows(*case)  # 8 x 8 = 64 logits > 63


_LOSSES_SCRIPT = r"""
import json, sys, torch
from tase_loss import TASEContrastiveLoss, moco_loss, nt_xent_loss
from tase_loss.ops import _extension
generator = torch.Generator().manual_seed(0)
out0 = torch.randn(10, 6, generator=generator).requires_grad_()
out1 = torch.randn(10, 6, generator=generator).requires_grad_()
queue = torch.randn(23, 6, generator=generator)
temperature = (0.1 + torch.rand(10, generator=generator)).requires_grad_()
weight = torch.rand(10, generator=generator)
values = {
    "nt_xent": nt_xent_loss(out0, out1, temperature, weight),
    "nt_xent_none": nt_xent_loss(out0, out1, 0.2, reduction="none").sum(),
    "moco": moco_loss(out0, out1.detach(), queue, temperature, weight),
    "module": TASEContrastiveLoss(temperature=0.3)(out0, out1),
}
result = {"has_ext": _extension.has_ext()}
for name, value in values.items():
    grads = torch.autograd.grad(value, (out0, out1, temperature), allow_unused=True)
    result[name] = [value.item()] + [[] if g is None else g.flatten().tolist() for g in grads]
json.dump(result, sys.stdout)
"""


def _run_losses(environment):
    env = {key: value for key, value in os.environ.items() if not key.startswith("TASE_LOSS_")}
    env.update(environment)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    completed = subprocess.run(
        [sys.executable, "-c", _LOSSES_SCRIPT], env=env, capture_output=True, text=True, check=True
    )
    return json.loads(completed.stdout)


def test_losses_agree_with_extension_disabled():
    fused = _run_losses({})
    fallback = _run_losses({"TASE_LOSS_DISABLE_EXT": "1"})
    assert fused.pop("has_ext") is True and fallback.pop("has_ext") is False
    for name, values in fused.items():
        for actual, wanted in zip(values, fallback[name]):
            torch.testing.assert_close(torch.tensor(actual), torch.tensor(wanted), rtol=1e-5, atol=1e-6)


def test_require_with_disable_raises_a_clear_error_at_the_first_loss():
    env = {key: value for key, value in os.environ.items() if not key.startswith("TASE_LOSS_")}
    env.update(TASE_LOSS_DISABLE_EXT="1", TASE_LOSS_REQUIRE_EXT="1", PYTHONPATH=str(REPO))
    first_loss = "import torch, tase_loss; tase_loss.nt_xent_loss(torch.randn(4, 3), torch.randn(4, 3))"
    completed = subprocess.run([sys.executable, "-c", first_loss], env=env, capture_output=True, text=True)
    assert completed.returncode != 0
    assert "TASE_LOSS_REQUIRE_EXT=1" in completed.stderr and "TASE_LOSS_DISABLE_EXT" in completed.stderr
    # importing alone loads (and compiles) nothing
    imported = subprocess.run([sys.executable, "-c", "import tase_loss"], env=env, capture_output=True, text=True)
    assert imported.returncode == 0, imported.stderr


_CUDA_READY = torch.cuda.is_available() and torch._C._dispatch_has_kernel_for_dispatch_key(
    "tase_loss::contrastive_forward", "CUDA"
)


@pytest.mark.skipif(not _CUDA_READY, reason="no GPU or the extension was built without CUDA")
@pytest.mark.parametrize("rows,num_keys,dim", [(7, 9, 3), (300, 300, 128), (257, 1100, 17)])
@pytest.mark.parametrize("dtype", [F64, torch.float32])
@pytest.mark.parametrize("uniform_grad", [True, False])
def test_cuda_values_and_gradients_match_reference(rows, num_keys, dim, dtype, uniform_grad):
    case = _case(rows, num_keys, dim, dtype=dtype, seed=11)
    case = _with_grad(tuple(t.cuda() for t in case))
    reference_case = _with_grad(tuple(t.detach() for t in case))
    grad_rows = torch.full((rows,), 0.3, dtype=dtype, device="cuda")
    if not uniform_grad:
        grad_rows = torch.rand(rows, dtype=dtype, device="cuda")
    fused_loss = contrastive_rows_fused(*case, uniform_grad=uniform_grad)
    reference_loss = contrastive_rows_reference(*reference_case)
    tolerance = {"rtol": 1e-10, "atol": 1e-10} if dtype == F64 else {"rtol": 1e-4, "atol": 2e-5}
    torch.testing.assert_close(fused_loss, reference_loss, **tolerance)
    for actual, wanted in zip(
        _grads(fused_loss, grad_rows, case), _grads(reference_loss, grad_rows, reference_case)
    ):
        torch.testing.assert_close(actual, wanted, **tolerance)


@pytest.mark.skipif(not _CUDA_READY, reason="no GPU or the extension was built without CUDA")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_cuda_half_inputs_no_worse_than_reference_in_same_dtype(dtype):
    case32 = _case(96, 160, 64, dtype=torch.float32, seed=12)
    case32 = tuple(t.cuda() for t in case32)
    half = (case32[0].to(dtype), case32[1].to(dtype), *case32[2:])

    def loss_and_grads(function, case):
        case = _with_grad(case)
        loss = function(*case)
        grads = torch.autograd.grad(loss.mean(), (case[0], case[1], case[4]))
        return [loss.detach().float()] + [grad.float() for grad in grads]

    truth = loss_and_grads(lambda *c: contrastive_rows_reference(*c), case32)
    fused = loss_and_grads(contrastive_rows_fused, half)
    reference = loss_and_grads(lambda *c: contrastive_rows_reference(*c), half)
    for fused_value, reference_value, true_value in zip(fused, reference, truth):
        fused_error = float((fused_value - true_value).abs().max())
        reference_error = float((reference_value - true_value).abs().max())
        # The CUDA kernel rounds where the reference does (GEMM outputs and the logit
        # gradient in the input dtype) but scales by grad_loss after the GEMMs, so its
        # gradient does not underflow where the reference's may.
        assert fused_error <= reference_error


def test_build_for_another_torch_is_refused_with_the_reason():
    env = {key: value for key, value in os.environ.items() if not key.startswith("TASE_LOSS_")}
    env.update(PYTHONPATH=str(REPO))
    script = (
        "import torch\n"
        "torch.__version__ = '0.0.1'\n"  # pretend the running torch differs from the build's
        "from tase_loss.ops import _extension\n"
        "print(_extension.has_ext(), _extension.load_error())\n"
    )
    completed = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True
    )
    assert completed.stdout.startswith("False") and "built for torch" in completed.stdout
    env["TASE_LOSS_REQUIRE_EXT"] = "1"
    required = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True)
    assert required.returncode != 0 and "rebuild the extension" in required.stderr


def test_non_contiguous_inputs():
    queries, keys, positive, self_index, inverse_temperature, weight = _case(11, 17, 6, seed=13)
    # Same values as strided and transposed views.
    strided_queries = torch.stack([queries, -queries], dim=2).reshape(11, 12)[:, ::2]
    transposed_keys = keys.T.contiguous().T
    assert not strided_queries.is_contiguous() and not transposed_keys.is_contiguous()
    raw_loss, _ = OPS.contrastive_forward(
        strided_queries, transposed_keys, positive, self_index, inverse_temperature, weight
    )
    torch.testing.assert_close(
        raw_loss, contrastive_rows_reference(queries, keys, positive, self_index, inverse_temperature, weight),
        rtol=1e-12, atol=1e-12,
    )
    # Gradients through the op with non-contiguous leaves (clone keeps the keys' strides).
    case = _with_grad(
        (strided_queries, transposed_keys, positive, self_index, inverse_temperature, weight)
    )
    reference_case = _with_grad((queries, keys, positive, self_index, inverse_temperature, weight))
    grad_rows = torch.rand(11, dtype=F64)
    fused_loss = contrastive_rows_fused(*case)
    reference_loss = contrastive_rows_reference(*reference_case)
    torch.testing.assert_close(fused_loss, reference_loss, rtol=1e-12, atol=1e-12)
    for actual, wanted in zip(
        _grads(fused_loss, grad_rows, case), _grads(reference_loss, grad_rows, reference_case)
    ):
        torch.testing.assert_close(actual, wanted, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("threads", [1, 3])
def test_thread_counts_give_the_same_gradients(threads):
    """Uneven chunks of row blocks and one key-gradient partial per thread."""
    case = _with_grad(_case(700, 300, 8, seed=14))
    reference_case = _with_grad(tuple(t.detach() for t in case))
    grad_rows = torch.rand(700, dtype=F64)
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        fused = _grads(contrastive_rows_fused(*case), grad_rows, case)
    finally:
        torch.set_num_threads(previous)
    expected = _grads(contrastive_rows_reference(*reference_case), grad_rows, reference_case)
    for actual, wanted in zip(fused, expected):
        torch.testing.assert_close(actual, wanted, rtol=1e-10, atol=1e-12)
