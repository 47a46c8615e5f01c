"""Bad input raises a ValueError/TypeError that names the argument; nothing is mutated."""

import pytest
import torch

from tase_loss import (
    NotFittedError,
    PseudoLabeler,
    SampleReweighter,
    TASEContrastiveLoss,
    TASECosineLoss,
    TemperatureMap,
    moco_loss,
    nt_xent_loss,
)


def _pair(batch_size=4, dim=3):
    return torch.randn(batch_size, dim), torch.randn(batch_size, dim)


@pytest.mark.parametrize(
    "make,error,pattern",
    [
        (lambda a, b: (a.clone().index_fill_(0, torch.tensor([1]), float("nan")), b), ValueError, "out0 contains NaN"),
        (lambda a, b: (a, b.clone().index_fill_(0, torch.tensor([0]), float("inf"))), ValueError, "out1 contains NaN or Inf"),
        (lambda a, b: (a, b[:3]), ValueError, "out1 has shape"),
        (lambda a, b: (a, b.double()), TypeError, "out1 has dtype"),
        (lambda a, b: (a[0], b[0]), ValueError, r"out0 must have shape \(B, D\)"),
        (lambda a, b: (a.long(), b), TypeError, "out0 must be a floating tensor"),
        (lambda a, b: (a.numpy(), b), TypeError, "out0 must be a torch.Tensor"),
        (lambda a, b: (a[:1], b[:1]), ValueError, "at least 2"),
    ],
)
def test_bad_embeddings(make, error, pattern):
    out0, out1 = make(*_pair())
    with pytest.raises(error, match=pattern):
        nt_xent_loss(out0, out1)


@pytest.mark.parametrize(
    "temperature,error,pattern",
    [
        (0.0, ValueError, "temperature must be a finite value > 0"),
        (-0.1, ValueError, "temperature must be a finite value > 0"),
        (float("inf"), ValueError, "temperature must be a finite value > 0"),
        ("0.2", TypeError, "temperature must be a float"),
        (torch.tensor([0.2, 0.0, 0.2, 0.2]), ValueError, "temperature must be > 0"),
        (torch.tensor([0.2, 0.2]), ValueError, r"temperature must have shape \(4,\)"),
        (torch.tensor([0.2, float("nan"), 0.2, 0.2]), ValueError, "temperature contains NaN"),
        (torch.tensor([1, 1, 1, 1]), TypeError, "temperature must be a floating tensor"),
    ],
)
def test_bad_temperature(temperature, error, pattern):
    with pytest.raises(error, match=pattern):
        nt_xent_loss(*_pair(), temperature=temperature)


@pytest.mark.parametrize(
    "weight,pattern",
    [
        (torch.tensor([1.0, -0.5, 1.0, 1.0]), "weight must be >= 0"),
        (torch.zeros(4), "weight sums to 0"),
        (torch.ones(3), r"weight must have shape \(4,\)"),
    ],
)
def test_bad_weight(weight, pattern):
    with pytest.raises(ValueError, match=pattern):
        nt_xent_loss(*_pair(), weight=weight)


def test_bad_reduction_and_queue():
    with pytest.raises(ValueError, match="reduction must be one of"):
        nt_xent_loss(*_pair(), reduction="average")
    queries, keys = _pair(1)
    with pytest.raises(ValueError, match="at least one negative"):
        moco_loss(queries, keys)
    with pytest.raises(ValueError, match="queue has feature size"):
        moco_loss(*_pair(), queue=torch.randn(5, 2))


def test_module_errors_leave_the_queue_untouched():
    criterion = TASEContrastiveLoss(queue_size=8, embedding_dim=3)
    criterion(*_pair())
    before = {name: value.clone() for name, value in criterion.state_dict().items()}
    out0, out1 = _pair()
    with pytest.raises(ValueError, match="weight must be >= 0"):
        criterion(out0, out1, weight=torch.tensor([1.0, -1.0, 1.0, 1.0]))
    with pytest.raises(ValueError, match="does not fit in a queue of 8"):
        criterion(*_pair(9))
    with pytest.raises(ValueError, match="out1 has feature size 2"):
        criterion(torch.randn(4, 2), torch.randn(4, 2))
    for name, value in criterion.state_dict().items():
        assert torch.equal(value, before[name]), name


def test_module_constructor_errors():
    with pytest.raises(ValueError, match="temperature must be a finite value > 0"):
        TASEContrastiveLoss(temperature=0.0)
    with pytest.raises(ValueError, match="embedding_dim must be a positive integer"):
        TASEContrastiveLoss(queue_size=16)
    with pytest.raises(ValueError, match="queue_size must be an integer >= 0"):
        TASEContrastiveLoss(queue_size=-1)
    with pytest.raises(ValueError, match="variant must be one of"):
        TASECosineLoss("simclr")


def test_index_errors():
    labeler = PseudoLabeler(num_samples=10, feature_dim=3, num_clusters=2, warmup_epochs=0)
    criterion = TASEContrastiveLoss(pseudo_labeler=labeler)
    with pytest.raises(ValueError, match="index= needs a pseudo_labeler"):
        TASEContrastiveLoss()(*_pair(), index=torch.arange(4))
    with pytest.raises(ValueError, match="either index= or temperature="):
        criterion(*_pair(), index=torch.arange(4), weight=torch.ones(4))
    labeler.update(torch.arange(10), torch.randn(10, 3))
    labeler.recluster()
    with pytest.raises(ValueError, match=r"index must lie in \[0, 10\)"):
        criterion(*_pair(), index=torch.tensor([0, 1, 2, 10]))
    with pytest.raises(TypeError, match="index must be an int64 or int32 tensor"):
        criterion(*_pair(), index=torch.zeros(4))


def test_labeler_errors_and_no_mutation():
    with pytest.raises(ValueError, match="num_clusters=20 is larger than num_samples=10"):
        PseudoLabeler(num_samples=10, feature_dim=3, num_clusters=20)
    with pytest.raises(ValueError, match="momentum must lie in"):
        PseudoLabeler(num_samples=10, feature_dim=3, num_clusters=2, momentum=1.0)
    labeler = PseudoLabeler(num_samples=10, feature_dim=3, num_clusters=4)
    with pytest.raises(NotFittedError, match="the bank is empty"):
        labeler.recluster()
    with pytest.raises(NotFittedError, match="has not clustered yet"):
        labeler.frequency(torch.arange(2))
    labeler.update(torch.arange(3), torch.randn(3, 3))
    with pytest.raises(ValueError, match="num_clusters=4 is larger than the 3 samples seen"):
        labeler.recluster()
    bank = labeler.bank.clone()
    with pytest.raises(ValueError, match="features contains NaN"):
        labeler.update(torch.arange(2), torch.tensor([[1.0, 0, 0], [float("nan"), 0, 0]]))
    with pytest.raises(ValueError, match="features must have 3 columns"):
        labeler.update(torch.arange(2), torch.randn(2, 4))
    with pytest.raises(ValueError, match=r"index must lie in \[0, 10\)"):
        labeler.update(torch.tensor([0, 11]), torch.randn(2, 3))
    assert torch.equal(labeler.bank, bank) and int(labeler.seen.sum()) == 3
    with pytest.raises(ValueError, match="state_dict is missing"):
        labeler.load_state_dict({"bank": bank})


def test_map_errors():
    with pytest.raises(ValueError, match="alpha must be a finite value >= 0"):
        SampleReweighter(alpha=-1)
    with pytest.raises(ValueError, match="max_weight must be >= 1"):
        SampleReweighter(max_weight=0.5)
    with pytest.raises(ValueError, match="must not exceed"):
        TemperatureMap(min_temperature=0.5, max_temperature=0.1)
    with pytest.raises(ValueError, match="mapping must be one of"):
        TemperatureMap(mapping="linear")
    with pytest.raises(ValueError, match=r"frequency must lie in \(0, 1\]"):
        SampleReweighter()(torch.tensor([0.0, 0.5]))


def test_huge_finite_embeddings_are_accepted_and_inf_per_sample_values_rejected():
    out0, out1 = _pair()
    out0[0, 0] = 3e38  # finite: the max-|x| check must not overflow into a false alarm
    assert torch.isfinite(nt_xent_loss(out0, out1))
    with pytest.raises(ValueError, match="temperature contains NaN or Inf"):
        nt_xent_loss(*_pair(), temperature=torch.tensor([0.2, float("inf"), 0.2, 0.2]))
    with pytest.raises(ValueError, match="weight contains NaN or Inf"):
        nt_xent_loss(*_pair(), weight=torch.tensor([1.0, 1.0, float("nan"), 1.0]))
    with pytest.raises(ValueError, match="out0 contains NaN or Inf"):
        nt_xent_loss(torch.full((4, 3), float("-inf")), torch.randn(4, 3))
