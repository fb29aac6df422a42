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
    sim_weight: float,
    var_weight: float,
    cov_weight: float,
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


def info_nce(z1: Tensor, z2: Tensor, temperature: float, anchors: slice | None = None) -> Tensor:
    """SimCLR's NT-Xent (Chen et al. 2020) over the 2N embeddings of N positive pairs.

    Each embedding is an anchor whose positive is its other view; the other 2N-2 embeddings are negatives.
    Cosine similarities divided by ``temperature``; the loss is the mean cross-entropy over anchors.

    ``anchors`` restricts the anchors to the pairs ``z[anchors]`` while every embedding stays a candidate. Under DDP
    an objective passes the gathered batch and its own rank's slice: each rank computes 2n rows of logits instead
    of 2N, and the mean over ranks (DDP's gradient average) is the loss over all 2N anchors.
    """
    _check_pair(z1, z2)
    n = z1.shape[-2]
    rows = range(n)[anchors] if anchors is not None else range(n)
    if len(rows) == 0 or rows.step != 1:
        raise ValueError(f"anchors must be a non-empty contiguous slice of the {n} pairs, got {anchors}")
    idx = torch.arange(rows.start, rows.stop, device=z1.device)
    keys = F.normalize(torch.cat([z1, z2], dim=-2), dim=-1)  # (..., 2N, D)
    queries = torch.cat([keys[..., idx, :], keys[..., idx + n, :]], dim=-2)  # (..., 2n, D)
    logits = queries @ keys.transpose(-1, -2) / temperature  # (..., 2n, 2N)
    self_idx = torch.cat([idx, idx + n])
    positive_idx = torch.cat([idx + n, idx])
    is_self = torch.zeros(logits.shape[-2:], dtype=torch.bool, device=z1.device)
    is_self[torch.arange(len(self_idx), device=z1.device), self_idx] = True
    logits = logits.masked_fill(is_self, float("-inf"))
    target = positive_idx.expand(*logits.shape[:-1])
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1))


def standardise(z: Tensor, eps: float = 1e-5) -> Tensor:
    """Zero mean, unit (biased) variance per dimension over the batch: BatchNorm1d without affine, in training mode."""
    return (z - z.mean(dim=-2, keepdim=True)) / torch.sqrt(z.var(dim=-2, unbiased=False, keepdim=True) + eps)


def barlow_twins(z1: Tensor, z2: Tensor, lambda_offdiag: float) -> LossOutput:
    """Barlow Twins (Zbontar et al. 2021), as the official code: cross-correlation of the standardised embeddings
    driven to the identity.

    c = z1n^T z2n / N; terms ``invariance`` = sum((1 - c_ii)^2) and ``redundancy`` = sum over i != j of c_ij^2;
    total = invariance + lambda_offdiag * redundancy. Averaged over leading dimensions, if any.
    """
    _check_pair(z1, z2)
    n = z1.shape[-2]
    c = standardise(z1).transpose(-1, -2) @ standardise(z2) / n  # (..., D, D)
    diag = torch.diagonal(c, dim1=-2, dim2=-1)
    terms = {
        "invariance": (1 - diag).pow(2).sum(dim=-1).mean(),
        "redundancy": (c.pow(2).sum(dim=(-2, -1)) - diag.pow(2).sum(dim=-1)).mean(),
    }
    return LossOutput(terms["invariance"] + lambda_offdiag * terms["redundancy"], terms)


def sigreg(z: Tensor, directions: Tensor, t_max: float, knots: int) -> Tensor:
    """SIGReg (LeJEPA, Balestriero & LeCun 2025): distance of the embeddings from an isotropic Gaussian, sketched
    along random 1-D projections with the Epps-Pulley statistic.

    For each direction a (a column of ``directions``, shape ``(D, M)``, unit norm), the projections x = z a of the N
    samples give an empirical characteristic function phi_N(t) = mean_n exp(i t x_n); the statistic is
    N * integral over [-t_max, t_max] of |phi_N(t) - exp(-t^2/2)|^2 exp(-t^2/2) dt, integrated with the trapezoidal
    rule on ``knots`` points of [0, t_max] (the integrand is even). Returns the mean over directions (and leading
    dimensions). Directions are an argument so that the function is deterministic and every rank can use the same.
    """
    if z.dim() < 2 or z.shape[-2] < 2:
        raise ValueError(f"embeddings must be (..., N, D) with N >= 2, got {tuple(z.shape)}")
    if directions.dim() != 2 or directions.shape[0] != z.shape[-1]:
        raise ValueError(f"directions must be (D, M) with D={z.shape[-1]}, got {tuple(directions.shape)}")
    if knots < 2 or t_max <= 0:
        raise ValueError(f"need knots >= 2 and t_max > 0, got knots={knots}, t_max={t_max}")
    n = z.shape[-2]
    t = torch.linspace(0.0, t_max, knots, device=z.device, dtype=z.dtype)
    gauss = torch.exp(-0.5 * t * t)
    xt = (z @ directions.to(z.dtype)).unsqueeze(-1) * t  # (..., N, M, T)
    real, imag = xt.cos().mean(dim=-3), xt.sin().mean(dim=-3)  # (..., M, T)
    err = ((real - gauss).pow(2) + imag.pow(2)) * gauss
    statistic = 2 * n * torch.trapezoid(err, t, dim=-1)  # (..., M)
    return statistic.mean()


def random_directions(dim: int, num: int, generator: torch.Generator, device: torch.device | None = None) -> Tensor:
    """``num`` unit vectors uniform on the sphere in R^dim, as the columns of a ``(dim, num)`` matrix."""
    a = torch.randn(dim, num, generator=generator, device=device)
    return a / a.norm(dim=0, keepdim=True)


def multiview_invariance(embeddings: Tensor, num_global: int | None = None) -> Tensor:
    """LeJEPA's invariance: mean squared distance of every view's embedding to the mean of the global views.

    ``embeddings`` is ``(V, N, D)``; the first ``num_global`` views are global (default: all).
    """
    if embeddings.dim() != 3 or embeddings.shape[0] < 2:
        raise ValueError(f"embeddings must be (V, N, D) with V >= 2 views, got {tuple(embeddings.shape)}")
    centre = embeddings[: num_global or embeddings.shape[0]].mean(dim=0)
    return (embeddings - centre).pow(2).mean()


PREDICTION_LOSSES = ("smooth_l1", "l2", "l1")


_ELEMENTWISE = {"smooth_l1": F.smooth_l1_loss, "l2": F.mse_loss, "l1": F.l1_loss}


def _prediction_loss(pred: Tensor, target: Tensor, kind: str, reduction: str) -> Tensor:
    if pred.shape != target.shape:
        raise ValueError(f"predictions {tuple(pred.shape)} and targets {tuple(target.shape)} must have the same shape")
    if kind not in _ELEMENTWISE:
        raise ValueError(f"prediction loss {kind!r} is not one of {', '.join(PREDICTION_LOSSES)}")
    return _ELEMENTWISE[kind](pred, target, reduction=reduction)


def masked_prediction(pred: Tensor, target: Tensor, kind: str = "smooth_l1") -> Tensor:
    """Mean distance between predicted and target token representations (the JEPA energy of observed pairs).

    ``kind``: ``smooth_l1`` (I-JEPA, beta = 1), ``l2`` (mean squared error) or ``l1`` (V-JEPA)."""
    return _prediction_loss(pred, target, kind, "mean")


def masked_prediction_per_sample(pred: Tensor, target: Tensor, kind: str = "smooth_l1") -> Tensor:
    """:func:`masked_prediction` of each sample ``(B,)`` (its mean over the batch is the batch's energy when every
    sample has the same number of targets)."""
    return _prediction_loss(pred, target, kind, "none").flatten(1).mean(dim=1)


def normalised_targets(h: Tensor) -> Tensor:
    """Target representations layer-normalised over features, without affine parameters (I-JEPA)."""
    return F.layer_norm(h, h.shape[-1:])


def prediction_error_per_token(pred: Tensor, target: Tensor, kind: str = "smooth_l1") -> Tensor:
    """:func:`masked_prediction` of each predicted token ``(..., N)`` of ``(..., N, D)`` predictions: where in space
    and time a prediction went wrong (surprise over time is its mean over each frame's tokens)."""
    return _prediction_loss(pred, target, kind, "none").mean(dim=-1)
