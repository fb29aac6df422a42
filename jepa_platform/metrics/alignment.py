"""Alignment and uniformity of L2-normalised embeddings (Wang & Isola, ICML 2020).

- ``alignment``: mean of ``||f(x) - f(y)||^2`` over positive pairs (two views of one sample); 0 when the views map
  to the same point. Lower is better, but 0 is also what collapse gives: read it next to ``uniformity``.
- ``uniformity``: ``log mean_{i != j} exp(-t ||f(x_i) - f(x_j)||^2)`` over all pairs of distinct samples (t = 2);
  0 when every sample maps to one point, about ``-4`` (for t = 2) when they spread evenly over a high-dimensional
  sphere.

:class:`AlignmentUniformity` accumulates what both need so that a value over batches (or DDP ranks, whose states
torchmetrics gathers) equals the value on the concatenated samples: the sum of squared pair distances and the pair
count (alignment), and the normalised embeddings themselves (uniformity is over all pairs, which do not reduce to
moments). Uniformity costs ``N^2 D``: each rank keeps the first ``max_samples`` samples it sees (alignment uses
every pair), so the value is exact for those samples of every rank together.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

#: the temperature of the uniformity kernel in Wang & Isola's experiments
UNIFORMITY_T = 2.0


def alignment(z1: Tensor, z2: Tensor) -> Tensor:
    """Mean squared distance between L2-normalised positive pairs ``(N, D)``."""
    return (F.normalize(z1.float(), dim=-1) - F.normalize(z2.float(), dim=-1)).pow(2).sum(-1).mean()


def _uniformity_of_normalised(z: Tensor, t: float, block: int = 2048) -> Tensor:
    """Uniformity of already-normalised ``(N, D)`` embeddings, in row blocks (memory ``block x N``, not ``N x N``)."""
    n = z.shape[0]
    if n < 2:
        return torch.tensor(float("nan"), device=z.device)
    z = z.double()
    total = torch.zeros((), dtype=torch.float64, device=z.device)
    for start in range(0, n, block):
        rows = z[start : start + block]
        sq = (2 - 2 * rows @ z.T).clamp_min(0)  # ||a - b||^2 on the unit sphere
        total = total + torch.exp(-t * sq).sum() - rows.shape[0]  # minus the diagonal (exp(0) = 1 each)
    return (total / (n * (n - 1))).clamp_min(1e-300).log().float()


def uniformity(z: Tensor, t: float = UNIFORMITY_T) -> Tensor:
    """Log of the mean Gaussian potential between distinct samples of ``(N, D)`` embeddings, after normalisation."""
    return _uniformity_of_normalised(F.normalize(z.reshape(-1, z.shape[-1]).float(), dim=-1), t)


class AlignmentUniformity(Metric):
    """``alignment`` (when positive pairs were given) and ``uniformity`` of everything seen since the last reset.

    ``update(z)`` adds samples; ``update(z1, z2)`` adds positive pairs (both sides count as samples for
    uniformity).

    Args:
        t: temperature of the uniformity kernel.
        max_samples: samples kept per rank for uniformity (``None``: all).
        dim: the embeddings' width; give it when a rank may see no sample (its empty state then syncs).
    """

    full_state_update = False

    def __init__(self, t: float = UNIFORMITY_T, max_samples: int | None = 4096, dim: int | None = None, **kwargs) -> None:
        super().__init__(**kwargs)
        self.t, self.max_samples, self.dim = t, max_samples, dim
        self._kept = 0
        self.add_state("pair_sq_sum", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("pairs", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("samples", [], dist_reduce_fx="cat")
        self._start_empty()

    def _start_empty(self) -> None:
        # a rank that sees no sample must still gather a (0, dim) tensor: torchmetrics would gather an empty 1-D one,
        # whose shape the other ranks' (N, dim) do not match, and the collective fails
        if self.dim is not None:
            self.samples.append(torch.zeros(0, self.dim, device=self.device))

    def _keep(self, z: Tensor) -> None:
        room = z.shape[0] if self.max_samples is None else max(self.max_samples - self._kept, 0)
        if room:
            self.samples.append(z[:room])
            self._kept += min(room, z.shape[0])

    def update(self, z1: Tensor, z2: Tensor | None = None) -> None:
        a = F.normalize(z1.detach().reshape(-1, z1.shape[-1]).float(), dim=-1)
        self._keep(a)
        if z2 is not None:
            b = F.normalize(z2.detach().reshape(-1, z2.shape[-1]).float(), dim=-1)
            self.pair_sq_sum += (a - b).double().pow(2).sum()
            self.pairs += a.shape[0]
            self._keep(b)

    def reset(self) -> None:
        super().reset()
        self._kept = 0
        self._start_empty()

    def compute(self) -> dict[str, Tensor]:
        # a list before a sync, one gathered tensor after torchmetrics syncs it over ranks (never ``if self.samples``)
        empty = isinstance(self.samples, list) and not self.samples
        samples = torch.zeros(0, 1, device=self.pairs.device) if empty else dim_zero_cat(self.samples)
        out = {"uniformity": _uniformity_of_normalised(samples, self.t)}
        if self.pairs > 0:
            out["alignment"] = (self.pair_sq_sum / self.pairs).float()
        return out
