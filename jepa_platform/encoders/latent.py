"""A latent variable for what a world model cannot predict: ``z ~ q(z | s_t, s_next)`` inferred from the embedding
before and the embedding reached, during training only, and fed to the predictor next to the action.

Regularised by its KL divergence to a unit Gaussian prior, in nats: the rate of a variational information
bottleneck, which upper-bounds the information ``z`` carries about the outcome. It is LeCun's "minimise the
information content of the latent" made measurable: with a weight on it, ``z`` is used only where the outcome
really is undetermined by the past and the action (a door that may close), because there the bits it costs buy a
large drop of prediction error; elsewhere the posterior stays on the prior. A sparsity or VICReg-style term would
also shrink ``z`` but does not bound its information (a small code can still carry many bits); noise alone does
not either. At plan time ``z`` is drawn from the prior (or set to its mean, 0): the futures a planner must be
robust to.

The inference network reads *detached* embeddings: it never shapes the representation.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class LatentInference(nn.Module):
    """``forward(current, reached) -> (z, kl)``: a reparameterised sample (the posterior mean in eval mode) ``(..., L)``
    and its KL to ``N(0, I)`` in nats ``(...)``.

    Args:
        dim: width of the embeddings.
        latent_dim: width of ``z``.
        hidden: hidden width of the inference MLP.
    """

    def __init__(self, dim: int, latent_dim: int, hidden: int = 128) -> None:
        super().__init__()
        self.latent_dim = latent_dim
        self.net = nn.Sequential(nn.Linear(2 * dim, hidden), nn.GELU(), nn.Linear(hidden, 2 * latent_dim))
        nn.init.zeros_(self.net[-1].weight)  # starts on the prior: z carries nothing until it pays
        nn.init.zeros_(self.net[-1].bias)

    def forward(self, current: Tensor, reached: Tensor) -> tuple[Tensor, Tensor]:
        mean, log_var = self.net(torch.cat([current.detach(), reached.detach()], dim=-1)).chunk(2, dim=-1)
        log_var = log_var.clamp(-8.0, 4.0)
        kl = 0.5 * (mean.pow(2) + log_var.exp() - 1.0 - log_var).sum(dim=-1)
        if not self.training:
            return mean, kl
        return mean + torch.randn_like(mean) * (0.5 * log_var).exp(), kl
