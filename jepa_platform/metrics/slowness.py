"""Slow features of a world model's embeddings (slow feature analysis, Wiskott & Sejnowski 2002), for planning.

A planner's energy ``|z - z_goal|^2`` weights every embedding direction alike. Directions that change fast from one
step to the next (fine position detail) stop telling near from far a few steps away, so far from the goal the
energy is flat and planners wander; directions that change slowly vary smoothly over the whole environment and, on
trajectories that cannot cross walls, follow the distance travelled (through a door, not across the wall). SFA
finds them: with C the covariance of the embeddings and C_d that of one-step differences, the generalised
eigenvectors ``C_d v = lambda C v`` ordered by ``lambda`` go from slowest to fastest. The planning space projects on
them and scales each by ``lambda^(-power / 2)`` (normalised to mean weight 1), so that the energy is dominated by slow
features far away while fast ones still sharpen it near the goal.

The statistics are moments (count, sums, Gram matrices), so they add up exactly over batches and DDP ranks; they
come from the model's own embeddings of observed frames (validation clips), never from the simulator's state.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchmetrics import Metric


class SlownessStats(Metric):
    """Accumulates embedding and one-step-difference moments of clips ``(B, T, D)``; ``compute`` returns the SFA
    projection ``(D, D)`` (columns slow to fast) and the slowness ``lambda`` of each column ``(D,)``."""

    full_state_update = False

    def __init__(self, dim: int, **kwargs) -> None:
        super().__init__(**kwargs)
        self.add_state("n", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("total", torch.zeros(dim, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("gram", torch.zeros(dim, dim, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("n_diff", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("diff_gram", torch.zeros(dim, dim, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, z: Tensor) -> None:
        z = z.detach().double()
        flat = z.reshape(-1, z.shape[-1])
        diff = (z[:, 1:] - z[:, :-1]).reshape(-1, z.shape[-1])
        self.n += flat.shape[0]
        self.total += flat.sum(0)
        self.gram += flat.T @ flat
        self.n_diff += diff.shape[0]
        self.diff_gram += diff.T @ diff

    def compute(self) -> tuple[Tensor, Tensor]:
        mean = self.total / self.n
        cov = (self.gram - self.n * torch.outer(mean, mean)) / (self.n - 1)
        diff_cov = self.diff_gram / self.n_diff
        eigvals, eigvecs = torch.linalg.eigh(cov)
        whiten = eigvecs @ torch.diag(eigvals.clamp_min(1e-8 * eigvals.max().clamp_min(1e-12)).rsqrt())
        slowness, rotation = torch.linalg.eigh(whiten.T @ diff_cov @ whiten)
        return (whiten @ rotation).float(), slowness.clamp_min(1e-8).float()


def slow_weights(slowness: Tensor, power: float) -> Tensor:
    """Per-direction scale ``lambda^(-power / 2)``, normalised so that the squared weights average 1."""
    w = slowness.pow(-power)
    return (w / w.mean()).sqrt()
