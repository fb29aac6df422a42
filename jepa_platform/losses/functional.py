"""Loss terms as pure functions of tensors.

Shape convention: embeddings are ``(..., N, D)``: N samples of dimension D, with optional leading dimensions
(views, groups) over which scalar terms are averaged. No module state, no collectives: an objective decides
which tensors (local or gathered) each term sees.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor


@dataclass
class LossOutput:
    """A weighted total to optimise and its unweighted terms, for logging under ``train/loss/<term>``."""

    total: Tensor
    terms: dict[str, Tensor] = field(default_factory=dict)


def _check_pair(z1: Tensor, z2: Tensor) -> None:
    if z1.shape != z2.shape:
        raise ValueError(f"embeddings must have the same shape, got {tuple(z1.shape)} and {tuple(z2.shape)}")
    if z1.dim() < 2 or z1.shape[-2] < 2:
        raise ValueError(f"embeddings must be (..., N, D) with N >= 2, got {tuple(z1.shape)}")


def invariance(z1: Tensor, z2: Tensor) -> Tensor:
    """Mean squared error between paired embeddings (VICReg's invariance term)."""
    _check_pair(z1, z2)
    return F.mse_loss(z1, z2)


def variance(z: Tensor, target_std: float = 1.0, eps: float = 1e-4) -> Tensor:
    """Hinge on the per-dimension standard deviation over the batch: mean(relu(target - sqrt(var + eps)))."""
    std = torch.sqrt(z.var(dim=-2) + eps)
    return F.relu(target_std - std).mean()


def covariance(z: Tensor) -> Tensor:
    """Sum of squared off-diagonal entries of the (unbiased) covariance matrix, divided by D.

    Averaged over leading dimensions, if any.
    """
    n, d = z.shape[-2], z.shape[-1]
    zc = z - z.mean(dim=-2, keepdim=True)
    cov = zc.transpose(-1, -2) @ zc / (n - 1)
    off_diag_sq = cov.pow(2).sum(dim=(-2, -1)) - torch.diagonal(cov, dim1=-2, dim2=-1).pow(2).sum(dim=-1)
    return (off_diag_sq / d).mean()


def vicreg(
    z1: Tensor,
    z2: Tensor,
    sim_weight: float = 25.0,
    var_weight: float = 25.0,
    cov_weight: float = 1.0,
) -> LossOutput:
    """VICReg (Bardes, Ponce, LeCun 2022): invariance + variance and covariance of each branch.

    ``variance`` is averaged over the two branches and ``covariance`` summed over them, as in the official code.
    """
    _check_pair(z1, z2)
    terms = {
        "invariance": invariance(z1, z2),
        "variance": (variance(z1) + variance(z2)) / 2,
        "covariance": covariance(z1) + covariance(z2),
    }
    total = sim_weight * terms["invariance"] + var_weight * terms["variance"] + cov_weight * terms["covariance"]
    return LossOutput(total, terms)
