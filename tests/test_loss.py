"""TASEContrastiveLoss / TASECosineLoss: NT-Xent parity, pseudo-label lookup, the MoCo queue."""

import dataclasses
import io

import pytest
import torch
from oracles import cosine_loop, lightly_nt_xent, moco_loop, nt_xent_loop

from tase_loss import (
    ClusterSizeEstimator,
    PseudoLabeler,
    SampleReweighter,
    TASEContrastiveLoss,
    TASECosineLoss,
    TemperatureMap,
    nt_xent_loss,
)

F64 = torch.float64


def _batch(batch_size=6, dim=4, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return (
        torch.randn(batch_size, dim, dtype=F64, generator=generator),
        torch.randn(batch_size, dim, dtype=F64, generator=generator),
    )


def _fitted_labeler(num_samples=40, dim=4, **options):
    generator = torch.Generator().manual_seed(1)
    centers = torch.randn(4, dim, generator=generator)
    labels = torch.tensor([0] * 24 + [1] * 10 + [2] * 4 + [3] * 2)
    labeler = PseudoLabeler(num_samples, dim, ClusterSizeEstimator(4), warmup_epochs=1, **options)
    labeler.update(torch.arange(40), centers[labels] + 0.05 * torch.randn(40, dim, generator=generator))
    labeler.estimate()
    return labeler


def test_plain_call_is_nt_xent():
    out0, out1 = _batch()
    loss = TASEContrastiveLoss(temperature=0.5)(out0, out1)
    torch.testing.assert_close(loss, lightly_nt_xent(out0, out1, 0.5), rtol=1e-6, atol=0)


def test_index_during_warmup_is_nt_xent():
    labeler = PseudoLabeler(40, 4, ClusterSizeEstimator(4), warmup_epochs=5)
    criterion = TASEContrastiveLoss(temperature=0.3, pseudo_labeler=labeler)
    out0, out1 = _batch()
    torch.testing.assert_close(criterion(out0, out1, index=torch.arange(6)), nt_xent_loss(out0, out1, 0.3))
    # the call stored the batch's (normalized) embeddings in the labeler's bank
    assert labeler.bank.seen_index().tolist() == list(range(6))
    torch.testing.assert_close(
        labeler.bank.rows(torch.arange(6)), torch.nn.functional.normalize(out0, dim=1).float(), atol=1e-3, rtol=0
    )


@pytest.mark.parametrize(
    "index",
    [
        torch.tensor([0, 1, 2, 3, 4, 40]),
        torch.tensor([0, 1, 2, 3, 4, -1]),
        torch.arange(5),
        torch.arange(6.0),
        [0, 1, 2, 3, 4, 5],
    ],
)
def test_index_is_validated_from_the_first_call_warmup_included(index):
    labeler = PseudoLabeler(40, 4, warmup_epochs=5)
    criterion = TASEContrastiveLoss(pseudo_labeler=labeler)
    out0, out1 = _batch()
    with pytest.raises((ValueError, TypeError), match="index"):
        criterion(out0, out1, index=index)
    assert labeler.bank.num_seen == 0


def test_features_argument_feeds_the_bank_and_eval_mode_does_not():
    labeler = PseudoLabeler(40, 3, warmup_epochs=5)
    criterion = TASEContrastiveLoss(pseudo_labeler=labeler)
    out0, out1 = _batch()
    backbone = torch.randn(6, 3, dtype=F64)
    criterion(out0, out1, index=torch.arange(6), features=backbone)
    torch.testing.assert_close(
        labeler.bank.rows(torch.arange(6)), torch.nn.functional.normalize(backbone, dim=1).float(), atol=1e-3, rtol=0
    )
    criterion.eval()
    criterion(out0, out1, index=torch.arange(10, 16), features=backbone)
    assert labeler.bank.num_seen == 6
    with pytest.raises(ValueError, match="features= is stored for index= calls"):
        criterion(out0, out1, features=backbone)


def test_index_lookup_applies_the_maps_with_the_dataset_reference():
    labeler = _fitted_labeler()
    temperature_map = TemperatureMap(base_temperature=0.2, gamma=0.5)
    reweighter = SampleReweighter(alpha=1.0)
    criterion = TASEContrastiveLoss(
        temperature=0.2, pseudo_labeler=labeler, temperature_map=temperature_map, reweighter=reweighter
    )
    index = torch.tensor([0, 30, 36, 38, 39, 5])
    out0, out1 = _batch()
    frequency = labeler.frequency(index)
    reference = labeler.frequency_reference()
    temperature = temperature_map(frequency, reference).double()
    weight = reweighter(frequency, reference).double()
    assert float(temperature[-2]) < float(temperature[0])  # tail sample, smaller temperature
    assert float(weight[-2]) > float(weight[0])
    torch.testing.assert_close(
        criterion(out0, out1, index=index),
        nt_xent_loop(out0, out1, temperature, weight),
        rtol=1e-6,
        atol=0,
    )


def test_default_maps_follow_the_spec():
    criterion = TASEContrastiveLoss(temperature=0.1, pseudo_labeler=_fitted_labeler())
    assert criterion.guidance.temperature_map.base_temperature == 0.1
    assert criterion.guidance.temperature_map.gamma == 0.25
    assert criterion.guidance.reweighter.alpha == 0.5


def test_reduction_none_returns_both_views():
    out0, out1 = _batch()
    per_anchor = TASEContrastiveLoss(reduction="none")(out0, out1)
    assert per_anchor.shape == (12,)
    torch.testing.assert_close(per_anchor.mean(), TASEContrastiveLoss()(out0, out1))


def test_moco_reads_the_queue_before_enqueueing_and_wraps_without_dropping():
    criterion = TASEContrastiveLoss(temperature=0.2, queue_size=10, feature_dim=4).double()
    batches = [_batch(4, seed=seed) for seed in range(4)]
    temperature = torch.full((4,), 0.2, dtype=F64)
    ones = torch.ones(4, dtype=F64)
    seen_keys = []
    for queries, keys in batches:
        queue = torch.cat(seen_keys[-10:]) if seen_keys else torch.zeros(0, 4, dtype=F64)
        queue = queue[-10:]
        expected = moco_loop(queries, keys, queue, temperature, ones)
        torch.testing.assert_close(criterion(queries, keys), expected, rtol=1e-6, atol=0)
        seen_keys.extend(torch.nn.functional.normalize(keys, dim=1).split(1))
    # 16 keys through a queue of 10: slots hold keys 10..15 then 6..9 (ring order).
    expected_queue = torch.cat(seen_keys[10:16] + seen_keys[6:10])
    torch.testing.assert_close(criterion.queue.keys, expected_queue, rtol=1e-12, atol=0)
    assert int(criterion.queue.length) == 10 and int(criterion.queue.pointer) == 6


def test_moco_state_dict_round_trip_continues_exactly():
    criterion = TASEContrastiveLoss(queue_size=8, feature_dim=4)
    for seed in range(3):
        criterion(*[t.float() for t in _batch(3, seed=seed)])
    resumed = TASEContrastiveLoss(queue_size=8, feature_dim=4)
    resumed.load_state_dict(criterion.state_dict())
    queries, keys = [t.float() for t in _batch(3, seed=9)]
    assert torch.equal(criterion(queries, keys), resumed(queries, keys))
    assert torch.equal(criterion.queue.keys, resumed.queue.keys)


def test_cosine_loss_lookup_weights_match_loop():
    labeler = _fitted_labeler()
    criterion = TASECosineLoss("simsiam", pseudo_labeler=labeler)
    prediction, target = _batch()
    index = torch.tensor([0, 30, 36, 38, 39, 5])
    weight = SampleReweighter()(labeler.frequency(index), labeler.frequency_reference()).double()
    torch.testing.assert_close(
        criterion(prediction, target, index=index),
        cosine_loop(prediction, target, weight, "simsiam"),
        rtol=1e-6,
        atol=0,
    )


def test_learnable_temperature_gets_a_gradient():
    log_temperature = torch.nn.Parameter(torch.tensor(-1.6, dtype=F64))
    out0, out1 = _batch()
    loss = TASEContrastiveLoss()(out0, out1, temperature=log_temperature.exp().expand(6))
    loss.backward()
    assert log_temperature.grad is not None and torch.isfinite(log_temperature.grad)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_module_reductions_shapes(reduction):
    out0, out1 = _batch()
    loss = TASEContrastiveLoss(reduction=reduction)(out0, out1, weight=torch.rand(6, dtype=F64))
    assert loss.shape == ((12,) if reduction == "none" else ())


def test_lookup_tables_follow_estimates_map_changes_and_loading():
    labeler = _fitted_labeler(momentum=0.0)
    criterion = TASEContrastiveLoss(temperature=0.2, pseudo_labeler=labeler)
    index = torch.tensor([0, 30, 36, 38, 39, 5])

    def expected():
        frequency, reference = labeler.frequency(index), labeler.frequency_reference()
        guidance = criterion.guidance
        return (guidance.temperature_map(frequency, reference), guidance.reweighter(frequency, reference))

    def check():
        for looked_up, direct in zip(criterion.guidance.lookup(index), expected()):
            torch.testing.assert_close(looked_up, direct, rtol=1e-6, atol=0)

    check()
    tables = criterion.guidance.tables(torch.device("cpu"))
    assert criterion.guidance.tables(torch.device("cpu"))[0] is tables[0]  # cached, not rebuilt
    before = criterion.guidance.lookup(index)[0].clone()
    generator = torch.Generator().manual_seed(5)
    labeler.update(torch.arange(40), torch.randn(40, 4, generator=generator))
    labeler.estimate()
    check()
    assert not torch.equal(before, criterion.guidance.lookup(index)[0])
    criterion.guidance.temperature_map = dataclasses.replace(criterion.guidance.temperature_map, gamma=1.0)
    criterion.guidance.reweighter = dataclasses.replace(criterion.guidance.reweighter, alpha=0.0)
    check()
    labeler.load_state_dict(_fitted_labeler().state_dict())
    check()


def test_set_temperature_moves_nt_xent_and_the_map_base():
    temperature_map = TemperatureMap(0.2, min_temperature=0.05, max_temperature=1.0)
    criterion = TASEContrastiveLoss(temperature=0.2, pseudo_labeler=_fitted_labeler(), temperature_map=temperature_map)
    criterion.set_temperature(0.5)
    assert criterion.temperature == 0.5 and criterion.guidance.temperature_map.base_temperature == 0.5
    with pytest.raises(ValueError, match="min_temperature"):
        criterion.set_temperature(0.01)  # below the map's explicit clip range [0.05, 1.0]
    assert criterion.temperature == 0.5 and criterion.guidance.temperature_map.base_temperature == 0.5


def test_criterion_state_dict_carries_the_labeler_and_resumes_with_weights_only():
    labeler = _fitted_labeler()
    criterion = TASEContrastiveLoss(pseudo_labeler=labeler)
    buffer = io.BytesIO()
    torch.save(criterion.state_dict(), buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)
    assert {"pseudo_labeler.bank.features", "pseudo_labeler.log_frequency", "pseudo_labeler.num_estimates"} <= set(
        state
    )
    fresh = PseudoLabeler(40, 4, ClusterSizeEstimator(4), warmup_epochs=1)
    resumed = TASEContrastiveLoss(pseudo_labeler=fresh)
    resumed.load_state_dict(state)
    assert torch.equal(fresh.log_frequency, labeler.log_frequency) and fresh.num_estimates == labeler.num_estimates
    out0, out1 = _batch()
    index = torch.tensor([0, 30, 36, 38, 39, 5])
    assert torch.equal(criterion.eval()(out0, out1, index=index), resumed.eval()(out0, out1, index=index))
    # a plain loss has no labeler keys, and a labeler-less checkpoint does not fit a guided loss
    assert TASEContrastiveLoss().state_dict() == {}
    with pytest.raises(RuntimeError, match="pseudo_labeler"):
        TASEContrastiveLoss(pseudo_labeler=PseudoLabeler(40, 4)).load_state_dict({})


@pytest.mark.slow
def test_compiles_with_fullgraph_plain_and_with_a_fitted_labeler():
    """No graph break: value checks become asynchronous asserts under torch.compile."""
    torch._dynamo.reset()
    generator = torch.Generator().manual_seed(0)
    out0 = torch.randn(8, 16, generator=generator, requires_grad=True)
    out1 = torch.randn(8, 16, generator=generator, requires_grad=True)
    plain = TASEContrastiveLoss()
    eager = plain(out0, out1)
    torch.testing.assert_close(torch.compile(plain, fullgraph=True)(out0, out1), eager)

    labeler = PseudoLabeler(40, 16, warmup_epochs=1)
    labeler.update(torch.arange(40), torch.randn(40, 16, generator=generator))
    labeler.estimate()
    guided = TASEContrastiveLoss(pseudo_labeler=labeler)
    index = torch.arange(8)
    expected = guided(out0, out1, index=index)
    expected_grad = torch.autograd.grad(expected, out0)[0]
    labeler.bank.features[:8] = 0  # the compiled call must store the batch again
    compiled = torch.compile(guided, fullgraph=True)(out0, out1, index=index)
    torch.testing.assert_close(compiled, expected)
    torch.testing.assert_close(torch.autograd.grad(compiled, out0)[0], expected_grad)
    torch.testing.assert_close(
        labeler.bank.rows(index), torch.nn.functional.normalize(out0.detach(), dim=1), atol=1e-3, rtol=0
    )
    # a loss-reading labeler checks the per-sample losses it stores without a graph break
    reader = PseudoLabeler(40, 16, estimator="momentum-loss")
    moco = TASEContrastiveLoss(pseudo_labeler=reader, queue_size=16, feature_dim=16)
    torch.compile(moco, fullgraph=True, backend="eager")(out0, out1, index=index)
    assert reader.bank.num_seen == 8 and int(moco.queue.length) == 8 and bool((reader.sample_loss[:8] > 0).all())
