"""The two-stage OOD recipe as per-batch and per-epoch hooks, plus a plain loop.

Stage 1 (epochs ``[0, stage1_epochs)``), on ID batches plus OOD samples:
``pseudo_semantic_loss`` over ID + OOD views (pseudo-labels, per-anchor temperatures
and weights from one :class:`~tase_loss.PseudoLabeler` clustering ID and OOD
features together) plus ``domain_weight`` times the domain discrimination loss. OOD
samples are drawn uniformly until the first clustering, then by
:class:`TailBiasedOODSampler`. Before the first clustering every sample is its own
pseudo-class, so the contrastive term is NT-Xent.

Stage 2 (the next ``stage2_epochs``), on ID batches only: a frozen copy of the
stage-1 network is the guide; the network keeps training from the stage-1 weights
with ``guided_contrastive_loss`` plus ``distillation_weight`` times
``similarity_distillation_loss``. Per-anchor temperatures and weights keep coming
from the stage-1 pseudo-labels of the ID samples.

The abstract of arXiv 2506.12698 fixes the two stages and the names of the losses;
the schedule and every formula here are our design (``docs/ood.md``).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, Optional

import torch
from torch import Tensor, nn

from tase_loss._validation import TemperatureLike, check_int, check_real, renamed_keywords
from tase_loss.estimators import ClusterSizeEstimator
from tase_loss.guidance import Guidance
from tase_loss.ood.domain import DomainHead, domain_discrimination_loss
from tase_loss.ood.guided import guided_contrastive_loss, similarity_distillation_loss
from tase_loss.ood.multi_positive import pseudo_semantic_loss
from tase_loss.ood.sampler import TailBiasedOODSampler
from tase_loss.pseudo_labeler import PseudoLabeler
from tase_loss.reweighting import SampleReweighter, TemperatureMap

__all__ = ["TwoStageConfig", "TwoStageOOD", "train_two_stage"]

Augment = Callable[[Tensor], Tensor]


@dataclass(frozen=True)
class TwoStageConfig:
    """Settings of the two-stage recipe (defaults sized for the digits default).

    Attributes:
        stage1_epochs: epochs of stage 1 (ID + OOD).
        stage2_epochs: epochs of stage 2 (ID only, guided).
        ood_batch_size: OOD samples added to every stage-1 batch.
        num_clusters: ``k`` of the joint ID + OOD k-means.
        warmup_epochs: stage-1 epochs before the first clustering (``>= 1``; the first
            clustering ends epoch ``warmup_epochs - 1``).
        temperature: base temperature ``t`` of every contrastive term.
        instance_mass: target share of the other view in the pseudo semantic loss.
        gamma: exponent of the :class:`~tase_loss.TemperatureMap`.
        alpha: exponent of the :class:`~tase_loss.SampleReweighter`.
        domain_weight: factor of the domain discrimination loss.
        domain_learning_rate: Adam learning rate of the domain head.
        tail_power: the sampler's exponent on inverse ID cluster size.
        proximity_temperature: the sampler's proximity temperature.
        num_neighbors: guide neighbours per anchor in stage 2.
        neighbor_mass: target mass on those neighbours.
        neighbor_temperature: sharpness of the split among neighbours.
        repulsion_power: how much less guide-close negatives are pushed.
        guide_temperature: temperature of the guide's distribution in distillation.
        distillation_weight: factor of the distillation loss.
        seed: seed of the OOD draws, the clustering and the domain head.
    """

    stage1_epochs: int = 15
    stage2_epochs: int = 15
    ood_batch_size: int = 64
    num_clusters: int = 20
    warmup_epochs: int = 3
    temperature: float = 0.2
    instance_mass: float = 0.5
    gamma: float = 0.25
    alpha: float = 0.5
    domain_weight: float = 0.1
    domain_learning_rate: float = 1e-3
    tail_power: float = 1.0
    proximity_temperature: float = 0.1
    num_neighbors: int = 4
    neighbor_mass: float = 0.5
    neighbor_temperature: float = 0.1
    repulsion_power: float = 1.0
    guide_temperature: float = 0.2
    distillation_weight: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        counts = {
            "stage1_epochs": (self.stage1_epochs, 1),
            "stage2_epochs": (self.stage2_epochs, 0),
            "ood_batch_size": (self.ood_batch_size, 1),
            "num_clusters": (self.num_clusters, 1),
            "warmup_epochs": (self.warmup_epochs, 1),
            "num_neighbors": (self.num_neighbors, 0),
        }
        for name, (value, minimum) in counts.items():
            check_int(name, value, minimum=minimum)
        if self.warmup_epochs > self.stage1_epochs:
            raise ValueError(
                f"warmup_epochs ({self.warmup_epochs}) must not exceed stage1_epochs "
                f"({self.stage1_epochs}): stage 1 needs at least one clustering"
            )
        for name in ("domain_weight", "distillation_weight", "tail_power", "repulsion_power"):
            check_real(name, getattr(self, name), 0.0)


class TwoStageOOD:
    """State and hooks of the recipe, for any training loop (the runner's included).

    Call :meth:`training_step` once per ID batch and :meth:`on_epoch_end` after each
    epoch; the stage follows the epoch counter. The domain head has its own Adam
    optimizer here, so the loop's optimizer only needs the network's parameters.

    Args:
        ood_data: ``(N_ood, ...)`` OOD inputs, same layout as the ID inputs.
        num_id: ``N_id``; ID dataset indices lie in ``[0, N_id)``.
        feature_dim: ``D``, the size of the network's output.
        augment: maps a batch of inputs to one random view (used on OOD inputs;
            the loop augments the ID inputs itself).
        config: the recipe's settings.

    Example:
        >>> import torch
        >>> ood = torch.randn(40, 6)
        >>> method = TwoStageOOD(ood, num_id=30, feature_dim=4,
        ...                      augment=lambda x: x + 0.1 * torch.randn_like(x),
        ...                      config=TwoStageConfig(stage1_epochs=2, stage2_epochs=1,
        ...                                            warmup_epochs=1, num_clusters=3,
        ...                                            ood_batch_size=8))
        >>> model = torch.nn.Linear(6, 4)
        >>> optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        >>> id_data = torch.randn(30, 6)
        >>> for epoch in range(3):
        ...     for index in torch.arange(30).split(10):
        ...         views = id_data[index] + 0.1 * torch.randn(len(index), 6)
        ...         loss = method.training_step((index, views, views.flip(1)), model, optimizer)
        ...     method.on_epoch_end(epoch)
        >>> method.stage, method.guide is not None
        (2, True)
    """

    @renamed_keywords({"embedding_dim": "feature_dim"})
    def __init__(
        self,
        ood_data: Tensor,
        num_id: int,
        feature_dim: int,
        augment: Augment,
        config: Optional[TwoStageConfig] = None,
    ) -> None:
        config = TwoStageConfig() if config is None else config
        if not isinstance(ood_data, Tensor) or ood_data.dim() < 2 or ood_data.shape[0] < 1:
            raise ValueError("ood_data must be a tensor of shape (N_ood, ...) with N_ood >= 1")
        check_int("num_id", num_id, minimum=2)
        if not callable(augment):
            raise TypeError(f"augment must be callable, got {type(augment).__name__}")
        self.config = config
        self.ood_data = ood_data
        self.num_id = num_id
        self.num_ood = ood_data.shape[0]
        self.augment = augment
        self.pseudo_labeler = PseudoLabeler(
            num_id + self.num_ood,
            feature_dim,
            ClusterSizeEstimator(config.num_clusters),
            warmup_epochs=config.warmup_epochs,
            seed=config.seed,
        )
        self.guidance = Guidance(
            self.pseudo_labeler,
            TemperatureMap(base_temperature=config.temperature, gamma=config.gamma),
            SampleReweighter(alpha=config.alpha),
        )
        generator_state = torch.random.get_rng_state()
        torch.manual_seed(config.seed)
        self.domain_head = DomainHead(feature_dim)
        torch.random.set_rng_state(generator_state)
        self.domain_optimizer = torch.optim.Adam(
            self.domain_head.parameters(), lr=config.domain_learning_rate
        )
        self.ood_sampler: Optional[TailBiasedOODSampler] = None
        self.guide: Optional[nn.Module] = None
        self.epoch = 0
        self.num_ood_draws = 0
        self._ood_queue: list[int] = []
        self._model: Optional[nn.Module] = None

    @property
    def stage(self) -> int:
        """1 during the first ``stage1_epochs`` epochs, 2 afterwards."""
        return 1 if self.epoch < self.config.stage1_epochs else 2

    def training_step(
        self,
        batch: tuple[Tensor, Tensor, Tensor],
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
    ) -> Tensor:
        """One optimization step on an ID batch; returns the detached 0-dim loss.

        Args:
            batch: ``(index, view0, view1)``: ``(B,)`` ID dataset indices and two
                augmented views ``(B, ...)`` of those samples.
            model: the network, inputs -> ``(B, D)`` embeddings.
            optimizer: the network's optimizer.
        """
        index, view0, view1 = batch
        self._model = model
        self.domain_head.to(view0.device)
        if self.stage == 1:
            loss = self.stage1_loss(model, index, view0, view1)
        else:
            loss = self.stage2_loss(model, index, view0, view1)
        optimizer.zero_grad(set_to_none=True)
        self.domain_optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if self.stage == 1:
            self.domain_optimizer.step()
        return loss.detach()

    def stage1_loss(self, model: nn.Module, index: Tensor, view0: Tensor, view1: Tensor) -> Tensor:
        """Pseudo semantic discrimination over ID + OOD views plus domain discrimination."""
        device = view0.device
        ood_index = self._next_ood_index(self.config.ood_batch_size)
        ood_inputs = self.ood_data[ood_index].to(device)
        embeddings0 = model(torch.cat([view0, self.augment(ood_inputs)]))
        embeddings1 = model(torch.cat([view1, self.augment(ood_inputs)]))
        bank_index = torch.cat([index.cpu().long(), self.num_id + ood_index])
        self.pseudo_labeler.update(bank_index, embeddings0.detach())
        labels, temperature, weight = self._guidance(bank_index, device)
        contrastive = pseudo_semantic_loss(
            embeddings0, embeddings1, labels, temperature, weight,
            instance_mass=self.config.instance_mass,
        )
        is_ood = (bank_index >= self.num_id).to(device).repeat(2)
        domain_logits = self.domain_head(torch.cat([embeddings0, embeddings1]))
        domain = domain_discrimination_loss(domain_logits, is_ood)
        return contrastive + self.config.domain_weight * domain.to(contrastive.dtype)

    def stage2_loss(self, model: nn.Module, index: Tensor, view0: Tensor, view1: Tensor) -> Tensor:
        """Guided contrastive loss plus similarity distillation from the frozen guide."""
        if self.guide is None:
            raise RuntimeError("stage 2 needs the guide, made by on_epoch_end() after stage 1")
        with torch.no_grad():
            guide0, guide1 = self.guide(view0), self.guide(view1)
        embeddings0, embeddings1 = model(view0), model(view1)
        _, temperature, weight = self._guidance(index.cpu().long(), view0.device)
        config = self.config
        guided = guided_contrastive_loss(
            embeddings0,
            embeddings1,
            guide0,
            guide1,
            num_neighbors=min(config.num_neighbors, 2 * index.shape[0] - 2),
            neighbor_mass=config.neighbor_mass,
            neighbor_temperature=config.neighbor_temperature,
            repulsion_power=config.repulsion_power,
            temperature=temperature,
            weight=weight,
        )
        distillation = similarity_distillation_loss(
            embeddings0,
            embeddings1,
            guide0,
            guide1,
            guide_temperature=config.guide_temperature,
            temperature=config.temperature,
            weight=weight,
        )
        return guided + config.distillation_weight * distillation

    def _tail_biased_sampler(self) -> TailBiasedOODSampler:
        """The OOD sampler for the labeler's current clustering of ID + OOD features."""
        return TailBiasedOODSampler.from_pseudo_labeler(
            self.pseudo_labeler,
            self.num_id,
            num_samples=self.num_ood,
            tail_power=self.config.tail_power,
            proximity_temperature=self.config.proximity_temperature,
            replacement=True,
            seed=self.config.seed,
        )

    def on_epoch_end(self, epoch: int) -> None:
        """Refresh OOD features, re-cluster on schedule, start stage 2 when due.

        Args:
            epoch: the 0-based epoch that just ended.
        """
        if self._model is None:
            raise RuntimeError("on_epoch_end() was called before any training_step()")
        if self.stage == 1:
            self._refresh_ood_features(self._model)
            if self.pseudo_labeler.end_epoch(epoch):
                self.ood_sampler = self._tail_biased_sampler()
                self._ood_queue = []
            if epoch + 1 == self.config.stage1_epochs:
                self.guide = copy.deepcopy(self._model).eval().requires_grad_(False)
        self.epoch = epoch + 1

    def _guidance(
        self, bank_index: Tensor, device: torch.device
    ) -> tuple[Tensor, TemperatureLike, Optional[Tensor]]:
        """Pseudo-labels, temperatures and weights; distinct labels before clustering."""
        if not self.pseudo_labeler.is_fitted:
            return bank_index.to(device), self.config.temperature, None
        temperature, weight = self.guidance.lookup(bank_index, device)
        return self.pseudo_labeler.labels[bank_index].to(device), temperature, weight

    def _next_ood_index(self, count: int) -> Tensor:
        """The next ``count`` OOD indices: uniform draws, then the sampler's."""
        while len(self._ood_queue) < count:
            draw = self.num_ood_draws
            self.num_ood_draws += 1
            if self.ood_sampler is None:
                generator = torch.Generator().manual_seed(self.config.seed + draw)
                self._ood_queue += torch.randint(
                    self.num_ood, (self.num_ood,), generator=generator
                ).tolist()
            else:
                self.ood_sampler.set_epoch(draw)
                self._ood_queue += list(self.ood_sampler)
        drawn, self._ood_queue = self._ood_queue[:count], self._ood_queue[count:]
        return torch.tensor(drawn, dtype=torch.int64)

    @torch.no_grad()
    def _refresh_ood_features(self, model: nn.Module, chunk: int = 512) -> None:
        """Embed every clean OOD input so the sampler can score all of them."""
        was_training = model.training
        model.eval()
        device = next(model.parameters()).device
        try:
            for start in range(0, self.num_ood, chunk):
                index = torch.arange(start, min(start + chunk, self.num_ood))
                features = model(self.ood_data[index].to(device))
                self.pseudo_labeler.update(self.num_id + index, features)
        finally:
            model.train(was_training)

    def state_dict(self) -> dict[str, Any]:
        """Everything besides the network and its optimizer that a resumed run needs."""
        # Copies, not references: later steps update the head and Adam's moments in place.
        return copy.deepcopy(
            {
                "config": asdict(self.config),
                "epoch": self.epoch,
                "num_ood_draws": self.num_ood_draws,
                "ood_queue": self._ood_queue,
                "pseudo_labeler": self.pseudo_labeler.state_dict(),
                "domain_head": self.domain_head.state_dict(),
                "domain_optimizer": self.domain_optimizer.state_dict(),
                "guide": None if self.guide is None else self.guide.state_dict(),
            }
        )

    def load_state_dict(self, state: dict[str, Any], model: nn.Module) -> None:
        """Restore :meth:`state_dict`'s output; ``model`` gives the guide's architecture."""
        if state["config"] != asdict(self.config):
            raise ValueError("state_dict was saved with a different TwoStageConfig")
        self.pseudo_labeler.load_state_dict(state["pseudo_labeler"])
        self.domain_head.load_state_dict(state["domain_head"])
        self.domain_optimizer.load_state_dict(state["domain_optimizer"])
        self.epoch = int(state["epoch"])
        self.num_ood_draws = int(state["num_ood_draws"])
        self._ood_queue = list(state["ood_queue"])
        self._model = model
        self.ood_sampler = None
        if self.pseudo_labeler.is_fitted:
            self.ood_sampler = self._tail_biased_sampler()
        self.guide = None
        if state["guide"] is not None:
            self.guide = copy.deepcopy(model).eval().requires_grad_(False)
            self.guide.load_state_dict(state["guide"])


@renamed_keywords({"embedding_dim": "feature_dim"})
def train_two_stage(
    model: nn.Module,
    id_data: Tensor,
    ood_data: Tensor,
    augment: Augment,
    feature_dim: int,
    *,
    config: Optional[TwoStageConfig] = None,
    batch_size: int = 128,
    learning_rate: float = 0.05,
    seed: int = 0,
) -> tuple[nn.Module, list[dict[str, float]]]:
    """Train ``model`` with the two-stage recipe in a plain loop (SGD, momentum 0.9).

    Args:
        model: the network, inputs -> ``(B, D)`` embeddings; trained in place.
        id_data: ``(N_id, ...)`` unlabeled ID inputs.
        ood_data: ``(N_ood, ...)`` unlabeled OOD inputs.
        augment: a batch of inputs -> one random view.
        feature_dim: ``D``.
        config: the recipe's settings.
        batch_size: ID samples per batch (the last, short batch is dropped).
        learning_rate: SGD learning rate of the network.
        seed: seed of the batch order and of the augmentations (global RNG).

    Returns:
        ``(model, history)``: the trained network (stage-2 student) and one
        ``{"epoch", "stage", "loss"}`` record per epoch.
    """
    config = TwoStageConfig() if config is None else config
    check_int("batch_size", batch_size, minimum=2)
    if id_data.shape[0] < batch_size:
        raise ValueError(
            f"id_data holds {id_data.shape[0]} samples, fewer than batch_size={batch_size}"
        )
    torch.manual_seed(seed)
    method = TwoStageOOD(ood_data, id_data.shape[0], feature_dim, augment, config)
    optimizer = torch.optim.SGD(model.parameters(), lr=learning_rate, momentum=0.9)
    order_generator = torch.Generator().manual_seed(seed)
    history = []
    device = next(model.parameters()).device
    for epoch in range(config.stage1_epochs + config.stage2_epochs):
        stage = method.stage
        losses = []
        order = torch.randperm(id_data.shape[0], generator=order_generator)
        for index in order.split(batch_size):
            if index.shape[0] < batch_size:
                continue
            inputs = id_data[index].to(device)
            batch = (index.to(device), augment(inputs), augment(inputs))
            losses.append(method.training_step(batch, model, optimizer))
        method.on_epoch_end(epoch)
        history.append({"epoch": epoch, "stage": stage, "loss": float(torch.stack(losses).mean())})
    return model, history
