"""tase_loss.backend_info: the reported path is the one that runs, its reason, the log, the repr."""

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import tase_loss
from tase_loss import ops
from tase_loss.ops import fused

REPO = Path(__file__).resolve().parent.parent


def _case(rows, num_keys, dim=4, dtype=torch.float64):
    generator = torch.Generator().manual_seed(rows * 1000 + num_keys)
    queries = torch.nn.functional.normalize(torch.randn(rows, dim, generator=generator, dtype=dtype), dim=1)
    keys = torch.nn.functional.normalize(torch.randn(num_keys, dim, generator=generator, dtype=dtype), dim=1)
    positive = torch.randint(0, num_keys, (rows,), generator=generator)
    return queries, keys, positive, torch.full((rows,), -1), torch.full((rows,), 5.0, dtype=dtype), torch.ones(rows)


@pytest.fixture
def spies(monkeypatch):
    """Replace the three implementations by recorders that still return the reference rows."""
    called = []
    reference = ops.contrastive_rows_reference

    def spy(name):
        def run(*arguments, **options):
            called.append(name)
            return reference(*arguments[:6])

        return run

    for name in ops.PATHS:
        monkeypatch.setattr(ops, f"contrastive_rows_{name}", spy(name))
    return called


@pytest.mark.parametrize("missing", [None, "no kernel (test)"])
@pytest.mark.parametrize("device_type", ["cpu", "cuda"])
@pytest.mark.parametrize("rows,num_keys", [(8, 8), (8, 9), (20, 20)])
def test_the_reported_path_is_the_one_that_runs(spies, monkeypatch, missing, device_type, rows, num_keys):
    monkeypatch.setattr(ops, "missing_kernel", lambda device, dtype: missing)
    monkeypatch.setattr(ops, "FUSED_ABOVE_ON_CPU", 64)  # 8 x 8 is not above it, 8 x 9 is
    monkeypatch.setattr(ops, "CHUNKED_ABOVE", 100)  # 20 x 20 is above it
    case = _case(rows, num_keys)
    if device_type == "cuda":  # the decision reads the device type only: a CPU tensor posing as CUDA
        monkeypatch.setattr(ops, "_choose", _on_device(ops._choose, "cuda"))
    ops.contrastive_rows(*case)
    reported = ops.backend_info(rows, num_keys, device_type, torch.float64)
    assert spies == [reported.path]
    assert ops.last_backend() == reported
    expected = (
        "fused"
        if missing is None and (device_type != "cpu" or rows * num_keys > 64)
        else ("chunked" if rows * num_keys > 100 else "reference")
    )
    assert reported.path == expected


def _on_device(choose, device_type):
    return lambda num_rows, num_keys, _, dtype: choose(num_rows, num_keys, device_type, dtype)


def test_the_real_dispatch_runs_what_backend_info_reports(spies):
    """No patched rule: whatever this machine has (extension built or not)."""
    for rows in (8, 600, 2100):
        del spies[:]
        ops.contrastive_rows(*_case(rows, rows, dtype=torch.float32))
        assert spies == [tase_loss.backend_info(rows, rows, "cpu", torch.float32).path]


def test_the_losses_report_the_shapes_they_dispatch(spies):
    out0, out1 = torch.randn(5, 4), torch.randn(5, 4)
    tase_loss.nt_xent_loss(out0, out1)
    assert ops.last_backend() == tase_loss.backend_info(10, 10)
    tase_loss.moco_loss(out0, out1, torch.randn(7, 4))
    assert ops.last_backend() == tase_loss.backend_info(5, 12)


def test_the_reason_names_the_load_error_when_the_extension_is_missing(monkeypatch):
    monkeypatch.setattr(fused, "has_kernel", lambda device_type: False)
    monkeypatch.setattr(fused._extension, "has_ext", lambda: False)
    monkeypatch.setattr(fused._extension, "load_error", lambda: "tase_loss._C is not importable (test)")
    backend = tase_loss.backend_info(64, 64)
    assert backend.path == "reference"
    assert "extension not used: tase_loss._C is not importable (test)" in backend.reason
    assert "64 x 64 = 4,096 logits <= CHUNKED_ABOVE = 2^22" in backend.reason
    assert tase_loss.backend_info(4096, 4096).path == "chunked"


def test_disabled_extension_is_named_in_a_fresh_process():
    env = {key: value for key, value in os.environ.items() if not key.startswith("TASE_LOSS_")}
    env.update(TASE_LOSS_DISABLE_EXT="1", PYTHONPATH=str(REPO))
    script = "import tase_loss; print(tase_loss.backend_info(4096, 4096, 'cpu'))"
    completed = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True)
    assert completed.stdout.startswith("chunked on cpu (extension not used: disabled by TASE_LOSS_DISABLE_EXT=1;")


def test_a_loaded_op_below_the_cpu_threshold_says_so(monkeypatch):
    monkeypatch.setattr(ops, "missing_kernel", lambda device, dtype: None)
    backend = tase_loss.backend_info(512, 512)  # 2^18 logits: not above FUSED_ABOVE_ON_CPU
    assert backend.path == "reference"
    assert "at or below FUSED_ABOVE_ON_CPU = 2^18" in backend.reason
    assert tase_loss.backend_info(512, 513).path == "fused"
    assert tase_loss.backend_info(2, 2, "cuda").path == "fused"


def test_the_first_call_of_each_path_is_logged_once_at_info(spies, monkeypatch, caplog):
    monkeypatch.setattr(ops, "_logged", set())
    monkeypatch.setattr(ops, "missing_kernel", lambda device, dtype: "no kernel (test)")
    monkeypatch.setattr(ops, "CHUNKED_ABOVE", 100)
    with caplog.at_level(logging.INFO, logger="tase_loss"):
        for _ in range(3):
            ops.contrastive_rows(*_case(8, 8))
        first = [record for record in caplog.records if record.name == "tase_loss"]
        assert len(first) == 1 and first[0].levelno == logging.INFO
        assert str(tase_loss.backend_info(8, 8, "cpu", torch.float64)) in first[0].getMessage()
        ops.contrastive_rows(*_case(20, 20))  # another path: one more line
        ops.contrastive_rows(*_case(9, 9))  # the first path again, another shape: none
    records = [record for record in caplog.records if record.name == "tase_loss"]
    assert [record.getMessage().split(" run ")[1].split(" ")[0] for record in records] == ["reference", "chunked"]


def test_the_loss_repr_names_its_latest_backend():
    criterion = tase_loss.TASEContrastiveLoss()
    assert "backend=unknown until the first call" in repr(criterion)
    criterion(torch.randn(6, 4), torch.randn(6, 4))
    assert f"backend={tase_loss.backend_info(12, 12)})" in repr(criterion)
    moco = tase_loss.TASEContrastiveLoss(queue_size=16, feature_dim=4)
    moco(torch.randn(6, 4), torch.randn(6, 4))  # the queue was empty: 6 keys
    assert f"backend={tase_loss.backend_info(6, 6)}\n" in repr(moco)


@pytest.mark.parametrize(
    "arguments,error,name",
    [
        ((0, 4), ValueError, "num_rows"),
        ((4, 2.0), TypeError, "num_keys"),
        ((4, 4, "no-such-device"), ValueError, "device"),
        ((4, 4, "cpu", torch.int64), TypeError, "dtype"),
        ((4, 4, "cpu", "float32"), TypeError, "dtype"),
    ],
)
def test_bad_arguments_name_the_argument(arguments, error, name):
    with pytest.raises(error, match=name):
        tase_loss.backend_info(*arguments)
