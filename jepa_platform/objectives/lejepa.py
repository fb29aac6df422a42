"""LeJEPA: multi-view invariance plus SIGReg, the sketched isotropic Gaussian regulariser (Balestriero & LeCun 2025)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from jepa_platform.errors import ConfigError
from jepa_platform.losses.functional import LossOutput, multiview_invariance
from jepa_platform.losses.regularisers import Regulariser
from jepa_platform.objectives.base import JointEmbeddingObjective
from jepa_platform.optim import OptimizerFactory
from jepa_platform.registry import register_objective


@register_objective("lejepa")
class LeJEPA(JointEmbeddingObjective):
    """LeJEPA: every view's embedding predicts the mean embedding of the global views; SIGReg keeps embeddings Gaussian.

    total = (1 - lambda) * invariance + lambda * sigreg, with lambda the regulariser's ``sigreg_weight``. No EMA
    teacher, no stop-gradient, no predictor. SIGReg (the :class:`~jepa_platform.losses.regularisers.Regulariser`
    passed in) projects the gathered embeddings of each view on random unit directions drawn afresh every optimiser
    step, identical on every rank. ``train/energy`` is the invariance term. Takes any number of views >= 2; the first
    ``num_global_views`` (all when ``None``) are the global views whose mean is the target.
    """

    energy_term = "invariance"
    num_views = None

    def __init__(
        self,
        encoder: nn.Module,
        optimizer: OptimizerFactory,
        projector_dims: Sequence[int],
        regulariser: Regulariser,
        num_global_views: int | None,
        **kwargs,
    ) -> None:
        super().__init__(encoder, optimizer, projector_dims, **kwargs)
        if not 0.0 <= regulariser.sigreg_weight <= 1.0 or regulariser.var_weight or regulariser.cov_weight:
            raise ConfigError(f"objective.regulariser of sigreg must be SIGReg alone with sigreg_weight in [0, 1], got {regulariser.extra_repr()}")
        self.regulariser, self.num_global_views = regulariser, num_global_views

    def compute_loss(self, embeddings: list[Tensor], representations: list[Tensor]) -> LossOutput:
        z = torch.stack([self.gather(e) for e in embeddings])  # (V, N_global, D)
        weight = self.regulariser.sigreg_weight
        invariance = multiview_invariance(z, self.num_global_views)
        regs, weighted = self.regulariser(z, self.global_step)
        return LossOutput((1 - weight) * invariance + weighted, {"invariance": invariance, **regs})
