"""VICReg: Variance-Invariance-Covariance Regularization (Bardes, Ponce, LeCun, ICLR 2022)."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from jepa_platform.losses.functional import LossOutput, vicreg
from jepa_platform.objectives.base import JointEmbeddingObjective
from jepa_platform.optim import OptimizerFactory
from jepa_platform.registry import register_objective


@register_objective("vicreg")
class VICReg(JointEmbeddingObjective):
    """VICReg: invariance between two views, variance kept above a floor and covariance driven to zero per branch.

    ``train/energy`` is the invariance term: the mean squared distance between the two views' embeddings. The three
    terms see the global batch (variance and covariance need it, as in the official code).
    """

    energy_term = "invariance"

    def __init__(
        self,
        encoder: nn.Module,
        optimizer: OptimizerFactory,
        projector_dims: Sequence[int],
        sim_weight: float,
        var_weight: float,
        cov_weight: float,
        **kwargs,
    ) -> None:
        super().__init__(encoder, optimizer, projector_dims, **kwargs)
        self.weights = {"sim_weight": sim_weight, "var_weight": var_weight, "cov_weight": cov_weight}

    def compute_loss(self, embeddings: list[Tensor], representations: list[Tensor]) -> LossOutput:
        z1, z2 = embeddings
        return vicreg(self.gather(z1), self.gather(z2), **self.weights)
