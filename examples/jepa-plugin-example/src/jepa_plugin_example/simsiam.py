"""SimSiam (Chen & He, CVPR 2021): a predictor and a stop-gradient, no negatives and no momentum encoder."""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from jepa_platform.encoders import projector
from jepa_platform.losses import LossOutput
from jepa_platform.objectives import JointEmbeddingObjective
from jepa_platform.optim import OptimizerFactory


def negative_cosine(p: Tensor, z: Tensor) -> Tensor:
    """Mean of -cos(p, z) with z treated as a constant (the stop-gradient)."""
    return -F.cosine_similarity(p, z.detach(), dim=-1).mean()


class SimSiam(JointEmbeddingObjective):
    """SimSiam: each view's prediction matches the other view's embedding behind a stop-gradient; no negatives.

    The base class supplies the encoder, projector, probe, metrics and optimiser; this class adds the predictor and
    the loss. Every term is a mean over this rank's samples, so nothing needs gathering under DDP.
    ``train/energy`` is the prediction error 1 - cos(p, z), which is in [0, 2].
    """

    energy_term = "prediction_error"

    def __init__(
        self,
        encoder: nn.Module,
        optimizer: OptimizerFactory,
        projector_dims: Sequence[int],
        predictor_hidden_dim: int,
        **kwargs,
    ) -> None:
        super().__init__(encoder, optimizer, projector_dims, **kwargs)
        self.predictor = projector(self.embed_dim, [predictor_hidden_dim, self.embed_dim], norm=self.hparams.projector_norm)

    def compute_loss(self, embeddings: list[Tensor], representations: list[Tensor]) -> LossOutput:
        z1, z2 = embeddings
        p1, p2 = self.predictor(z1), self.predictor(z2)
        loss = (negative_cosine(p1, z2) + negative_cosine(p2, z1)) / 2
        return LossOutput(loss, {"prediction_error": 1 + loss.detach()})
