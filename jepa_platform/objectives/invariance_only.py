"""The control without an anti-collapse term: invariance alone, which collapses."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import Tensor, nn

from jepa_platform.losses.functional import LossOutput, invariance
from jepa_platform.objectives.base import JointEmbeddingObjective
from jepa_platform.optim import OptimizerFactory
from jepa_platform.registry import register_objective


@register_objective("invariance_only")
class InvarianceOnly(JointEmbeddingObjective):
    """Invariance only: the mean squared distance between two views' embeddings, with nothing against collapse.

    A constant embedding minimises it, and training finds that solution: ``emb/rank`` falls toward 1 and
    ``emb/std_mean`` toward 0. It is VICReg with the variance and covariance weights at zero, kept as the control
    that shows what the regularisers of the other objectives prevent. ``train/energy`` is the invariance term.
    """

    energy_term = "invariance"

    def __init__(
        self,
        encoder: nn.Module,
        optimizer: OptimizerFactory,
        projector_dims: Sequence[int],
        projector_norm: str,
        **kwargs: Any,
    ) -> None:
        # no BatchNorm in the projector by default: batch statistics would themselves resist collapse
        super().__init__(encoder, optimizer, projector_dims, projector_norm, **kwargs)

    def compute_loss(self, embeddings: list[Tensor], representations: list[Tensor]) -> LossOutput:
        value = invariance(embeddings[0], embeddings[1])
        return LossOutput(value, {"invariance": value})
