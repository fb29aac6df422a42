"""LeJEPA: multi-view invariance plus SIGReg, the sketched isotropic Gaussian regulariser (Balestriero & LeCun 2025)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from jepa_platform.losses.functional import LossOutput, multiview_invariance, random_directions, sigreg
from jepa_platform.objectives.base import JointEmbeddingObjective
from jepa_platform.optim import OptimizerFactory
from jepa_platform.registry import register_objective


@register_objective("sigreg")
class LeJEPA(JointEmbeddingObjective):
    """LeJEPA: every view's embedding predicts the mean embedding of the global views; SIGReg keeps embeddings Gaussian.

    total = (1 - sigreg_weight) * invariance + sigreg_weight * sigreg. No EMA teacher, no stop-gradient, no
    predictor: the one trade-off is ``sigreg_weight``. SIGReg projects the (gathered) embeddings of each view on
    ``num_slices`` random unit directions, drawn afresh every optimiser step from a generator seeded with
    ``(direction_seed, global_step)``, so that every rank draws the same ones without communicating.
    ``train/energy`` is the invariance term. Takes any number of views >= 2; the first ``num_global_views`` (all by
    default) are the global views whose mean is the target.
    """

    energy_term = "invariance"
    num_views = None

    def __init__(
        self,
        encoder: nn.Module,
        optimizer: OptimizerFactory,
        projector_dims: Sequence[int] = (2048, 2048, 128),
        sigreg_weight: float = 0.05,
        num_slices: int = 1024,
        t_max: float = 3.0,
        knots: int = 17,
        num_global_views: int | None = None,
        direction_seed: int = 0,
        **kwargs,
    ) -> None:
        super().__init__(encoder, optimizer, projector_dims, **kwargs)
        if not 0.0 <= sigreg_weight <= 1.0:
            raise ValueError(f"objective.sigreg_weight must be in [0, 1], got {sigreg_weight}")
        self.sigreg_weight, self.num_slices, self.t_max, self.knots = sigreg_weight, num_slices, t_max, knots
        self.num_global_views, self.direction_seed = num_global_views, direction_seed

    def directions(self, dim: int, device: torch.device) -> Tensor:
        """This step's ``(dim, num_slices)`` unit directions, identical on every rank."""
        generator = torch.Generator(device=device).manual_seed(self.direction_seed * 1_000_003 + self.global_step)
        return random_directions(dim, self.num_slices, generator, device)

    def compute_loss(self, embeddings: list[Tensor], representations: list[Tensor]) -> LossOutput:
        z = torch.stack([self.gather(e) for e in embeddings])  # (V, N_global, D)
        terms = {
            "invariance": multiview_invariance(z, self.num_global_views),
            "sigreg": sigreg(z, self.directions(z.shape[-1], z.device), self.t_max, self.knots),
        }
        total = (1 - self.sigreg_weight) * terms["invariance"] + self.sigreg_weight * terms["sigreg"]
        return LossOutput(total, terms)
