"""The anti-collapse regulariser as one module, passed into every objective that needs one (world models at each
level, the masked JEPAs): VICReg's variance and covariance terms and SIGReg, each with its weight.

Why a module and not a set of ``*_weight`` arguments on each objective: the same three terms were written three
times (AC-JEPA, the masked JEPAs, level 2 of the hierarchical world model) with their own seeds and names. Here
they are configured once (``conf/objective/regulariser/``) and an objective only decides which embeddings they see.
No collectives: the caller gathers the global batch first (``distributed.gather_with_grad``), as for every loss.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from jepa_platform.errors import ConfigError
from jepa_platform.losses.functional import covariance, random_directions, sigreg, variance


class Regulariser(nn.Module):
    """``forward(z, step) -> (terms, total)``: the unweighted terms (``variance``, ``covariance``, ``sigreg``, those
    with a non-zero weight) and their weighted sum, on embeddings ``(N, D)`` of the global batch.

    Args:
        var_weight: weight of VICReg's variance hinge (per-dimension std kept above 1).
        cov_weight: weight of VICReg's covariance term (off-diagonal covariance driven to 0).
        sigreg_weight: weight of SIGReg (LeJEPA's sketched test that the embeddings are isotropic Gaussian).
        num_slices: random directions SIGReg projects on, drawn afresh each step.
        seed: the directions of step ``s`` come from a generator seeded with ``seed * 1_000_003 + s``: every rank
            draws the same ones without communicating.
        t_max, knots: SIGReg's Epps-Pulley integration range ``[-t_max, t_max]`` and trapezoidal points on ``[0, t_max]``.
    """

    def __init__(self, var_weight: float, cov_weight: float, sigreg_weight: float, num_slices: int, seed: int, t_max: float, knots: int) -> None:
        super().__init__()
        if min(var_weight, cov_weight, sigreg_weight) < 0 or num_slices < 1:
            raise ConfigError("regulariser weights must be >= 0 and num_slices >= 1")
        self.var_weight, self.cov_weight, self.sigreg_weight = var_weight, cov_weight, sigreg_weight
        self.num_slices, self.seed, self.t_max, self.knots = num_slices, seed, t_max, knots

    @property
    def active(self) -> bool:
        """Whether any term has a weight (a regulariser with none is the collapsing control)."""
        return bool(self.var_weight or self.cov_weight or self.sigreg_weight)

    def forward(self, z: Tensor, step: int) -> tuple[dict[str, Tensor], Tensor]:
        terms: dict[str, Tensor] = {}
        total = z.new_zeros(())
        if self.var_weight:
            terms["variance"] = variance(z)
            total = total + self.var_weight * terms["variance"]
        if self.cov_weight:
            terms["covariance"] = covariance(z)
            total = total + self.cov_weight * terms["covariance"]
        if self.sigreg_weight:
            generator = torch.Generator(device=z.device).manual_seed(self.seed * 1_000_003 + step)
            directions = random_directions(z.shape[-1], self.num_slices, generator, z.device).to(z.dtype)
            terms["sigreg"] = sigreg(z, directions, self.t_max, self.knots)
            total = total + self.sigreg_weight * terms["sigreg"]
        return terms, total

    def extra_repr(self) -> str:
        return f"var_weight={self.var_weight}, cov_weight={self.cov_weight}, sigreg_weight={self.sigreg_weight}, num_slices={self.num_slices}"
