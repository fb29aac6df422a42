"""Barlow Twins: self-supervised learning via redundancy reduction (Zbontar et al., ICML 2021)."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from jepa_platform.losses.functional import LossOutput, barlow_twins, standardise
from jepa_platform.objectives.base import JointEmbeddingObjective
from jepa_platform.optim import OptimizerFactory
from jepa_platform.registry import register_objective


@register_objective("barlow")
class BarlowTwins(JointEmbeddingObjective):
    """Barlow Twins: the cross-correlation of two views' standardised embeddings driven to the identity.

    Terms: ``invariance`` (sum of (1 - c_ii)^2) and ``redundancy`` (sum of squared off-diagonal c_ij), weighted by
    ``lambda_offdiag``. ``train/energy`` is the invariance term. The cross-correlation is computed on the global
    batch: standardising per rank would change the loss with the number of GPUs. ``emb/*`` describe the
    standardised embeddings, which are what the loss correlates.
    """

    energy_term = "invariance"

    def __init__(
        self,
        encoder: nn.Module,
        optimizer: OptimizerFactory,
        projector_dims: Sequence[int],
        lambda_offdiag: float,
        **kwargs,
    ) -> None:
        super().__init__(encoder, optimizer, projector_dims, **kwargs)
        self.lambda_offdiag = lambda_offdiag

    def compute_loss(self, embeddings: list[Tensor], representations: list[Tensor]) -> LossOutput:
        z1, z2 = embeddings
        return barlow_twins(self.gather(z1), self.gather(z2), self.lambda_offdiag)

    def loss_space(self, z: Tensor) -> Tensor:
        return standardise(z)
