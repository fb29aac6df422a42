"""SimCLR: contrastive learning with the NT-Xent (InfoNCE) loss (Chen et al., ICML 2020): the contrastive baseline."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from jepa_platform.distributed import local_slice
from jepa_platform.losses.functional import LossOutput, info_nce
from jepa_platform.objectives.base import JointEmbeddingObjective
from jepa_platform.optim import OptimizerFactory
from jepa_platform.registry import register_objective


@register_objective("simclr")
class SimCLR(JointEmbeddingObjective):
    """SimCLR, the contrastive baseline: NT-Xent with every other embedding of the global batch as a negative.

    Each view's positive is the other view of the same image (``temperature`` scales the cosine similarities).
    This rank's samples are the anchors and the gathered batch supplies the candidates, so the logits are 2n x 2N
    rather than 2N x 2N on every rank. ``train/energy`` is the cosine distance 1 - cos(z1, z2) of
    positive pairs: the energy the loss lowers for observed pairs while raising it for negatives. ``emb/*``
    describe the L2-normalised embeddings, which are what the loss compares.
    """

    def __init__(
        self,
        encoder: nn.Module,
        optimizer: OptimizerFactory,
        projector_dims: Sequence[int],
        temperature: float,
        **kwargs,
    ) -> None:
        super().__init__(encoder, optimizer, projector_dims, **kwargs)
        self.temperature = temperature

    def compute_loss(self, embeddings: list[Tensor], representations: list[Tensor]) -> LossOutput:
        z1, z2 = embeddings
        anchors = local_slice(z1.shape[0])
        loss = info_nce(self.gather(z1), self.gather(z2), self.temperature, anchors=anchors)
        return LossOutput(loss, {"info_nce": loss})

    def energy(self, loss: LossOutput, embeddings: list[Tensor]) -> Tensor:
        with torch.no_grad():
            return (1 - F.cosine_similarity(embeddings[0], embeddings[1], dim=-1)).mean()

    def pair_energy(self, z1: Tensor, z2: Tensor) -> Tensor:
        """Cosine distance per positive pair (``z1``, ``z2`` are already normalised): ``train/energy`` is its mean."""
        return 1 - (z1 * z2).float().sum(dim=-1)

    def loss_space(self, z: Tensor) -> Tensor:
        return F.normalize(z, dim=-1)
