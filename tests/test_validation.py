"""Bad input raises a ValueError/TypeError that names the argument; nothing is mutated."""

import numpy as np
import pytest
import torch

from tase_loss import (
    ClusterSizeEstimator,
    FeatureBank,
    FrequencyReference,
    NotFittedError,
    PseudoLabeler,
    SampleReweighter,
    TASEContrastiveLoss,
    TASECosineLoss,
    TemperatureMap,
    byol_loss,
    moco_loss,
    nt_xent_loss,
    simsiam_loss,
)
from tase_loss.ood import TailBiasedOODSampler, pseudo_semantic_loss


def _pair(batch_size=4, dim=3):
    return torch.randn(batch_size, dim), torch.randn(batch_size, dim)


@pytest.mark.parametrize(
    "make,error,pattern",
    [
        (lambda a, b: (a.clone().index_fill_(0, torch.tensor([1]), float("nan")), b), ValueError, "out0 contains NaN"),
        (
            lambda a, b: (a, b.clone().index_fill_(0, torch.tensor([0]), float("inf"))),
            ValueError,
            "out1 contains NaN or Inf",
        ),
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
        (0.0, ValueError, "temperature must be a finite number >= 0.0001 and <= 10000, got 0.0"),
        (-0.1, ValueError, "temperature must be a finite number >= 0.0001"),
        (float("inf"), ValueError, "temperature must be a finite number"),
        (1e-39, ValueError, "temperature must be a finite number >= 0.0001"),
        ("0.2", TypeError, "temperature must be a finite number"),
        (
            torch.tensor([0.2, 0.0, 0.2, 0.2]),
            ValueError,
            r"temperature must be >= 0.0001 and <= 10000, got values in \[0, 0.2\]",
        ),
        (torch.tensor([0.2, 1e-39, 0.2, 0.2]), ValueError, "temperature must be >= 0.0001"),
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
        (torch.tensor([1.0, -0.5, 1.0, 1.0]), "weight must be >= 0 and <= 1e[+]12"),
        (torch.tensor([1.0, 1e38, 1.0, 1.0]), "weight must be >= 0 and <= 1e[+]12"),
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
    criterion = TASEContrastiveLoss(queue_size=8, feature_dim=3)
    criterion(*_pair())
    before = {name: value.clone() for name, value in criterion.state_dict().items()}
    out0, out1 = _pair()
    with pytest.raises(ValueError, match="weight must be >= 0"):
        criterion(out0, out1, weight=torch.tensor([1.0, -1.0, 1.0, 1.0]))
    assert criterion.queue._host_length == 4
    with pytest.raises(ValueError, match="does not fit in a queue of 8"):
        criterion(*_pair(9))
    with pytest.raises(ValueError, match="out1 has feature size 2"):
        criterion(torch.randn(4, 2), torch.randn(4, 2))
    for name, value in criterion.state_dict().items():
        assert torch.equal(value, before[name]), name


def test_module_constructor_errors():
    with pytest.raises(ValueError, match=r"temperature must be a finite number >= 0\.0001"):
        TASEContrastiveLoss(temperature=0.0)
    with pytest.raises(TypeError, match="temperature must be a float here, got a tensor"):
        TASEContrastiveLoss(temperature=torch.tensor(0.2))
    with pytest.raises(TypeError, match="feature_dim must be an integer >= 1, got None"):
        TASEContrastiveLoss(queue_size=16)
    with pytest.raises(ValueError, match="queue_size must be an integer >= 0"):
        TASEContrastiveLoss(queue_size=-1)
    with pytest.raises(ValueError, match="variant must be one of"):
        TASECosineLoss("simclr")
    with pytest.raises(ValueError, match="temperature_map and reweighter need a pseudo_labeler"):
        TASEContrastiveLoss(reweighter=SampleReweighter())


def _fitted_labeler(num_samples=10, dim=3):
    labeler = PseudoLabeler(
        num_samples=num_samples, feature_dim=dim, estimator=ClusterSizeEstimator(2), warmup_epochs=1
    )
    labeler.update(torch.arange(num_samples), torch.randn(num_samples, dim))
    labeler.estimate()
    return labeler


def test_index_errors_name_index():
    labeler = PseudoLabeler(num_samples=10, feature_dim=3, estimator=ClusterSizeEstimator(2), warmup_epochs=1)
    criterion = TASEContrastiveLoss(pseudo_labeler=labeler)
    with pytest.raises(ValueError, match="index= needs a pseudo_labeler"):
        TASEContrastiveLoss()(*_pair(), index=torch.arange(4))
    with pytest.raises(ValueError, match=r"^end_epoch\(\) needs a pseudo_labeler"):
        TASEContrastiveLoss().end_epoch(0)
    with pytest.raises(ValueError, match=r"^per_sample\(\) needs a pseudo_labeler"):
        TASECosineLoss().per_sample(torch.arange(4))
    with pytest.raises(ValueError, match="either index= or temperature="):
        criterion(*_pair(), index=torch.arange(4), weight=torch.ones(4))
    labeler.update(torch.arange(10), torch.randn(10, 3))
    labeler.estimate()
    with pytest.raises(ValueError, match=r"index must lie in \[0, 10\)"):
        criterion(*_pair(), index=torch.tensor([0, 1, 2, 10]))
    with pytest.raises(TypeError, match="index must be an int64 or int32 tensor"):
        criterion(*_pair(), index=torch.zeros(4))
    with pytest.raises(ValueError, match=r"^index has 3 rows but out0 has 4: index needs one row per row of out0$"):
        criterion(*_pair(), index=torch.arange(3))


def _labeled_criterion(loss_class):
    return loss_class(pseudo_labeler=PseudoLabeler(num_samples=20, feature_dim=5, warmup_epochs=1))


def _ood_sampler(id_labels):
    return TailBiasedOODSampler(torch.randn(4, 3), id_labels, torch.randn(2, 3), num_samples=2)


# Each call gets two tensors whose lengths disagree; the message must start with the one
# that is wrong (the other argument fixes the batch) and name the reference it is held to.
@pytest.mark.parametrize(
    "call,pattern",
    [
        (
            lambda: _labeled_criterion(TASEContrastiveLoss)(
                *_pair(16), index=torch.arange(16), features=torch.randn(10, 5)
            ),
            "^features has 10 rows but out0 has 16: features needs one row per row of out0$",
        ),
        (
            lambda: _labeled_criterion(TASECosineLoss)(
                *_pair(16), index=torch.arange(16), features=torch.randn(10, 5)
            ),
            "^features has 10 rows but prediction has 16: features needs one row per row of prediction$",
        ),
        (
            lambda: _labeled_criterion(TASECosineLoss)(*_pair(16), index=torch.arange(10)),
            "^index has 10 rows but prediction has 16",
        ),
        (
            lambda: FeatureBank(20, 5).update(torch.arange(16), torch.randn(10, 5)),
            "^index has 16 entries but features has 10 rows: index needs one entry per row of features$",
        ),
        (
            lambda: PseudoLabeler(20, 5).update(torch.arange(16), torch.randn(10, 5)),
            "^index has 16 entries but features has 10 rows",
        ),
        (lambda: nt_xent_loss(torch.randn(16, 3), torch.randn(10, 3)), r"^out1 has shape \(10, 3\) but out0 has"),
        (lambda: byol_loss(torch.randn(16, 3), torch.randn(10, 3)), r"^target has shape \(10, 3\) but prediction"),
        (lambda: moco_loss(torch.randn(16, 3), torch.randn(10, 3)), r"^keys has shape \(10, 3\) but queries"),
        (lambda: nt_xent_loss(*_pair(16), temperature=torch.full((10,), 0.2)), r"^temperature must have shape \(16,\)"),
        (lambda: nt_xent_loss(*_pair(16), weight=torch.ones(10)), r"^weight must have shape \(16,\)"),
        (
            lambda: pseudo_semantic_loss(*_pair(16), torch.zeros(10, dtype=torch.int64)),
            "^labels has 10 entries but out0 has 16 rows",
        ),
        (
            lambda: _ood_sampler(torch.zeros(3, dtype=torch.int64)),
            "^id_labels has 3 entries but id_features has 4 rows",
        ),
    ],
)
def test_length_mismatch_names_the_wrong_argument(call, pattern):
    with pytest.raises(ValueError, match=pattern):
        call()


def test_a_failed_feed_stores_nothing():
    criterion = _labeled_criterion(TASEContrastiveLoss)
    with pytest.raises(ValueError, match=r"^features has 10 rows"):
        criterion(*_pair(16), index=torch.arange(16), features=torch.randn(10, 5))
    assert criterion.pseudo_labeler.bank.num_seen == 0


@pytest.mark.parametrize(
    "features,error,pattern",
    [
        (torch.randn(4, 5), ValueError, "features must have 8 columns"),
        (torch.full((4, 8), float("nan")), ValueError, "features contains NaN"),
        (torch.ones(4, 8, dtype=torch.int64), TypeError, "features must be a floating tensor"),
    ],
)
def test_a_failed_moco_call_enqueues_nothing(features, error, pattern):
    # the labeler's checks come after the loss: its keys must not reach the queue first
    criterion = TASEContrastiveLoss(queue_size=32, feature_dim=16, pseudo_labeler=PseudoLabeler(64, 8))
    criterion(*_pair(4, 16), index=torch.arange(4), features=torch.randn(4, 8))
    before = {key: value.clone() for key, value in criterion.state_dict().items()}
    with pytest.raises(error, match=pattern):
        criterion(*_pair(4, 16), index=torch.arange(4, 8), features=features)
    for key, value in criterion.state_dict().items():
        assert torch.equal(value, before[key]), key


def test_a_moco_batch_too_large_for_the_queue_stores_nothing():
    criterion = TASEContrastiveLoss(queue_size=4, feature_dim=3, pseudo_labeler=PseudoLabeler(64, 3))
    with pytest.raises(ValueError, match="a batch of 8 keys does not fit in a queue of 4"):
        criterion(*_pair(8), index=torch.arange(8))
    assert criterion.pseudo_labeler.bank.num_seen == 0 and int(criterion.queue.length) == 0


def test_a_loss_reading_labeler_refuses_bad_losses_and_stores_nothing():
    labeler = PseudoLabeler(64, 8, estimator="momentum-loss")
    index, features = torch.arange(4), torch.randn(4, 8)
    with pytest.raises(ValueError, match="loss contains NaN or Inf"):
        labeler.update(index, features, loss=torch.tensor([1.0, float("nan"), 1.0, 1.0]))
    with pytest.raises(ValueError, match=r"needs loss=, a floating \(4,\) tensor"):
        labeler.update(index, features, loss=torch.ones(4, dtype=torch.bool))
    with pytest.raises(TypeError, match="features must be a torch\\.Tensor, got list"):
        labeler.update(index, features.tolist(), loss=torch.ones(4))
    assert labeler.bank.num_seen == 0 and not bool(labeler.sample_loss.any())


def test_feature_dim_is_checked_without_a_queue_and_a_reference_must_be_finite():
    with pytest.raises(ValueError, match="feature_dim must be an integer >= 1"):
        TASEContrastiveLoss(feature_dim=-5)
    with pytest.raises(ValueError, match="log_mean must be a finite number, got nan"):
        FrequencyReference(log_mean=float("nan"), log_min=-2.0, log_max=0.0)
    with pytest.raises(TypeError, match="log_min must be a finite number, got '1'"):
        FrequencyReference(log_mean=-1.0, log_min="1", log_max=0.0)
    reference = FrequencyReference(torch.tensor(-1.0), np.float32(-2.0), 0)
    assert (reference.log_mean, reference.log_min, reference.log_max) == (-1.0, -2.0, 0)


def test_gather_distributed_must_be_a_bool():
    for make in (
        lambda: PseudoLabeler(64, 8, gather_distributed="no"),
        lambda: TASEContrastiveLoss(gather_distributed="no"),
        lambda: TASECosineLoss(gather_distributed=1),
        lambda: FeatureBank(8, 3, gather_distributed="no"),
    ):
        with pytest.raises(TypeError, match="gather_distributed must be a bool"):
            make()


def _moco_state(queue_size=16, feature_dim=4, num_samples=60, dim=8):
    labeler = PseudoLabeler(num_samples, dim, estimator=ClusterSizeEstimator(3), warmup_epochs=1)
    criterion = TASEContrastiveLoss(queue_size=queue_size, feature_dim=feature_dim, pseudo_labeler=labeler)
    criterion(*_pair(8, feature_dim), index=torch.arange(8), features=torch.randn(8, dim))
    labeler.update(torch.arange(num_samples), torch.randn(num_samples, dim))
    criterion.end_epoch(0)
    return criterion


@pytest.mark.parametrize(
    "change,pattern",
    [
        (lambda state: state["pseudo_labeler.log_frequency"].fill_(1.0), r"pseudo_labeler.*must be <= 0"),
        (lambda state: state["pseudo_labeler.labels"].fill_(10**9), r"labels'\] must lie in"),
        (lambda state: state.update({"queue.keys": torch.zeros(16, 5)}), r"size mismatch for queue.keys"),
        (
            lambda state: state.update({"queue.pointer": torch.tensor(-7), "queue.length": torch.tensor(1000)}),
            r"queue: pointer -7 and length 1000 do not describe a ring of 16",
        ),
        (lambda state: state.update({"queue.pointer": torch.tensor(3)}), r"queue: pointer 3 and length 8"),
        (lambda state: state["queue.keys"].fill_(float("nan")), r"queue: keys \(its first 8 rows\) contains NaN"),
        (lambda state: state.pop("queue.length"), r'Missing key\(s\) in state_dict: "queue.length"'),
        (lambda state: state.update(extra=torch.zeros(1)), r'Unexpected key\(s\) in state_dict: "extra"'),
    ],
)
def test_criterion_load_state_dict_changes_nothing_unless_all_of_it_loads(change, pattern):
    # a wrong labeler part must not leave the queue loaded, nor a wrong queue the labeler,
    # nor a key mismatch (reported by PyTorch after loading) either of them
    state = _moco_state().state_dict()
    change(state)
    target = TASEContrastiveLoss(queue_size=16, feature_dim=4, pseudo_labeler=PseudoLabeler(60, 8, warmup_epochs=1))
    before = {key: value.clone() for key, value in target.state_dict().items()}
    with pytest.raises(RuntimeError, match=pattern):
        target.load_state_dict(state)
    for key, value in target.state_dict().items():
        assert torch.equal(value, before[key]), key
    assert not target.pseudo_labeler.is_fitted


def test_a_queue_inside_a_larger_module_loads_whole_or_not_at_all():
    state = torch.nn.ModuleDict({"criterion": _moco_state()}).state_dict()
    state["criterion.queue.pointer"] = torch.tensor(5)
    target = torch.nn.ModuleDict(
        {"criterion": TASEContrastiveLoss(queue_size=16, feature_dim=4, pseudo_labeler=PseudoLabeler(60, 8))}
    )
    with pytest.raises(RuntimeError, match=r"criterion\.queue: pointer 5 and length 8"):
        target.load_state_dict(state)
    queue = target["criterion"].queue
    assert int(queue.length) == 0 and int(queue.pointer) == 0 and not bool(queue.keys.any())


def test_a_failed_load_with_assign_leaves_the_callers_tensors_and_the_loss_as_they_were():
    state = _moco_state().state_dict()
    state["pseudo_labeler.labels"].fill_(10**9)
    state["queue.keys"] = state["queue.keys"].double()
    sent = {key: value.clone() for key, value in state.items()}
    target = TASEContrastiveLoss(queue_size=16, feature_dim=4, pseudo_labeler=PseudoLabeler(60, 8))
    keys = target.queue.keys
    with pytest.raises(RuntimeError, match=r"labels'\] must lie in"):
        target.load_state_dict(state, assign=True)
    assert target.queue.keys is keys and keys.dtype == torch.float32 and not bool(keys.any())
    for key, value in state.items():
        assert torch.equal(value, sent[key]), key


@pytest.mark.parametrize(
    "change,pattern",
    [
        (lambda state: state.update({"0.queue.pointer": torch.tensor(8.0)}), "pointer and length int64 scalars"),
        (lambda state: state.update({"0.queue.keys": state["0.queue.keys"].long()}), "keys must be floating"),
        (lambda state: state.pop("0.queue.pointer"), r"load together, got only \['keys', 'length'\]"),
    ],
)
def test_a_queue_inside_a_larger_module_refuses_wrong_types_and_parts(change, pattern):
    state = torch.nn.Sequential(_moco_state()).state_dict()
    change(state)
    target = torch.nn.Sequential(TASEContrastiveLoss(queue_size=16, feature_dim=4, pseudo_labeler=PseudoLabeler(60, 8)))
    with pytest.raises(RuntimeError, match=pattern):
        target.load_state_dict(state, strict=False)
    queue = target[0].queue
    assert queue.keys.dtype == torch.float32 and int(queue.length) == 0 and not bool(queue.keys.any())


def test_a_bad_estimate_count_names_its_key():
    state = _moco_state().state_dict()
    state["pseudo_labeler.num_estimates"] = torch.tensor(float("nan"))
    target = TASEContrastiveLoss(queue_size=16, feature_dim=4, pseudo_labeler=PseudoLabeler(60, 8))
    with pytest.raises(RuntimeError, match="num_estimates must be one integer"):
        target.load_state_dict(state)
    assert int(target.queue.length) == 0 and not target.pseudo_labeler.is_fitted


def test_a_queue_is_checked_after_its_load_pre_hooks():
    # a pre-hook that migrates an old key name must run before the entries are judged
    criterion = _moco_state()
    state = criterion.state_dict()
    state["queue.ptr"] = state.pop("queue.pointer")
    target = TASEContrastiveLoss(queue_size=16, feature_dim=4, pseudo_labeler=PseudoLabeler(60, 8))

    def rename(module, state_dict, prefix, *arguments):
        if prefix + "ptr" in state_dict:
            state_dict[prefix + "pointer"] = state_dict.pop(prefix + "ptr")

    target.queue.register_load_state_dict_pre_hook(rename)
    target.load_state_dict(state)
    assert int(target.queue.pointer) == int(criterion.queue.pointer) == 8
def test_labeler_errors_and_no_mutation():
    with pytest.raises(ValueError, match="momentum must be a finite number >= 0 and < 1"):
        PseudoLabeler(num_samples=10, feature_dim=3, momentum=1.0)
    with pytest.raises(ValueError, match="estimator must be one of"):
        PseudoLabeler(num_samples=10, feature_dim=3, estimator="k-means")
    labeler = PseudoLabeler(num_samples=10, feature_dim=3, estimator=ClusterSizeEstimator(4))
    with pytest.raises(NotFittedError, match="the bank is empty"):
        labeler.estimate()
    with pytest.raises(NotFittedError, match="has no estimate yet"):
        labeler.frequency(torch.arange(2))
    labeler.update(torch.arange(3), torch.randn(3, 3))
    with pytest.raises(ValueError, match="needs at least 4 samples, the bank holds 3"):
        labeler.estimate()
    bank = labeler.bank.features.clone()
    with pytest.raises(ValueError, match="features contains NaN"):
        labeler.update(torch.arange(2), torch.tensor([[1.0, 0, 0], [float("nan"), 0, 0]]))
    with pytest.raises(ValueError, match="features must have 3 columns"):
        labeler.update(torch.arange(2), torch.randn(2, 4))
    with pytest.raises(ValueError, match=r"index must lie in \[0, 10\)"):
        labeler.update(torch.tensor([0, 11]), torch.randn(2, 3))
    assert torch.equal(labeler.bank.features, bank) and labeler.bank.num_seen == 3


@pytest.mark.parametrize(
    "change,error,pattern",
    [
        (lambda state: state.pop("labels"), ValueError, r"state_dict is missing \['labels'\]"),
        (
            lambda state: state.update(num_estimates=None),
            TypeError,
            r"state_dict\['num_estimates'\] must be an integer",
        ),
        (
            lambda state: state.update({"bank.seen": state["bank.seen"].numpy()}),
            TypeError,
            r"state_dict\['bank.seen'\] must be a torch.Tensor",
        ),
        (
            lambda state: state.update({"bank.features": state["bank.features"].tolist()}),
            TypeError,
            r"state_dict\['bank.features'\] must be a torch.Tensor",
        ),
        (lambda state: state.update(has_estimate=torch.zeros(10, dtype=torch.bool)), ValueError, "disagrees"),
        (
            lambda state: state["log_frequency"].__setitem__(3, float("nan")),
            ValueError,
            r"state_dict\['log_frequency'\] contains NaN",
        ),
        (lambda state: state["log_frequency"].__setitem__(3, 0.5), ValueError, "must be <= 0"),
        (lambda state: state.update(labels=state["labels"].float()), TypeError, r"state_dict\['labels'\] has dtype"),
        (lambda state: state.update(labels=state["labels"][:5]), ValueError, r"state_dict\['labels'\] has shape"),
        (lambda state: "not a dict", TypeError, "state_dict must be a dict"),
        # consistency beyond shapes: group ids, and the rows the estimators will read
        (lambda state: state["labels"].fill_(10**9), ValueError, r"state_dict\['labels'\] must lie in \[-1, 10\)"),
        (lambda state: state["labels"].fill_(-5), ValueError, r"state_dict\['labels'\] must lie in \[-1, 10\)"),
        (
            lambda state: state["has_estimate"].__setitem__(0, False),
            ValueError,
            r"state_dict\['labels'\] must be -1 where has_estimate is not set",
        ),
        (
            lambda state: state["bank.features"].zero_(),
            ValueError,
            r"state_dict\['bank.features'\] \(its seen rows\) must hold unit rows.*norm 0",
        ),
        (lambda state: state["bank.features"].fill_(1.0), ValueError, r"\(its seen rows\) must hold unit rows.*1\.732"),
        (
            lambda state: state.update({"last_diagnostics.trust": "high"}),
            TypeError,
            r"state_dict\['last_diagnostics.trust'\] must be a floating scalar tensor",
        ),
    ],
)
def test_labeler_load_state_dict_is_atomic_and_names_the_key(change, error, pattern):
    source, target = _fitted_labeler(), _fitted_labeler()
    state = source.state_dict()
    replaced = change(state)
    before = target.state_dict()
    with pytest.raises(error, match=pattern):
        target.load_state_dict(replaced if isinstance(replaced, str) else state)
    for key, value in target.state_dict().items():
        assert torch.equal(value, before[key]) if isinstance(value, torch.Tensor) else value == before[key], key


def test_map_errors():
    with pytest.raises(ValueError, match="alpha must be a finite number >= 0"):
        SampleReweighter(alpha=-1)
    with pytest.raises(ValueError, match="max_weight must be a finite number >= 1"):
        SampleReweighter(max_weight=0.5)
    with pytest.raises(ValueError, match=r"min_temperature must be a finite number >= 0\.0001 and <= 0\.2"):
        TemperatureMap(min_temperature=0.5, max_temperature=0.1)
    with pytest.raises(ValueError, match="mapping must be one of"):
        TemperatureMap(mapping="linear")
    with pytest.raises(ValueError, match=r"frequency must lie in \(0, 1\]"):
        SampleReweighter()(torch.tensor([0.0, 0.5]))


def test_default_clip_range_follows_the_base_temperature():
    """temperature=0.02 must not be clipped to the spec's 0.05 (nor 2.0 to 1.0)."""
    for temperature in (0.02, 2.0):
        criterion = TASEContrastiveLoss(temperature=temperature, pseudo_labeler=_fitted_labeler())
        temperature_map = criterion.guidance.temperature_map
        assert temperature_map.min_temperature == pytest.approx(temperature / 4)
        assert temperature_map.max_temperature == pytest.approx(temperature * 5)
        looked_up, _ = criterion.per_sample(torch.arange(4))
        reference = criterion.pseudo_labeler.frequency_reference()
        typical = temperature_map.from_log_frequency(torch.tensor([reference.log_mean], dtype=torch.float64))
        assert float(typical) == pytest.approx(temperature, rel=1e-6)
        assert bool((looked_up >= temperature / 4 - 1e-7).all() and (looked_up <= 5 * temperature + 1e-6).all())
    with pytest.raises(ValueError, match="max_temperature must be a finite number >= 2"):
        TemperatureMap(base_temperature=2.0, max_temperature=1.0)


def test_huge_finite_embeddings_are_normalized_safely():
    out0, out1 = _pair()
    out0[0, 0] = 3e38  # finite: the max-|x| check must not overflow into a false alarm
    assert torch.isfinite(nt_xent_loss(out0, out1))
    for scale, dtype in ((1e20, torch.float32), (1e300, torch.float64)):
        small0, small1 = (tensor.to(dtype) for tensor in _pair())
        expected = nt_xent_loss(small0, small1)
        torch.testing.assert_close(nt_xent_loss(small0 * scale, small1 * scale), expected)
        torch.testing.assert_close(byol_loss(small0 * scale, small1 * scale), byol_loss(small0, small1))
        bank = FeatureBank(4, 3, dtype=torch.float32)
        bank.update(torch.arange(4), small0 * scale)
        torch.testing.assert_close(bank.rows(), torch.nn.functional.normalize(small0.float(), dim=1))
    with pytest.raises(ValueError, match="temperature contains NaN or Inf"):
        nt_xent_loss(*_pair(), temperature=torch.tensor([0.2, float("inf"), 0.2, 0.2]))
    with pytest.raises(ValueError, match="weight contains NaN or Inf"):
        nt_xent_loss(*_pair(), weight=torch.tensor([1.0, 1.0, float("nan"), 1.0]))
    with pytest.raises(ValueError, match="out0 contains NaN or Inf"):
        nt_xent_loss(torch.full((4, 3), float("-inf")), torch.randn(4, 3))


def test_zero_rows_are_rejected_not_given_inf_gradients():
    out0, out1 = (tensor.half() for tensor in _pair())
    out0[2] = 0
    for loss in (nt_xent_loss, byol_loss, simsiam_loss):
        with pytest.raises(ValueError, match=r"out0 has an all-zero row \(row 2\)|prediction has an all-zero row"):
            loss(out0, out1)


@pytest.mark.parametrize(
    "loss", [nt_xent_loss, moco_loss, byol_loss, simsiam_loss, TASECosineLoss("byol"), TASEContrastiveLoss()]
)
def test_empty_batches_are_rejected(loss):
    with pytest.raises(ValueError, match="at least 1 row"):
        loss(torch.zeros(0, 3), torch.zeros(0, 3))


def test_meta_tensors_are_shape_only():
    out0, out1 = torch.randn(4, 3, device="meta"), torch.randn(4, 3, device="meta")
    loss = nt_xent_loss(out0, out1, weight=torch.ones(4, device="meta"))
    assert loss.device.type == "meta" and loss.shape == ()
    assert byol_loss(out0, out1).device.type == "meta"


def test_every_torch_load_in_the_repository_is_weights_only():
    """Untrusted files never run code: grep -rn "torch.load(" shows only weights_only=True."""
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    calls = []
    for folder in ("tase_loss", "studies", "examples", "benchmarks", "tests", "scripts"):
        for path in (root / folder).rglob("*.py"):
            for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
                if re.search(r"torch\.load\(", line) and "re.search" not in line:
                    calls.append((path.relative_to(root), number, line))
    assert calls, "the scan found no torch.load at all"
    unsafe = [call for call in calls if "weights_only=True" not in call[2]]
    assert not unsafe, unsafe
