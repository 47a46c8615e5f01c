"""DDP on 2 and 3 gloo processes == one process on the concatenated batch (float64).

What a DDP user observes, and what is checked (``W`` ranks, ``L`` the loss of the
concatenated batch computed in one process):

- every rank's returned loss equals ``L``;
- parameter gradients, after DDP's averaging, equal ``dL/dtheta`` on every rank;
- tensors local to a rank (its embeddings, per-sample temperatures and weights, keys)
  receive ``W * dL/dx`` for their slice: DDP divides by ``W`` once they reach the
  parameters, so ``W`` times is what makes the parameter gradients exact;
- MoCo queues are identical on every rank and equal the single-process queue;
- the pseudo-labeler's labels, frequencies and statistics are bit-identical on every
  rank and equal a single-process labeler fed the same samples.

Each world size is one spawn running every case (a process group costs seconds).
"""

from __future__ import annotations

import socket

import distributed_workers as workers
import pytest
import torch
import torch.multiprocessing as mp

from tase_loss import TASEContrastiveLoss
from tase_loss.functional import moco_loss, moco_loss_and_all_keys, nt_xent_loss

pytestmark = pytest.mark.skipif(
    not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
    reason="needs torch.distributed with gloo",
)


def _assert_close(actual, expected):
    torch.testing.assert_close(actual, expected, rtol=1e-6, atol=1e-12)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module", params=[2, 3], ids=["world2", "world3"])
def ranks(request, tmp_path_factory):
    """``(world_size, [results of rank 0, rank 1, ...])`` from one spawn."""
    world_size = request.param
    output_dir = tmp_path_factory.mktemp(f"world{world_size}")
    mp.spawn(
        workers.run_worker,
        args=(world_size, _free_port(), str(output_dir)),
        nprocs=world_size,
        join=True,
    )
    return world_size, [torch.load(output_dir / f"rank{rank}.pt", weights_only=True) for rank in range(world_size)]


# ---------------------------------------------------------------- single-process replays


def _single_simclr(world_size, reduction, per_sample):
    model = workers.make_encoder(seed=0)
    criterion = TASEContrastiveLoss(reduction=reduction)
    expected = []
    for step, sizes in enumerate(workers.STEP_SIZES[world_size]):
        data = workers.step_data(step, sum(sizes), workers.zero_weight_rows(step, sizes))
        temperature, weight = workers.per_sample_inputs(data, slice(None), per_sample)
        model.zero_grad()
        embeddings = model(torch.cat([data["view0"], data["view1"]]))
        out0, out1 = embeddings.split(sum(sizes))
        out0.retain_grad()
        out1.retain_grad()
        loss = criterion(out0, out1, temperature=temperature, weight=weight)
        loss.backward()
        expected.append(
            {
                "loss": loss.detach(),
                "rows": workers.unreduced_rows(out0, out1, temperature, weight, False),
                "parameters": workers.parameter_grads(model),
                "out0": out0.grad,
                "out1": out1.grad,
                "temperature": workers.grad_of(temperature),
                "weight": workers.grad_of(weight),
            }
        )
    return expected


def _single_moco(world_size):
    model = workers.make_encoder(seed=0)
    momentum_encoder = workers.make_encoder(seed=1)
    criterion = TASEContrastiveLoss(
        queue_size=workers.QUEUE_SIZE, feature_dim=workers.EMBEDDING_DIM
    ).double()
    steps = []
    for step, sizes in enumerate(workers.STEP_SIZES[world_size]):
        data = workers.step_data(step, sum(sizes), workers.zero_weight_rows(step, sizes))
        temperature, weight = workers.per_sample_inputs(data, slice(None), True)
        model.zero_grad()
        queries = model(data["view0"])
        queries.retain_grad()
        with torch.no_grad():
            keys = momentum_encoder(data["key_input"])
        loss = criterion(queries, keys, temperature=temperature, weight=weight)
        loss.backward()
        steps.append(
            {
                "loss": loss.detach(),
                "parameters": workers.parameter_grads(model),
                "queries": queries.grad.clone(),
                "temperature": temperature.grad,
                "weight": weight.grad,
            }
        )
    return {"steps": steps, "buffers": criterion.state_dict()}


def _assert_rank_matches(world_size, rank, observed, expected, sizes, local_names):
    """Loss and (averaged) parameter gradients equal; local gradients are W times."""
    _assert_close(observed["loss"], expected["loss"])
    for averaged, single in zip(observed["parameters"], expected["parameters"]):
        _assert_close(averaged, single)
    rows = workers.rank_rows(sizes, rank)
    for name in local_names:
        if expected[name] is None:
            assert observed[name] is None
            continue
        _assert_close(observed[name], world_size * expected[name][rows])


# ---------------------------------------------------------------------------- the tests


@pytest.mark.parametrize("variant", range(len(workers.SIMCLR_VARIANTS)))
def test_simclr_ddp_matches_one_process_on_the_concatenated_batch(ranks, variant):
    world_size, results = ranks
    reduction, per_sample = workers.SIMCLR_VARIANTS[variant]
    expected = _single_simclr(world_size, reduction, per_sample)
    num_steps = len(workers.STEP_SIZES[world_size])
    for rank, result in enumerate(results):
        observed = result["simclr"][variant * num_steps : (variant + 1) * num_steps]
        for step, sizes in enumerate(workers.STEP_SIZES[world_size]):
            _assert_rank_matches(
                world_size,
                rank,
                observed[step],
                expected[step],
                sizes,
                ["out0", "out1", "temperature", "weight"],
            )
            # reduction="none": this rank's rows of both views, all ranks as negatives.
            rows = workers.rank_rows(sizes, rank)
            view0_rows, view1_rows = expected[step]["rows"].split(sum(sizes))
            _assert_close(observed[step]["rows"], torch.cat([view0_rows[rows], view1_rows[rows]]))


def test_moco_ddp_matches_one_process_and_queues_are_identical(ranks):
    world_size, results = ranks
    expected = _single_moco(world_size)
    for rank, result in enumerate(results):
        for step, sizes in enumerate(workers.STEP_SIZES[world_size]):
            _assert_rank_matches(
                world_size,
                rank,
                result["moco"]["steps"][step],
                expected["steps"][step],
                sizes,
                ["queries", "temperature", "weight"],
            )
    rank0_buffers = results[0]["moco"]["buffers"]
    for result in results[1:]:
        for name, value in result["moco"]["buffers"].items():
            assert torch.equal(value, rank0_buffers[name]), name
    for name, value in expected["buffers"].items():
        _assert_close(rank0_buffers[name], value)
    # The queue wrapped around at least once, so pointer arithmetic was exercised.
    assert sum(map(sum, workers.STEP_SIZES[world_size])) > workers.QUEUE_SIZE


def test_weighted_byol_ddp_matches_one_process(ranks):
    world_size, results = ranks
    expected = workers.cosine_steps(None, world_size, gather_distributed=False)
    for rank, result in enumerate(results):
        for step, sizes in enumerate(workers.STEP_SIZES[world_size]):
            _assert_rank_matches(
                world_size,
                rank,
                result["cosine"][step],
                expected[step],
                sizes,
                ["prediction", "weight"],
            )


def test_moco_functional_gathers_key_gradients_across_ranks(ranks):
    world_size, results = ranks
    sizes = workers.STEP_SIZES[world_size][1]
    data = workers.step_data(1, sum(sizes))
    queries = data["view0"][:, : workers.EMBEDDING_DIM].clone().requires_grad_()
    keys = data["keys"].clone().requires_grad_()
    temperature, weight = workers.per_sample_inputs(data, slice(None), True)
    loss = moco_loss(queries, keys, workers.shared_queue(), temperature, weight)
    loss.backward()
    expected = {
        "loss": loss.detach(),
        "parameters": [],
        "queries": queries.grad,
        "keys": keys.grad,
        "temperature": temperature.grad,
        "weight": weight.grad,
    }
    for rank, result in enumerate(results):
        _assert_rank_matches(
            world_size,
            rank,
            {**result["moco_functional"], "parameters": []},
            expected,
            sizes,
            ["queries", "keys", "temperature", "weight"],
        )


@pytest.mark.parametrize("estimator", sorted(workers.LABELER_ESTIMATORS))
def test_pseudo_labeler_is_bit_identical_on_every_rank_and_to_one_process(ranks, estimator):
    """Bank, estimates and the guidance tables built from them, under 2 and 3 gloo processes."""
    world_size, results = ranks
    single = workers.make_labeler(world_size, gather_distributed=False, estimator=estimator)
    for epoch in range(workers.LABELER_EPOCHS):
        for index, features in workers.labeler_batches(epoch, world_size):
            single.update(index, features)
        assert single.end_epoch(epoch)
        expected = workers.labeler_state(single)
        assert expected["has_estimate"].all()
        # More than one cluster size: the estimates carry information.
        assert expected["frequency"].unique().numel() > 1
        for result in results:
            observed = result["labeler"][estimator][epoch]
            for name, value in expected.items():
                if isinstance(value, torch.Tensor):
                    assert observed[name].dtype == value.dtype, name
                    assert torch.equal(observed[name], value), (epoch, name)
                else:
                    assert observed[name] == value, (epoch, name)


def test_ranks_disagreeing_on_the_feature_size_all_raise(ranks):
    _, results = ranks
    for result in results:
        assert "same row shape on every rank" in result["mismatch"]


# ------------------------------------------------- without a process group: the identity


def test_gather_distributed_without_a_process_group_is_the_plain_loss():
    generator = torch.Generator().manual_seed(0)
    out0, out1, keys = torch.randn(3, 5, 4, dtype=torch.float64, generator=generator)
    weight = torch.rand(5, dtype=torch.float64, generator=generator)
    for reduction in ("mean", "sum", "none"):
        _assert_close(
            nt_xent_loss(out0, out1, 0.2, weight, reduction, gather_distributed=True),
            nt_xent_loss(out0, out1, 0.2, weight, reduction),
        )
        loss, all_keys = moco_loss_and_all_keys(
            out0, keys, out1, 0.2, weight, reduction, gather_distributed=True
        )
        _assert_close(loss, moco_loss(out0, keys, out1, 0.2, weight, reduction))
        assert all_keys is keys


def test_gathering_still_validates_arguments_locally():
    out0, out1 = torch.randn(3, 4), torch.randn(3, 4)
    with pytest.raises(ValueError, match="reduction"):
        nt_xent_loss(out0, out1, reduction="avg", gather_distributed=True)
    with pytest.raises(ValueError, match="weight must be >= 0"):
        nt_xent_loss(out0, out1, weight=-torch.ones(3), gather_distributed=True)
    with pytest.raises(ValueError, match="weight sums to 0"):
        nt_xent_loss(out0, out1, weight=torch.zeros(3), gather_distributed=True)
    with pytest.raises(ValueError, match="at least 2"):
        nt_xent_loss(out0[:1], out1[:1], gather_distributed=True)
    with pytest.raises(ValueError, match="NaN"):
        moco_loss(out0, out1.fill_(float("nan")), gather_distributed=True)
