"""Guided contrastive learning with out-of-distribution data (issue 8, ``docs/ood.md``).

Our design of the parts named in the abstract of "Unsupervised Contrastive Learning
Using Out-Of-Distribution Data for Long-Tailed Dataset" (arXiv 2506.12698), built
from the library's own pieces: stage 1 trains on ID + sampled OOD data with a pseudo
semantic discrimination loss and a domain discrimination loss; stage 2 trains on ID
data with a guided contrastive loss and a distillation loss from the frozen stage-1
network.
"""

from tase_loss.ood.domain import DomainHead, domain_discrimination_loss
from tase_loss.ood.guided import guided_contrastive_loss, similarity_distillation_loss
from tase_loss.ood.multi_positive import pseudo_semantic_loss
from tase_loss.ood.recipe import TwoStageConfig, TwoStageOOD, train_two_stage
from tase_loss.ood.sampler import TailBiasedOODSampler
from tase_loss.ood.sources import sample_image_patches

__all__ = [
    "DomainHead",
    "TailBiasedOODSampler",
    "TwoStageConfig",
    "TwoStageOOD",
    "domain_discrimination_loss",
    "guided_contrastive_loss",
    "pseudo_semantic_loss",
    "sample_image_patches",
    "similarity_distillation_loss",
    "train_two_stage",
]
