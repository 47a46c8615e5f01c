"""What each process of the distributed tests runs, and the data both sides share.

The parent test spawns ``W`` gloo processes on 127.0.0.1; each takes its own slice of
the global batches (different sizes per rank, different data, weights and
temperatures), trains through DDP with ``gather_distributed=True`` and saves what it
observed. The parent replays the concatenated batches in one process and compares.
Spawned children import this module by name, so it lives beside the tests (not in a
``test_`` file) and holds no pytest code.
"""

from __future__ import annotations

import datetime
import os
from pathlib import Path
from typing import Optional

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from tase_loss import (
    ClusterSizeEstimator,
    Guidance,
    KNNDensityEstimator,
    PseudoLabeler,
    SampleReweighter,
    StableCountEstimator,
    TASEContrastiveLoss,
    TASECosineLoss,
    TemperatureMap,
)
from tase_loss.distributed import all_gather_rows
from tase_loss.functional import moco_loss

F64 = torch.float64
INPUT_DIM, EMBEDDING_DIM = 6, 5
QUEUE_SIZE = 14
LABELER_SAMPLES, LABELER_DIM, LABELER_CLUSTERS = 48, 4, (3, 5)

# Rows per rank, one list per step; the later steps are uneven (one rank holds 1 sample).
STEP_SIZES = {
    2: [[4, 4], [5, 3], [1, 2]],
    3: [[4, 4, 4], [5, 3, 4], [1, 2, 1]],
}
# The labeler's epoch: every sample once, in uneven per-rank batches.
LABELER_STEP_SIZES = {
    2: [[10, 10], [8, 6], [9, 5]],
    3: [[6, 6, 6], [5, 7, 6], [4, 5, 3]],
}
LABELER_EPOCHS = 2
# reduction, whether temperatures/weights are per-sample tensors requiring grad.
SIMCLR_VARIANTS = [("mean", True), ("mean", False), ("sum", True)]


def rank_rows(sizes: list[int], rank: int) -> slice:
    start = sum(sizes[:rank])
    return slice(start, start + sizes[rank])


def step_data(step: int, total: int, zero_weight_rows: slice = slice(0, 0)) -> dict[str, Tensor]:
    """The global batch of one step; every process computes the same tensors."""
    generator = torch.Generator().manual_seed(100 + step)
    data = {
        "view0": torch.randn(total, INPUT_DIM, dtype=F64, generator=generator),
        "view1": torch.randn(total, INPUT_DIM, dtype=F64, generator=generator),
        "key_input": torch.randn(total, INPUT_DIM, dtype=F64, generator=generator),
        "temperature": 0.1 + 0.5 * torch.rand(total, dtype=F64, generator=generator),
        "weight": 0.2 + 2.0 * torch.rand(total, dtype=F64, generator=generator),
        "keys": torch.randn(total, EMBEDDING_DIM, dtype=F64, generator=generator),
    }
    data["weight"][zero_weight_rows] = 0.0
    return data


def zero_weight_rows(step: int, sizes: list[int]) -> slice:
    """Step 0 gives rank 1 all-zero weights: only the global weight sum must be positive."""
    return rank_rows(sizes, 1) if step == 0 else slice(0, 0)


def make_encoder(seed: int) -> nn.Linear:
    torch.manual_seed(seed)
    return nn.Linear(INPUT_DIM, EMBEDDING_DIM, dtype=F64)


def shared_queue() -> Tensor:
    """A queue of earlier keys every rank holds alike (for the functional MoCo check)."""
    return torch.randn(7, EMBEDDING_DIM, dtype=F64, generator=torch.Generator().manual_seed(7))


def labeler_batches(epoch: int, world_size: int) -> list[tuple[Tensor, Tensor]]:
    """``(index, features)`` of one epoch's global batches: a long-tailed blob mixture."""
    generator = torch.Generator().manual_seed(200 + epoch)
    centers = 3.0 * torch.randn(4, LABELER_DIM, generator=generator)
    blob = torch.tensor([0] * 30 + [1] * 10 + [2] * 6 + [3] * 2)
    features = centers[blob] + 0.5 * torch.randn(LABELER_SAMPLES, LABELER_DIM, generator=generator)
    order = torch.randperm(LABELER_SAMPLES, generator=generator)
    batches, start = [], 0
    for sizes in LABELER_STEP_SIZES[world_size]:
        index = order[start : start + sum(sizes)]
        batches.append((index, features[index]))
        start += sum(sizes)
    return batches


LABELER_ESTIMATORS = {
    "cluster-size": lambda: ClusterSizeEstimator(LABELER_CLUSTERS),
    "knn-density": lambda: KNNDensityEstimator(num_neighbors=5, graph_neighbors=8),
    "stable-count": lambda: StableCountEstimator(
        LABELER_CLUSTERS[0], density=KNNDensityEstimator(num_neighbors=5, graph_neighbors=8)
    ),
}


def make_labeler(world_size: int, gather_distributed: bool, estimator: str) -> PseudoLabeler:
    return PseudoLabeler(
        LABELER_SAMPLES,
        LABELER_DIM,
        LABELER_ESTIMATORS[estimator](),
        warmup_epochs=1,
        momentum=0.5,
        num_threads=1,
        bank_dtype=torch.float16 if world_size == 3 else torch.float32,
        gather_distributed=gather_distributed,
    )


def labeler_state(labeler: PseudoLabeler) -> dict[str, object]:
    reference = labeler.frequency_reference()
    return {
        "labels": labeler.labels.clone(),
        "log_frequency": labeler.log_frequency.clone(),
        "has_estimate": labeler.has_estimate.clone(),
        "frequency": labeler.frequency(torch.arange(LABELER_SAMPLES)),
        "reference": (reference.log_mean, reference.log_min, reference.log_max),
        "bank": labeler.bank.features.clone(),
        "seen": labeler.bank.seen.clone(),
        "num_estimates": labeler.num_estimates,
        "tables": torch.stack(Guidance(labeler, TemperatureMap(0.2), SampleReweighter()).tables(torch.device("cpu"))),
    }


def per_sample_inputs(
    data: dict[str, Tensor], rows: slice, per_sample: bool
) -> tuple[Optional[Tensor], Optional[Tensor]]:
    """This rank's temperatures and weights as leaves requiring grad, or ``(None, None)``."""
    if not per_sample:
        return None, None
    temperature = data["temperature"][rows].clone().requires_grad_()
    weight = data["weight"][rows].clone().requires_grad_()
    return temperature, weight


def grad_of(tensor: object) -> object:
    return tensor.grad.clone() if isinstance(tensor, Tensor) else None


def parameter_grads(model: nn.Module) -> list[Tensor]:
    return [parameter.grad.clone() for parameter in model.parameters()]


def unreduced_rows(
    out0: Tensor, out1: Tensor, temperature: object, weight: object, gather_distributed: bool
) -> Tensor:
    """``reduction="none"``: this rank's ``2B_r`` rows ``w_a l_a`` (negatives from all ranks)."""
    criterion = TASEContrastiveLoss(reduction="none", gather_distributed=gather_distributed)
    temperature, weight = (
        value.detach() if isinstance(value, Tensor) else value for value in (temperature, weight)
    )
    return criterion(out0.detach(), out1.detach(), temperature=temperature, weight=weight)


def _simclr(rank: int, world_size: int) -> list[dict[str, object]]:
    model = DistributedDataParallel(make_encoder(seed=0))
    records = []
    for reduction, per_sample in SIMCLR_VARIANTS:
        criterion = TASEContrastiveLoss(reduction=reduction, gather_distributed=True)
        for step, sizes in enumerate(STEP_SIZES[world_size]):
            data = step_data(step, sum(sizes), zero_weight_rows(step, sizes))
            rows = rank_rows(sizes, rank)
            temperature, weight = per_sample_inputs(data, rows, per_sample)
            model.zero_grad()
            # One forward per backward: DDP expects them paired.
            embeddings = model(torch.cat([data["view0"][rows], data["view1"][rows]]))
            out0, out1 = embeddings.split(sizes[rank])
            out0.retain_grad()
            out1.retain_grad()
            loss = criterion(out0, out1, temperature=temperature, weight=weight)
            loss.backward()
            records.append(
                {
                    "loss": loss.detach(),
                    "rows": unreduced_rows(out0, out1, temperature, weight, True),
                    "parameters": parameter_grads(model),
                    "out0": out0.grad.clone(),
                    "out1": out1.grad.clone(),
                    "temperature": grad_of(temperature),
                    "weight": grad_of(weight),
                }
            )
    return records


def _moco(rank: int, world_size: int) -> dict[str, object]:
    model = DistributedDataParallel(make_encoder(seed=0))
    momentum_encoder = make_encoder(seed=1)
    criterion = TASEContrastiveLoss(
        queue_size=QUEUE_SIZE, feature_dim=EMBEDDING_DIM, gather_distributed=True
    ).double()
    steps = []
    for step, sizes in enumerate(STEP_SIZES[world_size]):
        data = step_data(step, sum(sizes), zero_weight_rows(step, sizes))
        rows = rank_rows(sizes, rank)
        temperature, weight = per_sample_inputs(data, rows, True)
        model.zero_grad()
        queries = model(data["view0"][rows])
        queries.retain_grad()
        with torch.no_grad():
            keys = momentum_encoder(data["key_input"][rows])
        loss = criterion(queries, keys, temperature=temperature, weight=weight)
        loss.backward()
        steps.append(
            {
                "loss": loss.detach(),
                "parameters": parameter_grads(model),
                "queries": queries.grad.clone(),
                "temperature": grad_of(temperature),
                "weight": grad_of(weight),
            }
        )
    return {"steps": steps, "buffers": {k: v.clone() for k, v in criterion.state_dict().items()}}


def cosine_steps(
    rank: Optional[int], world_size: int, gather_distributed: bool
) -> list[dict[str, object]]:
    """Weighted BYOL through a DDP (or, with ``rank=None``, a plain) encoder."""
    encoder = make_encoder(seed=0)
    model = DistributedDataParallel(encoder) if gather_distributed else encoder
    target_encoder = make_encoder(seed=1)
    criterion = TASECosineLoss("byol", gather_distributed=gather_distributed)
    steps = []
    for step, sizes in enumerate(STEP_SIZES[world_size]):
        data = step_data(step, sum(sizes), zero_weight_rows(step, sizes))
        rows = slice(None) if rank is None else rank_rows(sizes, rank)
        _, weight = per_sample_inputs(data, rows, True)
        model.zero_grad()
        prediction = model(data["view0"][rows])
        prediction.retain_grad()
        with torch.no_grad():
            target = target_encoder(data["view1"][rows])
        loss = criterion(prediction, target, weight=weight)
        loss.backward()
        steps.append(
            {
                "loss": loss.detach(),
                "parameters": parameter_grads(model),
                "prediction": prediction.grad.clone(),
                "weight": weight.grad.clone(),
            }
        )
    return steps


def _moco_functional_with_key_grads(rank: int, world_size: int) -> dict[str, object]:
    """Keys that require grad (no momentum encoder): their gradient crosses ranks too."""
    sizes = STEP_SIZES[world_size][1]
    data = step_data(1, sum(sizes))
    rows = rank_rows(sizes, rank)
    queries = data["view0"][rows, :EMBEDDING_DIM].clone().requires_grad_()
    keys = data["keys"][rows].clone().requires_grad_()
    temperature, weight = per_sample_inputs(data, rows, True)
    loss = moco_loss(queries, keys, shared_queue(), temperature, weight, gather_distributed=True)
    loss.backward()
    return {
        "loss": loss.detach(),
        "queries": queries.grad.clone(),
        "keys": keys.grad.clone(),
        "temperature": temperature.grad.clone(),
        "weight": weight.grad.clone(),
    }


def _labeler(rank: int, world_size: int, estimator: str) -> list[dict[str, object]]:
    labeler = make_labeler(world_size, gather_distributed=True, estimator=estimator)
    states = []
    for epoch in range(LABELER_EPOCHS):
        for (index, features), sizes in zip(
            labeler_batches(epoch, world_size), LABELER_STEP_SIZES[world_size]
        ):
            rows = rank_rows(sizes, rank)
            labeler.update(index[rows], features[rows])
        assert labeler.end_epoch(epoch)
        states.append(labeler_state(labeler))
    return states


def _feature_size_mismatch_raises_everywhere(rank: int) -> str:
    """Ranks disagreeing on the feature size all raise (nobody waits in a collective)."""
    try:
        all_gather_rows(torch.zeros(2, 3 + rank))
    except ValueError as error:
        return str(error)
    return ""


def run_worker(rank: int, world_size: int, port: int, output_dir: str) -> None:
    """Entry point of one spawned process: run every case, save what this rank saw."""
    torch.set_num_threads(1)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    dist.init_process_group(
        "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=world_size,
        timeout=datetime.timedelta(seconds=120),
    )
    try:
        results = {
            "simclr": _simclr(rank, world_size),
            "moco": _moco(rank, world_size),
            "moco_functional": _moco_functional_with_key_grads(rank, world_size),
            "cosine": cosine_steps(rank, world_size, gather_distributed=True),
            "labeler": {name: _labeler(rank, world_size, name) for name in LABELER_ESTIMATORS},
            "mismatch": _feature_size_mismatch_raises_everywhere(rank),
        }
        torch.save(results, Path(output_dir) / f"rank{rank}.pt")
        dist.barrier()  # leave together (see examples/ddp_simclr.py)
    finally:
        dist.destroy_process_group()
