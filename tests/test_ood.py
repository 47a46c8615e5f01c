"""The OOD recipe's losses against loop oracles (float64), its sampler and its recipe."""

import functools

import pytest
import torch
import torch.nn.functional as F
from oracles_ood import (
    distillation_loop,
    domain_loop,
    guided_loop,
    pseudo_semantic_loop,
    target_rows_loop,
)

from tase_loss import ClusterSizeEstimator, PseudoLabeler, nt_xent_loss
from tase_loss.functional import contrastive_rows, contrastive_targets
from tase_loss.ood import (
    DomainHead,
    TailBiasedOODSampler,
    TwoStageConfig,
    TwoStageOOD,
    domain_discrimination_loss,
    guided_contrastive_loss,
    pseudo_semantic_loss,
    sample_image_patches,
    similarity_distillation_loss,
    train_two_stage,
)
from tase_loss.ood.multi_positive import label_targets
from tase_loss.ood.sampler import cluster_centroids
from tase_loss.ops.reference import contrastive_rows_reference, contrastive_targets_reference

F64 = torch.float64


def _randn(*shape, seed, requires_grad=False):
    tensor = torch.randn(*shape, dtype=F64, generator=torch.Generator().manual_seed(seed))
    return tensor.requires_grad_(requires_grad)


def _per_sample(batch_size, seed, low):
    generator = torch.Generator().manual_seed(seed)
    return (low + torch.rand(batch_size, dtype=F64, generator=generator)).requires_grad_()


def _assert_close(actual, expected):
    torch.testing.assert_close(actual, expected, rtol=1e-6, atol=1e-12)


def _assert_same_values_and_grads(loss, oracle, inputs):
    _assert_close(loss, oracle)
    ours = torch.autograd.grad(loss, inputs, retain_graph=True)
    theirs = torch.autograd.grad(oracle, inputs, retain_graph=True)
    for mine, reference in zip(ours, theirs):
        _assert_close(mine, reference)


# --- the shared row contract ------------------------------------------------------


def test_one_hot_targets_are_the_single_positive_rows():
    queries = F.normalize(_randn(5, 4, seed=0), dim=1).requires_grad_()
    keys = F.normalize(_randn(7, 4, seed=1), dim=1).requires_grad_()
    positive = torch.tensor([3, 0, 6, 2, 5])
    self_index = torch.tensor([1, -1, 2, 0, -1])
    inverse_temperature = _per_sample(5, 2, low=1.0)
    weight = _per_sample(5, 3, low=0.0)
    single, single_lse = contrastive_rows_reference(
        queries, keys, positive, self_index, inverse_temperature, weight, return_lse=True
    )
    one_hot = F.one_hot(positive, 7).to(F64)
    multi, multi_lse = contrastive_targets_reference(
        queries, keys, one_hot, self_index, inverse_temperature, weight
    )
    _assert_close(multi_lse, single_lse)
    _assert_same_values_and_grads(
        multi.sum(), single.sum(), (queries, keys, inverse_temperature, weight)
    )


def _targets_case():
    queries = _randn(4, 3, seed=4, requires_grad=True)
    keys = _randn(6, 3, seed=5, requires_grad=True)
    target = torch.rand(4, 6, dtype=F64, generator=torch.Generator().manual_seed(6))
    target[target < 0.4] = 0.0
    self_index = torch.tensor([0, 5, -1, 2])
    target[torch.arange(4)[self_index >= 0], self_index[self_index >= 0]] = 0.0
    pair_weight = torch.rand(4, 6, dtype=F64, generator=torch.Generator().manual_seed(7))
    pair_weight[1, 3] = 0.0
    return queries, keys, target, self_index, pair_weight


def test_targets_with_pair_weights_match_the_loop():
    queries, keys, target, self_index, pair_weight = _targets_case()
    temperature = _per_sample(4, 8, low=0.1)
    weight = _per_sample(4, 9, low=0.0)
    rows = contrastive_targets(
        queries, keys, target, self_index, 1.0 / temperature, weight, pair_weight
    )
    loop = target_rows_loop(queries, keys, target, self_index.tolist(), temperature, pair_weight)
    oracle = sum(w * loss for w, loss in zip(weight, loop))
    _assert_same_values_and_grads(rows.sum(), oracle, (queries, keys, temperature, weight))


def test_targets_gradcheck():
    queries, keys, target, self_index, pair_weight = _targets_case()
    inverse_temperature = _per_sample(4, 10, low=1.0)
    weight = _per_sample(4, 11, low=0.1)
    assert torch.autograd.gradcheck(
        lambda q, k, i, w: contrastive_targets(q, k, target, self_index, i, w, pair_weight),
        (queries, keys, inverse_temperature, weight),
    )


def test_multi_positive_rows_equal_single_positive_rows_repeated_per_positive():
    """How the fused single-positive op covers multi-positive targets: one row per pair."""
    queries, keys, target, self_index, _ = _targets_case()
    inverse_temperature = _per_sample(4, 12, low=1.0)
    weight = _per_sample(4, 13, low=0.0)
    multi = contrastive_targets(queries, keys, target, self_index, inverse_temperature, weight)
    row, column = target.nonzero(as_tuple=True)
    expanded = contrastive_rows(
        queries[row],
        keys,
        column,
        self_index[row],
        inverse_temperature[row],
        weight[row] * target[row, column],
    )
    per_row = torch.zeros(4, dtype=F64).index_add(0, row, expanded)
    _assert_same_values_and_grads(
        multi.sum(), per_row.sum(), (queries, keys, inverse_temperature, weight)
    )
    _assert_close(multi, per_row)


# --- pseudo semantic discrimination ---------------------------------------------------


@pytest.mark.parametrize("instance_mass", [0.0, 0.4, 1.0])
def test_pseudo_semantic_loss_matches_loop_with_temperature_and_weight(instance_mass):
    out0 = _randn(6, 4, seed=20, requires_grad=True)
    out1 = _randn(6, 4, seed=21, requires_grad=True)
    labels = torch.tensor([0, 1, 0, 2, 1, 0])
    temperature = _per_sample(6, 22, low=0.1)
    weight = _per_sample(6, 23, low=0.0)
    loss = pseudo_semantic_loss(out0, out1, labels, temperature, weight,
                                instance_mass=instance_mass)
    oracle = pseudo_semantic_loop(out0, out1, labels, temperature, weight, instance_mass)
    _assert_same_values_and_grads(loss, oracle, (out0, out1, temperature, weight))


def test_pseudo_semantic_loss_gradcheck():
    out0 = _randn(4, 3, seed=24, requires_grad=True)
    out1 = _randn(4, 3, seed=25, requires_grad=True)
    labels = torch.tensor([1, 1, 0, 1])
    temperature = _per_sample(4, 26, low=0.2)
    assert torch.autograd.gradcheck(
        lambda a, b, t: pseudo_semantic_loss(a, b, labels, t), (out0, out1, temperature)
    )


def test_pseudo_semantic_loss_with_distinct_labels_is_nt_xent():
    out0 = _randn(5, 4, seed=27, requires_grad=True)
    out1 = _randn(5, 4, seed=28, requires_grad=True)
    _assert_same_values_and_grads(
        pseudo_semantic_loss(out0, out1, torch.tensor([7, 3, 9, 0, 4]), 0.3),
        nt_xent_loss(out0, out1, 0.3),
        (out0, out1),
    )


def test_label_targets_rows_sum_to_one_and_skip_self():
    labels = torch.tensor([2, 2, 5, 2, 5])
    target = label_targets(labels, labels, torch.arange(5))
    torch.testing.assert_close(target.sum(dim=1), torch.ones(5))
    assert float(target.diagonal().abs().sum()) == 0.0
    assert target[0].tolist() == [0.0, 0.5, 0.0, 0.5, 0.0]


@pytest.mark.parametrize(
    "labels, error, match",
    [
        (torch.tensor([0.0, 1.0, 2.0]), TypeError, "labels must be an int64"),
        (torch.tensor([0, 1]), ValueError, "labels has 2 entries but out0 has 3 rows"),
        ([0, 1, 2], TypeError, "labels must be a torch.Tensor"),
    ],
)
def test_pseudo_semantic_loss_rejects_bad_labels(labels, error, match):
    out0, out1 = _randn(3, 2, seed=29), _randn(3, 2, seed=30)
    with pytest.raises(error, match=match):
        pseudo_semantic_loss(out0, out1, labels)


def test_pseudo_semantic_loss_rejects_bad_instance_mass():
    with pytest.raises(ValueError, match="instance_mass must be a finite number >= 0 and <= 1"):
        pseudo_semantic_loss(_randn(3, 2, seed=35), _randn(3, 2, seed=36), torch.arange(3),
                             instance_mass=1.5)


def test_pseudo_semantic_loss_rejects_a_single_sample_and_bad_temperature():
    with pytest.raises(ValueError, match="at least 2"):
        pseudo_semantic_loss(_randn(1, 2, seed=31), _randn(1, 2, seed=32), torch.tensor([0]))
    with pytest.raises(ValueError, match=r"temperature must be >= 0\.0001"):
        pseudo_semantic_loss(
            _randn(3, 2, seed=33), _randn(3, 2, seed=34), torch.arange(3),
            torch.tensor([0.1, -0.1, 0.2], dtype=F64),
        )


# --- guided contrastive loss and distillation ------------------------------------------


@pytest.mark.parametrize(
    "num_neighbors, neighbor_mass, repulsion_power",
    [(3, 0.5, 1.0), (1, 0.3, 2.0), (0, 0.5, 0.7), (4, 0.0, 0.0), (8, 0.6, 1.0)],
)
def test_guided_loss_matches_loop(num_neighbors, neighbor_mass, repulsion_power):
    out0 = _randn(5, 4, seed=40, requires_grad=True)
    out1 = _randn(5, 4, seed=41, requires_grad=True)
    guide0, guide1 = _randn(5, 3, seed=42), _randn(5, 3, seed=43)
    temperature = _per_sample(5, 44, low=0.1)
    weight = _per_sample(5, 45, low=0.0)
    options = dict(num_neighbors=num_neighbors, neighbor_mass=neighbor_mass,
                   neighbor_temperature=0.2, repulsion_power=repulsion_power)
    loss = guided_contrastive_loss(
        out0, out1, guide0, guide1, temperature=temperature, weight=weight, **options
    )
    oracle = guided_loop(out0, out1, guide0, guide1, temperature=temperature, weight=weight,
                         **options)
    _assert_same_values_and_grads(loss, oracle, (out0, out1, temperature, weight))


def test_guided_loss_gradcheck_and_no_gradient_into_the_guide():
    out0 = _randn(4, 3, seed=46, requires_grad=True)
    out1 = _randn(4, 3, seed=47, requires_grad=True)
    guide0 = _randn(4, 3, seed=48, requires_grad=True)
    guide1 = _randn(4, 3, seed=49, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda a, b: guided_contrastive_loss(a, b, guide0, guide1, num_neighbors=2),
        (out0, out1),
    )
    guided_contrastive_loss(out0, out1, guide0, guide1).backward()
    assert guide0.grad is None and guide1.grad is None


def test_guided_loss_without_neighbours_or_repulsion_is_nt_xent():
    out0 = _randn(6, 4, seed=50, requires_grad=True)
    out1 = _randn(6, 4, seed=51, requires_grad=True)
    guide0, guide1 = _randn(6, 4, seed=52), _randn(6, 4, seed=53)
    _assert_same_values_and_grads(
        guided_contrastive_loss(out0, out1, guide0, guide1, num_neighbors=0,
                                repulsion_power=0.0, temperature=0.15),
        nt_xent_loss(out0, out1, 0.15),
        (out0, out1),
    )


@pytest.mark.parametrize(
    "options, error, match",
    [
        (dict(num_neighbors=7), ValueError, r"num_neighbors must be an integer >= 0 and <= 6"),
        (dict(num_neighbors=2.0), TypeError, "num_neighbors must be an int"),
        (dict(neighbor_mass=1.0), ValueError, "neighbor_mass"),
        (dict(neighbor_temperature=0.0), ValueError, "neighbor_temperature"),
        (dict(repulsion_power=-1.0), ValueError, "repulsion_power"),
        (dict(reduction="avg"), ValueError, "reduction"),
    ],
)
def test_guided_loss_rejects_bad_options(options, error, match):
    out0, out1 = _randn(4, 3, seed=54), _randn(4, 3, seed=55)
    with pytest.raises(error, match=match):
        guided_contrastive_loss(out0, out1, out0, out1, **options)


def test_guided_losses_reject_a_mismatched_guide():
    out0, out1 = _randn(4, 3, seed=56), _randn(4, 3, seed=57)
    guide = _randn(5, 3, seed=58)
    with pytest.raises(ValueError, match="guide0 holds 5 samples but out0 holds 4"):
        guided_contrastive_loss(out0, out1, guide, guide)
    with pytest.raises(ValueError, match="guide1 has shape"):
        similarity_distillation_loss(out0, out1, out0, guide)


def test_distillation_matches_loop():
    out0 = _randn(5, 4, seed=60, requires_grad=True)
    out1 = _randn(5, 4, seed=61, requires_grad=True)
    guide0, guide1 = _randn(5, 6, seed=62), _randn(5, 6, seed=63)
    temperature = _per_sample(5, 64, low=0.1)
    weight = _per_sample(5, 65, low=0.0)
    loss = similarity_distillation_loss(out0, out1, guide0, guide1, 0.15, temperature, weight)
    oracle = distillation_loop(out0, out1, guide0, guide1, 0.15, temperature, weight)
    _assert_same_values_and_grads(loss, oracle, (out0, out1, temperature, weight))


def test_distillation_gradcheck_and_zero_at_the_guide():
    out0 = _randn(4, 3, seed=66, requires_grad=True)
    out1 = _randn(4, 3, seed=67, requires_grad=True)
    guide0, guide1 = _randn(4, 3, seed=68), _randn(4, 3, seed=69)
    assert torch.autograd.gradcheck(
        lambda a, b: similarity_distillation_loss(a, b, guide0, guide1), (out0, out1)
    )
    at_guide = similarity_distillation_loss(out0, out1, out0, out1, 0.2, 0.2)
    _assert_close(at_guide, torch.zeros((), dtype=F64))
    for grad in torch.autograd.grad(at_guide, (out0, out1)):
        _assert_close(grad, torch.zeros_like(grad))
    assert float(similarity_distillation_loss(out0, out1, guide0, guide1).detach()) > 0


def test_distillation_rejects_bad_guide_temperature():
    out0, out1 = _randn(4, 3, seed=70), _randn(4, 3, seed=71)
    with pytest.raises(ValueError, match="guide_temperature"):
        similarity_distillation_loss(out0, out1, out0, out1, guide_temperature=-0.1)


# --- domain discrimination ------------------------------------------------------------


def test_domain_loss_matches_loop_and_gradcheck():
    logits = _randn(7, seed=80, requires_grad=True)
    is_ood = torch.tensor([True, False, False, True, True, False, True])
    weight = _per_sample(7, 81, low=0.0)
    loss = domain_discrimination_loss(logits, is_ood, weight)
    _assert_same_values_and_grads(loss, domain_loop(logits, is_ood, weight), (logits, weight))
    assert torch.autograd.gradcheck(
        lambda z, w: domain_discrimination_loss(z, is_ood, w), (logits, weight)
    )


@pytest.mark.parametrize(
    "logits, is_ood, error, match",
    [
        (torch.zeros(3), torch.tensor([1, 0, 1]), TypeError, "is_ood must be a bool"),
        (torch.zeros(3), torch.tensor([True, False]), ValueError, "is_ood has shape"),
        (torch.zeros(3, 1), torch.tensor([True, False, True]), ValueError,
         r"logits must be a \(B,\)"),
        (torch.tensor([0.0, float("nan")]), torch.tensor([True, False]), ValueError, "NaN"),
        (torch.zeros(0), torch.zeros(0, dtype=torch.bool), ValueError, "empty"),
    ],
)
def test_domain_loss_rejects_bad_input(logits, is_ood, error, match):
    with pytest.raises(error, match=match):
        domain_discrimination_loss(logits, is_ood)


def test_domain_head_gives_one_logit_per_sample_and_checks_sizes():
    assert DomainHead(5, hidden_dim=3)(torch.randn(4, 5)).shape == (4,)
    with pytest.raises(ValueError, match="feature_dim"):
        DomainHead(0)


# --- OOD sampler ------------------------------------------------------------------------


def _planted_mixture(seed=0):
    """Three ID clusters of sizes 200 / 40 / 8 on orthogonal axes; OOD spread evenly near them."""
    generator = torch.Generator().manual_seed(seed)
    axes = torch.eye(3, 6)
    sizes = [200, 40, 8]
    id_labels = torch.cat([torch.full((n,), c) for c, n in enumerate(sizes)])
    id_features = axes[id_labels] + 0.1 * torch.randn(len(id_labels), 6, generator=generator)
    ood_cluster = torch.arange(3).repeat_interleave(100)
    ood_features = axes[ood_cluster] + 0.15 * torch.randn(300, 6, generator=generator)
    return id_features, id_labels, ood_features, ood_cluster


def test_sampler_prefers_ood_near_tail_clusters():
    id_features, id_labels, ood_features, ood_cluster = _planted_mixture()
    sampler = TailBiasedOODSampler(id_features, id_labels, ood_features, num_samples=3000,
                                   replacement=True, tail_power=1.0, seed=1)
    assert torch.equal(sampler.assignment, ood_cluster)
    drawn = torch.tensor(list(sampler))
    share = torch.bincount(ood_cluster[drawn], minlength=3).double() / len(drawn)
    # Inverse cluster sizes 1/200 : 1/40 : 1/8 give expected shares of about 0.03 / 0.16 / 0.81.
    assert share[2] > 0.6 and share[2] > share[1] > share[0]
    flat = TailBiasedOODSampler(id_features, id_labels, ood_features, num_samples=3000,
                                replacement=True, tail_power=0.0, seed=1)
    flat_share = torch.bincount(ood_cluster[torch.tensor(list(flat))], minlength=3) / 3000.0
    assert float(flat_share.max() - flat_share.min()) < 0.15


def test_sampler_is_deterministic_per_seed_and_epoch():
    id_features, id_labels, ood_features, _ = _planted_mixture()
    make = lambda seed: TailBiasedOODSampler(
        id_features, id_labels, ood_features, num_samples=50, seed=seed
    )
    first, again, other_seed = make(3), make(3), make(4)
    assert list(first) == list(again) == list(first)
    assert list(first) != list(other_seed)
    epoch0 = list(first)
    first.set_epoch(1)
    assert list(first) != epoch0 and len(set(list(first))) == 50  # without replacement
    resumed = make(3)
    resumed.load_state_dict(first.state_dict())
    assert list(resumed) == list(first)
    assert len(first) == 50


def test_sampler_from_pseudo_labeler_uses_the_bank_split():
    id_features, _, ood_features, ood_cluster = _planted_mixture()
    labeler = PseudoLabeler(len(id_features) + len(ood_features), 6, ClusterSizeEstimator(3),
                            warmup_epochs=1, num_threads=1)
    with pytest.raises(ValueError, match="has not clustered"):
        TailBiasedOODSampler.from_pseudo_labeler(labeler, len(id_features), 10)
    labeler.update(torch.arange(len(id_features) + 300), torch.cat([id_features, ood_features]))
    labeler.estimate()
    sampler = TailBiasedOODSampler.from_pseudo_labeler(labeler, len(id_features), 10)
    assert sampler.probabilities.shape == (300,)
    # The k-means clusters match the planted ones up to their ids.
    id_labels = labeler.labels[: len(id_features)]
    tail_label = int(id_labels[-1])
    assert bool((sampler.assignment[ood_cluster == 2] == tail_label).float().mean() > 0.9)
    with pytest.raises(ValueError, match="num_id must be an integer >= 1 and <= 547"):
        TailBiasedOODSampler.from_pseudo_labeler(labeler, len(id_features) + 300, 10)


def test_sampler_from_pseudo_labeler_leaves_out_id_rows_never_stored():
    # a loop that drops partial batches never stores some ID rows: no features, label -1
    id_features, _, ood_features, _ = _planted_mixture()
    num_id = len(id_features)
    labeler = PseudoLabeler(num_id + 300, 6, ClusterSizeEstimator(3), warmup_epochs=1, num_threads=1)
    stored = torch.cat([torch.arange(0, num_id, 2), torch.arange(num_id, num_id + 300)])
    labeler.update(stored, torch.cat([id_features, ood_features])[stored])
    labeler.estimate()
    sampler = TailBiasedOODSampler.from_pseudo_labeler(labeler, num_id, 10, seed=2)
    id_rows = stored[stored < num_id]
    expected = TailBiasedOODSampler(
        labeler.bank.rows(id_rows), labeler.labels[id_rows], labeler.bank.rows(stored[stored >= num_id]), 10, seed=2
    )
    torch.testing.assert_close(sampler.probabilities, expected.probabilities)
    assert list(sampler) == list(expected)
    partial = PseudoLabeler(num_id + 300, 6, ClusterSizeEstimator(3), warmup_epochs=1, num_threads=1)
    partial.update(torch.arange(num_id + 100), torch.cat([id_features, ood_features[:100]]))
    partial.estimate()
    with pytest.raises(ValueError, match="every OOD row of the bank must be stored"):
        TailBiasedOODSampler.from_pseudo_labeler(partial, num_id, 10)


@pytest.mark.parametrize(
    "options, error, match",
    [
        (dict(num_samples=301), ValueError, "exceeds the 300 OOD samples"),
        (dict(num_samples=0), ValueError, "num_samples"),
        (dict(num_samples=5, tail_power=-1.0), ValueError, "tail_power"),
        (dict(num_samples=5, proximity_temperature=0.0), ValueError, "proximity_temperature"),
    ],
)
def test_sampler_rejects_bad_options(options, error, match):
    id_features, id_labels, ood_features, _ = _planted_mixture()
    with pytest.raises(error, match=match):
        TailBiasedOODSampler(id_features, id_labels, ood_features, **options)


def test_sampler_rejects_unclustered_or_mismatched_features():
    id_features, id_labels, ood_features, _ = _planted_mixture()
    with pytest.raises(ValueError, match="no pseudo-label"):
        TailBiasedOODSampler(id_features, torch.full_like(id_labels, -1), ood_features, 5)
    with pytest.raises(ValueError, match="ood_features has 5 columns"):
        TailBiasedOODSampler(id_features, id_labels, ood_features[:, :5], 5)


def test_cluster_centroids_skip_unlabelled_rows():
    features = torch.tensor([[2.0, 0.0], [0.0, 1.0], [5.0, 5.0]])
    ids, centroids, sizes = cluster_centroids(features, torch.tensor([3, 3, -1]))
    assert ids.tolist() == [3] and sizes.tolist() == [2]
    torch.testing.assert_close(centroids, F.normalize(torch.tensor([[1.0, 1.0]], dtype=F64)))


# --- OOD source and two-stage recipe ---------------------------------------------------


def test_image_patches_are_digit_like_and_seeded():
    patches = sample_image_patches(6, seed=1)
    assert patches.shape == (6, 64) and patches.dtype == torch.float32
    assert float(patches.min()) == 0.0 and float(patches.max()) == 16.0
    assert torch.equal(patches, sample_image_patches(6, seed=1))
    assert not torch.equal(patches, sample_image_patches(6, seed=2))
    with pytest.raises(ValueError, match="num_patches"):
        sample_image_patches(0)


def _noise(inputs):
    return inputs + 0.1 * torch.randn_like(inputs)


def _toy_problem():
    generator = torch.Generator().manual_seed(0)
    id_data = torch.randn(48, 10, generator=generator)
    ood_data = torch.randn(30, 10, generator=generator) + 2.0
    return id_data, ood_data


def _encoder():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(10, 16), torch.nn.ReLU(), torch.nn.Linear(16, 8))


SMALL = TwoStageConfig(stage1_epochs=3, stage2_epochs=2, warmup_epochs=1, num_clusters=4,
                       ood_batch_size=8, num_neighbors=2)


def test_two_stage_recipe_runs_end_to_end():
    id_data, ood_data = _toy_problem()
    model, history = train_two_stage(_encoder(), id_data, ood_data, _noise, 8, config=SMALL,
                                     batch_size=16, learning_rate=0.05)
    assert [record["stage"] for record in history] == [1, 1, 1, 2, 2]
    assert all(torch.isfinite(torch.tensor(record["loss"])) for record in history)
    assert all(parameter.grad is not None for parameter in model.parameters())


def _run_epochs(id_data, model, method, optimizer, epochs, seed):
    """Train the recipe over ``epochs`` (noise reseeded per epoch); the losses of every step."""
    losses = []
    for epoch in epochs:
        torch.manual_seed(seed + epoch)
        for index in torch.arange(48).split(16):
            views = (_noise(id_data[index]), _noise(id_data[index]))
            losses.append(float(method.training_step((index, *views), model, optimizer)))
        method.on_epoch_end(epoch)
    return losses


def test_recipe_hooks_switch_stage_freeze_the_guide_and_resume_exactly():
    id_data, ood_data = _toy_problem()

    run = functools.partial(_run_epochs, id_data, seed=100)

    model = _encoder()
    method = TwoStageOOD(ood_data, 48, 8, _noise, SMALL)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    run(model, method, optimizer, range(3))
    assert method.stage == 2 and method.ood_sampler is not None
    assert method.pseudo_labeler.is_fitted and bool(method.pseudo_labeler.bank.seen.all())
    guide_weights = [p.detach().clone() for p in method.guide.parameters()]
    assert not any(p.requires_grad for p in method.guide.parameters())

    saved = (method.state_dict(), {k: v.clone() for k, v in model.state_dict().items()},
             optimizer.state_dict())
    straight = run(model, method, optimizer, range(3, 5))
    for before, after in zip(guide_weights, method.guide.parameters()):
        assert torch.equal(before, after)
    assert not all(torch.equal(a, b) for a, b in zip(guide_weights, model.parameters()))

    resumed_model = _encoder()
    resumed_model.load_state_dict(saved[1])
    resumed_optimizer = torch.optim.SGD(resumed_model.parameters(), lr=0.05)
    resumed_optimizer.load_state_dict(saved[2])
    resumed = TwoStageOOD(ood_data, 48, 8, _noise, SMALL)
    resumed.load_state_dict(saved[0], resumed_model)
    assert run(resumed_model, resumed, resumed_optimizer, range(3, 5)) == straight


def test_recipe_resumes_exactly_inside_stage_one():
    id_data, ood_data = _toy_problem()

    run = functools.partial(_run_epochs, id_data, seed=200)

    model = _encoder()
    method = TwoStageOOD(ood_data, 48, 8, _noise, SMALL)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    run(model, method, optimizer, range(2))
    saved = (method.state_dict(), {k: v.clone() for k, v in model.state_dict().items()})
    straight = run(model, method, optimizer, [2])
    resumed_model = _encoder()
    resumed_model.load_state_dict(saved[1])
    resumed = TwoStageOOD(ood_data, 48, 8, _noise, SMALL)
    resumed.load_state_dict(saved[0], resumed_model)
    resumed_optimizer = torch.optim.SGD(resumed_model.parameters(), lr=0.05)
    assert run(resumed_model, resumed, resumed_optimizer, [2]) == straight


def test_recipe_rejects_bad_configuration():
    with pytest.raises(ValueError, match="warmup_epochs"):
        TwoStageConfig(stage1_epochs=2, warmup_epochs=3)
    with pytest.raises(ValueError, match="domain_weight"):
        TwoStageConfig(domain_weight=-1.0)
    id_data, ood_data = _toy_problem()
    with pytest.raises(TypeError, match="augment must be callable"):
        TwoStageOOD(ood_data, 48, 8, None, SMALL)
    with pytest.raises(ValueError, match="fewer than batch_size"):
        train_two_stage(_encoder(), id_data, ood_data, _noise, 8, config=SMALL, batch_size=64)
    method = TwoStageOOD(ood_data, 48, 8, _noise, SMALL)
    with pytest.raises(RuntimeError, match="before any training_step"):
        method.on_epoch_end(0)
