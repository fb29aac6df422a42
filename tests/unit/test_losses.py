"""VICReg terms against the paper's formulas, written here independently with NumPy, plus properties."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from jepa_platform.losses import functional as LF


def _reference_vicreg(x: np.ndarray, y: np.ndarray) -> dict[str, float]:
    _n, d = x.shape
    inv = float(np.mean((x - y) ** 2))

    def var_term(z: np.ndarray) -> float:
        std = np.sqrt(np.var(z, axis=0, ddof=1) + 1e-4)
        return float(np.mean(np.maximum(0.0, 1.0 - std)))

    def cov_term(z: np.ndarray) -> float:
        c = np.cov(z, rowvar=False, ddof=1)
        return sum(c[i, j] ** 2 for i in range(d) for j in range(d) if i != j) / d

    return {"invariance": inv, "variance": (var_term(x) + var_term(y)) / 2, "covariance": cov_term(x) + cov_term(y)}


@pytest.fixture
def pair() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    z1 = torch.randn(64, 16, generator=g, dtype=torch.float64) * 0.7
    z2 = z1 + 0.3 * torch.randn(64, 16, generator=g, dtype=torch.float64)
    z1[:, 3] = 0.5 * z1[:, 2] + 0.01 * z1[:, 3]  # correlated and low-variance dimensions, so no term is trivially zero
    return z1, z2


def test_vicreg_terms_match_reference(pair):
    z1, z2 = pair
    out = LF.vicreg(z1, z2)
    ref = _reference_vicreg(z1.numpy(), z2.numpy())
    for name, value in ref.items():
        assert out.terms[name].item() == pytest.approx(value, rel=1e-9, abs=1e-12), name
    assert out.total.item() == pytest.approx(25 * ref["invariance"] + 25 * ref["variance"] + ref["covariance"], rel=1e-9)


def test_weights_scale_terms(pair):
    z1, z2 = pair
    a, b = LF.vicreg(z1, z2), LF.vicreg(z1, z2, sim_weight=1.0, var_weight=2.0, cov_weight=3.0)
    expected = a.terms["invariance"] + 2 * a.terms["variance"] + 3 * a.terms["covariance"]
    assert b.total.item() == pytest.approx(expected.item())


def test_symmetric(pair):
    z1, z2 = pair
    assert LF.vicreg(z1, z2).total.item() == pytest.approx(LF.vicreg(z2, z1).total.item(), rel=1e-12)


def test_minimum_at_optimum():
    # Columns of a Hadamard matrix: zero mean, orthogonal (zero covariance), std > 1 after scaling, identical views.
    h = torch.tensor([[1.0]])
    for _ in range(5):
        h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)], 0)
    z = 2 * h[:, 1:17]  # 32 samples, 16 dims, each column +-2 with zero mean
    out = LF.vicreg(z, z.clone())
    assert out.total.item() == pytest.approx(0.0, abs=1e-6)
    noisy = LF.vicreg(z, z + 0.1 * torch.randn_like(z))
    assert noisy.total > out.total


def test_collapse_is_penalised():
    z = torch.ones(32, 8) + 1e-3 * torch.randn(32, 8)
    out = LF.vicreg(z, z.clone())
    assert out.terms["variance"].item() == pytest.approx(1 - 1e-2, abs=1e-2)  # std ~ 0 -> hinge ~ 1


def test_batched_views_average_leading_dims(pair):
    z1, z2 = pair
    stacked = torch.stack([z1, z2])
    assert LF.covariance(stacked).item() == pytest.approx((LF.covariance(z1) + LF.covariance(z2)).item() / 2)
    assert LF.variance(stacked).item() == pytest.approx((LF.variance(z1) + LF.variance(z2)).item() / 2)
    out = LF.vicreg(stacked, stacked.flip(0))
    assert out.total.shape == ()


def test_shape_errors():
    with pytest.raises(ValueError, match="same shape"):
        LF.vicreg(torch.randn(8, 4), torch.randn(8, 5))
    with pytest.raises(ValueError, match="N >= 2"):
        LF.vicreg(torch.randn(1, 4), torch.randn(1, 4))


def test_gradients_flow_to_both_branches(pair):
    z1, z2 = (t.clone().requires_grad_(True) for t in pair)
    LF.vicreg(z1, z2).total.backward()
    assert z1.grad is not None and z2.grad is not None
    assert torch.isfinite(z1.grad).all() and z1.grad.abs().sum() > 0
