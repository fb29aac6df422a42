"""Embedding statistics that reveal collapse, identical for every objective.

All statistics derive from three moments of the embeddings Z (N x D): the count N, the sum over samples and the
Gram matrix Z^T Z. The moments add across batches and ranks, so a metric accumulated over a whole validation
set (or gathered over DDP ranks) is exactly the statistic of the concatenated embeddings.

- ``std_mean`` / ``std_min``: mean and minimum over dimensions of the per-dimension standard deviation.
- ``dead_dims_frac``: fraction of dimensions whose standard deviation is below ``dead_threshold``.
- ``cov_offdiag``: root mean square of the off-diagonal correlation coefficients (0 when decorrelated, 1 when
  every dimension carries the same signal); correlation rather than covariance, so it compares across scales.
- ``rank``: RankMe effective rank (Garrido et al. 2023): exp of the entropy of the normalised singular values of Z.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchmetrics import Metric

STAT_NAMES = ("std_mean", "std_min", "dead_dims_frac", "cov_offdiag", "rank")


def _moments(z: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    z = z.detach().reshape(-1, z.shape[-1]).double()
    return torch.tensor(z.shape[0], dtype=torch.float64, device=z.device), z.sum(0), z.T @ z


def _rank_from_eigvals(eig: Tensor, eps: float = 1e-7) -> Tensor:
    sv = eig.clamp_min(0).sqrt()
    p = sv / sv.sum().clamp_min(1e-12) + eps
    return torch.exp(-(p * p.log()).sum())


def _statistics(n: Tensor, total: Tensor, gram: Tensor, dead_threshold: float) -> tuple[dict[str, Tensor], Tensor, Tensor]:
    """The statistics, the correlation matrix and the singular values of Z (descending) from its moments."""
    mean = total / n
    finite = torch.isfinite(gram).all()
    cov = (gram - n * torch.outer(mean, mean)) / (n - 1)
    std = torch.diagonal(cov).clamp_min(0).sqrt()
    d = std.numel()
    corr = cov / torch.outer(std, std).clamp_min(1e-12)
    off = corr - torch.diag_embed(torch.diagonal(corr))
    cov_offdiag = (off.pow(2).sum() / max(d * (d - 1), 1)).sqrt()
    # a diverged run's NaN/Inf would make eigvalsh raise: its rank is NaN instead (no host sync to find out)
    eig = torch.linalg.eigvalsh(torch.where(finite, gram, torch.eye(d, dtype=gram.dtype, device=gram.device)))
    stats = {
        "std_mean": std.mean(),
        "std_min": std.min(),
        "dead_dims_frac": (std < dead_threshold).double().mean(),
        "cov_offdiag": cov_offdiag,
        "rank": torch.where(finite, _rank_from_eigvals(eig), torch.nan),
    }
    singular_values = eig.flip(0).clamp_min(0).sqrt()
    return {k: v.float() for k, v in stats.items()}, corr, singular_values


def stats_from_moments(n: Tensor, total: Tensor, gram: Tensor, dead_threshold: float = 1e-3) -> dict[str, Tensor]:
    """Statistics of Z from its count, column sums and Gram matrix."""
    return _statistics(n, total, gram, dead_threshold)[0]


def embedding_stats(z: Tensor, dead_threshold: float = 1e-3) -> dict[str, Tensor]:
    """Statistics of one batch of embeddings ``(..., D)``; leading dimensions are flattened into samples."""
    if z[..., 0].numel() < 2:  # the shape, known on the host: no read of the device
        raise ValueError("embedding statistics need at least 2 samples")
    return stats_from_moments(*_moments(z), dead_threshold=dead_threshold)


def effective_rank(z: Tensor) -> Tensor:
    """RankMe effective rank of ``(N, D)`` embeddings."""
    return embedding_stats(z)["rank"]


class EmbeddingStats(Metric):
    """Accumulates embedding moments over batches (and ranks) and computes :func:`stats_from_moments`.

    Each ``compute`` also leaves, on the CPU, what plots need: ``spectrum`` (the singular values of Z, whose entropy
    is ``rank``) and ``correlation`` (the correlation matrix of the first ``plot_dims`` dimensions)."""

    full_state_update = False

    def __init__(self, dim: int, dead_threshold: float = 1e-3, plot_dims: int = 128, **kwargs) -> None:
        super().__init__(**kwargs)
        self.dead_threshold, self.plot_dims = dead_threshold, plot_dims
        self.spectrum: Tensor | None = None
        self.correlation: Tensor | None = None
        self.add_state("n", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("total", torch.zeros(dim, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("gram", torch.zeros(dim, dim, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, z: Tensor) -> None:
        n, total, gram = _moments(z)
        self.n += n
        self.total += total
        self.gram += gram

    def compute(self) -> dict[str, Tensor]:
        if self.n < 2:  # after validation, not in a training step
            raise ValueError("embedding statistics need at least 2 samples")
        stats, corr, singular_values = _statistics(self.n, self.total, self.gram, self.dead_threshold)
        self.spectrum = singular_values.float().cpu()
        self.correlation = corr[: self.plot_dims, : self.plot_dims].float().cpu()
        return stats
