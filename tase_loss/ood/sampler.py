"""Draw OOD samples toward the sparse, tail-like pseudo-classes of the ID data.

The paper's abstract says OOD samples are sampled to balance the embedding space;
the rule below is our design, in the spirit of COLT (Bai et al., ICLR 2023), which
samples OOD data close to tail ID samples. Given pseudo-labels of the ID data (from
:class:`tase_loss.PseudoLabeler`, clustering ID + OOD features together):

1. each pseudo-class ``c`` holding ``n_c > 0`` ID samples gets the centroid ``mu_c``
   of its ID features (a mean, not a new clustering);
2. each OOD sample ``j`` goes to its nearest centroid ``c(j)`` by cosine similarity
   ``s_j`` (clusters holding only OOD samples take no part);
3. it is drawn with probability::

       p_j  proportional to  (n_c(j) / N_id) ** -tail_power * exp(s_j / proximity_temperature)

So OOD points near small ID clusters are favoured (``tail_power``) and, within a
cluster, points close to it over points far away (``proximity_temperature``).
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Sampler

from tase_loss._validation import check_embeddings, check_int, check_labels, check_real
from tase_loss.pseudo_labeler import NotFittedError, PseudoLabeler

__all__ = ["TailBiasedOODSampler", "cluster_centroids"]


def cluster_centroids(features: Tensor, labels: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Unit-norm mean feature and size of every label present.

    Args:
        features: ``(N, D)`` features.
        labels: ``(N,)`` integer labels; ``-1`` (no label yet) is skipped.

    Returns:
        ``(cluster_ids, centroids, sizes)``: ``(C,)`` the labels present (sorted),
        ``(C, D)`` unit-norm centroids in float64, ``(C,)`` member counts.

    Example:
        >>> import torch
        >>> ids, centroids, sizes = cluster_centroids(
        ...     torch.tensor([[1.0, 0.0], [3.0, 0.0], [0.0, 2.0]]), torch.tensor([4, 4, 7]))
        >>> ids.tolist(), centroids.tolist(), sizes.tolist()
        ([4, 7], [[1.0, 0.0], [0.0, 1.0]], [2, 1])
    """
    labelled = labels >= 0
    cluster_ids, members, sizes = torch.unique(
        labels[labelled], sorted=True, return_inverse=True, return_counts=True
    )
    unit = F.normalize(features[labelled].double(), dim=1)
    sums = torch.zeros(cluster_ids.shape[0], features.shape[1], dtype=torch.float64)
    sums.index_add_(0, members, unit)
    return cluster_ids, F.normalize(sums, dim=1), sizes


class TailBiasedOODSampler(Sampler[int]):
    """A ``Sampler`` of OOD dataset indices, biased toward tail-like ID pseudo-classes.

    Each epoch draws ``num_samples`` indices in ``[0, N_ood)`` with the probabilities
    of the module docstring. The draw is a function of ``(seed, epoch)`` only: call
    :meth:`set_epoch` before each epoch (as with ``DistributedSampler``) to get a
    fresh draw that a resumed run reproduces.

    Args:
        id_features: ``(N_id, D)`` ID features (normalized inside).
        id_labels: ``(N_id,)`` ID pseudo-labels; ``-1`` marks samples without one.
        ood_features: ``(N_ood, D)`` OOD features.
        num_samples: indices per epoch.
        tail_power: exponent on the inverse ID cluster size, ``>= 0``.
        proximity_temperature: ``> 0``; smaller concentrates on points near centroids.
        replacement: draw with replacement; without it ``num_samples <= N_ood``.
        seed: base seed of the draws.

    Attributes:
        probabilities: ``(N_ood,)`` float64 draw probabilities.
        assignment: ``(N_ood,)`` the ID pseudo-label each OOD sample was assigned to.

    Example:
        >>> import torch
        >>> id_features = torch.tensor([[1.0, 0.0]] * 9 + [[0.0, 1.0]])
        >>> id_labels = torch.tensor([0] * 9 + [1])
        >>> ood = torch.tensor([[1.0, 0.1], [0.1, 1.0]])
        >>> sampler = TailBiasedOODSampler(id_features, id_labels, ood, num_samples=2,
        ...                                replacement=True)
        >>> sampler.assignment.tolist(), bool(sampler.probabilities[1] > 0.8)
        ([0, 1], True)
    """

    def __init__(
        self,
        id_features: Tensor,
        id_labels: Tensor,
        ood_features: Tensor,
        num_samples: int,
        *,
        tail_power: float = 1.0,
        proximity_temperature: float = 0.1,
        replacement: bool = False,
        seed: int = 0,
    ) -> None:
        check_embeddings("id_features", id_features)
        check_embeddings("ood_features", ood_features)
        if ood_features.shape[1] != id_features.shape[1]:
            raise ValueError(
                f"ood_features has {ood_features.shape[1]} columns but id_features has "
                f"{id_features.shape[1]}"
            )
        check_labels("id_labels", id_labels, id_features.shape[0], id_features.device, "id_features")
        if not bool((id_labels >= 0).any()):
            raise ValueError("id_labels holds no pseudo-label (all -1): cluster the ID data first")
        check_int("num_samples", num_samples, minimum=1)
        if not replacement and num_samples > ood_features.shape[0]:
            raise ValueError(
                f"num_samples={num_samples} exceeds the {ood_features.shape[0]} OOD samples;"
                " pass replacement=True to draw with replacement"
            )
        check_real("tail_power", tail_power, 0.0)
        check_real("proximity_temperature", proximity_temperature, 0.0, exclusive_minimum=True)
        self.num_samples = num_samples
        self.replacement = bool(replacement)
        self.seed = int(seed)
        self.epoch = 0

        cluster_ids, centroids, sizes = cluster_centroids(id_features.cpu(), id_labels.cpu())
        similarity = F.normalize(ood_features.detach().cpu().double(), dim=1) @ centroids.T
        nearest_similarity, nearest = similarity.max(dim=1)
        log_tail = -float(tail_power) * torch.log(sizes.double() / sizes.sum())
        log_score = log_tail[nearest] + nearest_similarity / float(proximity_temperature)
        self.assignment = cluster_ids[nearest]
        self.probabilities = torch.softmax(log_score, dim=0)

    @classmethod
    def from_pseudo_labeler(
        cls, pseudo_labeler: PseudoLabeler, num_id: int, num_samples: int, **options: object
    ) -> TailBiasedOODSampler:
        """Build the sampler from a labeler whose bank holds ID rows then OOD rows.

        Bank rows ``[0, num_id)`` are the ID samples and ``[num_id, N)`` the OOD
        samples; the labels are those of the labeler's last clustering. ID rows the bank
        has not stored yet (e.g. samples of dropped partial batches) have neither
        features nor a label and are left out; every OOD row must be stored.

        Args:
            pseudo_labeler: a fitted :class:`~tase_loss.PseudoLabeler`.
            num_id: ``N_id``, the number of ID rows at the start of the bank.
            num_samples: indices per epoch.
            **options: the keyword arguments of the constructor.
        """
        if not pseudo_labeler.is_fitted:
            raise NotFittedError("the pseudo-labeler has not clustered yet")
        check_int("num_id", num_id, 1, pseudo_labeler.num_samples - 1)
        seen = pseudo_labeler.bank.seen_index().cpu()
        id_rows = seen[(seen < num_id) & (pseudo_labeler.labels[seen] >= 0)]
        ood_rows = torch.arange(num_id, pseudo_labeler.num_samples)
        if int((seen >= num_id).sum()) != ood_rows.numel():
            raise ValueError("every OOD row of the bank must be stored before building the sampler")
        if id_rows.numel() == 0:
            raise ValueError("the bank holds no clustered ID row")
        return cls(
            pseudo_labeler.bank.rows(id_rows),
            pseudo_labeler.labels[id_rows],
            pseudo_labeler.bank.rows(ood_rows),
            num_samples,
            **options,  # type: ignore[arg-type]
        )

    def set_epoch(self, epoch: int) -> None:
        """Select the draw of ``epoch``."""
        self.epoch = int(epoch)

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        drawn = torch.multinomial(
            self.probabilities, self.num_samples, self.replacement, generator=generator
        )
        return iter(drawn.tolist())

    def __len__(self) -> int:
        return self.num_samples

    def state_dict(self) -> dict[str, int]:
        """The epoch counter; the probabilities are rebuilt from the labeler."""
        return {"epoch": self.epoch}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.set_epoch(state["epoch"])
