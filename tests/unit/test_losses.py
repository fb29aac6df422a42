"""VICReg terms against the paper's formulas, written here independently with NumPy, plus properties."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from jepa_platform.losses import functional as LF

#: the papers' settings, which the presets in conf/objective/ give the objectives
VICREG = {"sim_weight": 25.0, "var_weight": 25.0, "cov_weight": 1.0}


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
    out = LF.vicreg(z1, z2, **VICREG)
    ref = _reference_vicreg(z1.numpy(), z2.numpy())
    for name, value in ref.items():
        assert out.terms[name].item() == pytest.approx(value, rel=1e-9, abs=1e-12), name
    assert out.total.item() == pytest.approx(25 * ref["invariance"] + 25 * ref["variance"] + ref["covariance"], rel=1e-9)


def test_weights_scale_terms(pair):
    z1, z2 = pair
    a, b = LF.vicreg(z1, z2, **VICREG), LF.vicreg(z1, z2, sim_weight=1.0, var_weight=2.0, cov_weight=3.0)
    expected = a.terms["invariance"] + 2 * a.terms["variance"] + 3 * a.terms["covariance"]
    assert b.total.item() == pytest.approx(expected.item())


def test_symmetric(pair):
    z1, z2 = pair
    assert LF.vicreg(z1, z2, **VICREG).total.item() == pytest.approx(LF.vicreg(z2, z1, **VICREG).total.item(), rel=1e-12)


def test_minimum_at_optimum():
    # Columns of a Hadamard matrix: zero mean, orthogonal (zero covariance), std > 1 after scaling, identical views.
    h = torch.tensor([[1.0]])
    for _ in range(5):
        h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)], 0)
    z = 2 * h[:, 1:17]  # 32 samples, 16 dims, each column +-2 with zero mean
    out = LF.vicreg(z, z.clone(), **VICREG)
    assert out.total.item() == pytest.approx(0.0, abs=1e-6)
    noisy = LF.vicreg(z, z + 0.1 * torch.randn_like(z), **VICREG)
    assert noisy.total > out.total


def test_collapse_is_penalised():
    z = torch.ones(32, 8) + 1e-3 * torch.randn(32, 8)
    out = LF.vicreg(z, z.clone(), **VICREG)
    assert out.terms["variance"].item() == pytest.approx(1 - 1e-2, abs=1e-2)  # std ~ 0 -> hinge ~ 1


def test_batched_views_average_leading_dims(pair):
    z1, z2 = pair
    stacked = torch.stack([z1, z2])
    assert LF.covariance(stacked).item() == pytest.approx((LF.covariance(z1) + LF.covariance(z2)).item() / 2)
    assert LF.variance(stacked).item() == pytest.approx((LF.variance(z1) + LF.variance(z2)).item() / 2)
    out = LF.vicreg(stacked, stacked.flip(0), **VICREG)
    assert out.total.shape == ()


def test_shape_errors():
    with pytest.raises(ValueError, match="same shape"):
        LF.vicreg(torch.randn(8, 4), torch.randn(8, 5), **VICREG)
    with pytest.raises(ValueError, match="N >= 2"):
        LF.vicreg(torch.randn(1, 4), torch.randn(1, 4), **VICREG)


def test_gradients_flow_to_both_branches(pair):
    z1, z2 = (t.clone().requires_grad_(True) for t in pair)
    LF.vicreg(z1, z2, **VICREG).total.backward()
    assert z1.grad is not None and z2.grad is not None
    assert torch.isfinite(z1.grad).all() and z1.grad.abs().sum() > 0


# -- InfoNCE / NT-Xent -------------------------------------------------------------------------------------------


def _reference_nt_xent(x: np.ndarray, y: np.ndarray, temperature: float) -> float:
    """Loop over the 2N anchors: -log softmax of the positive among the 2N-1 others."""
    z = np.concatenate([x, y])
    z = z / np.linalg.norm(z, axis=1, keepdims=True)
    n2 = len(z)
    losses = []
    for i in range(n2):
        positive = (i + n2 // 2) % n2
        sims = {j: float(z[i] @ z[j]) / temperature for j in range(n2) if j != i}
        losses.append(-sims[positive] + np.log(sum(np.exp(s) for s in sims.values())))
    return float(np.mean(losses))


@pytest.mark.parametrize("temperature", [0.1, 0.5])
def test_info_nce_matches_reference(pair, temperature):
    z1, z2 = pair
    ref = _reference_nt_xent(z1.numpy(), z2.numpy(), temperature)
    assert LF.info_nce(z1, z2, temperature).item() == pytest.approx(ref, rel=1e-9)


def test_info_nce_symmetric_and_batched(pair):
    z1, z2 = pair
    assert LF.info_nce(z1, z2, temperature=0.1).item() == pytest.approx(LF.info_nce(z2, z1, temperature=0.1).item(), rel=1e-12)
    stacked = LF.info_nce(torch.stack([z1, z2]), torch.stack([z2, z1 * 2]), temperature=0.1)
    assert stacked.item() == pytest.approx((LF.info_nce(z1, z2, temperature=0.1) + LF.info_nce(z2, z1 * 2, temperature=0.1)).item() / 2, rel=1e-12)


def test_info_nce_anchor_slices_average_to_the_full_loss(pair):
    z1, z2 = pair
    halves = [LF.info_nce(z1, z2, anchors=slice(i, i + 16), temperature=0.1) for i in range(0, 64, 16)]
    assert torch.stack(halves).mean().item() == pytest.approx(LF.info_nce(z1, z2, temperature=0.1).item(), rel=1e-12)
    with pytest.raises(ValueError, match="contiguous"):
        LF.info_nce(z1, z2, anchors=slice(0, 8, 2), temperature=0.1)


def test_info_nce_minimum_at_aligned_orthogonal_views():
    z = torch.eye(8, dtype=torch.float64) * 3.0
    t = 0.1
    expected = float(np.log(1 + 14 * np.exp(-1 / t)))  # positive similarity 1, 14 negatives at 0
    assert LF.info_nce(z, z.clone(), t).item() == pytest.approx(expected, rel=1e-9)
    assert LF.info_nce(z, z + 0.3 * torch.randn_like(z), t) > LF.info_nce(z, z.clone(), t)


# -- Barlow Twins ------------------------------------------------------------------------------------------------


def _reference_barlow(x: np.ndarray, y: np.ndarray, lam: float) -> tuple[float, float]:
    def bn(z: np.ndarray) -> np.ndarray:
        return (z - z.mean(0)) / np.sqrt(z.var(0) + 1e-5)  # np.var is biased, as BatchNorm's batch statistics

    c = bn(x).T @ bn(y) / len(x)
    on = sum((c[i, i] - 1) ** 2 for i in range(c.shape[0]))
    off = sum(c[i, j] ** 2 for i in range(c.shape[0]) for j in range(c.shape[0]) if i != j)
    return on, off


def test_barlow_matches_reference(pair):
    z1, z2 = pair
    out = LF.barlow_twins(z1, z2, lambda_offdiag=0.0051)
    on, off = _reference_barlow(z1.numpy(), z2.numpy(), 0.0051)
    assert out.terms["invariance"].item() == pytest.approx(on, rel=1e-9)
    assert out.terms["redundancy"].item() == pytest.approx(off, rel=1e-9)
    assert out.total.item() == pytest.approx(on + 0.0051 * off, rel=1e-9)


def test_barlow_matches_batchnorm_cross_correlation(pair):
    """The official code standardises with BatchNorm1d(affine=False) in training mode."""
    z1, z2 = pair
    bn = torch.nn.BatchNorm1d(16, affine=False).double().train()
    c = bn(z1).T @ bn(z2) / len(z1)
    on = (torch.diagonal(c) - 1).pow(2).sum()
    off = c.pow(2).sum() - torch.diagonal(c).pow(2).sum()
    assert LF.barlow_twins(z1, z2, lambda_offdiag=0.0051).total.item() == pytest.approx((on + 0.0051 * off).item(), rel=1e-9)


def test_barlow_symmetric_minimal_at_optimum_and_batched(pair):
    z1, z2 = pair
    assert LF.barlow_twins(z1, z2, lambda_offdiag=0.0051).total.item() == pytest.approx(
        LF.barlow_twins(z2, z1, lambda_offdiag=0.0051).total.item(), rel=1e-12
    )
    h = torch.tensor([[1.0]], dtype=torch.float64)
    for _ in range(5):
        h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)], 0)
    z = h[:, 1:17]  # decorrelated, zero-mean, unit-variance columns: c = identity (up to BatchNorm's eps)
    assert LF.barlow_twins(z, z.clone(), lambda_offdiag=0.0051).total.item() == pytest.approx(0.0, abs=1e-8)
    assert LF.barlow_twins(z, z + 0.1 * torch.randn_like(z), lambda_offdiag=0.0051).total > 1e-4
    stacked = LF.barlow_twins(torch.stack([z1, z2]), torch.stack([z2, z1]), lambda_offdiag=0.0051)
    assert stacked.total.item() == pytest.approx(LF.barlow_twins(z1, z2, lambda_offdiag=0.0051).total.item(), rel=1e-12)


# -- SIGReg ------------------------------------------------------------------------------------------------------


def _reference_epps_pulley(z: np.ndarray, directions: np.ndarray, t_max: float, knots: int) -> float:
    """Complex characteristic function on the symmetric grid [-t_max, t_max], trapezoidal rule."""
    t = np.linspace(-t_max, t_max, 2 * knots - 1)
    gauss = np.exp(-(t**2) / 2)
    stats = []
    for a in directions.T:
        x = z @ a
        ecf = np.exp(1j * np.outer(x, t)).mean(axis=0)
        integrand = np.abs(ecf - gauss) ** 2 * gauss
        stats.append(len(z) * float(np.sum((integrand[1:] + integrand[:-1]) / 2 * np.diff(t))))
    return float(np.mean(stats))


@pytest.fixture
def directions() -> torch.Tensor:
    return LF.random_directions(16, 32, torch.Generator().manual_seed(1)).double()


def test_sigreg_matches_reference(pair, directions):
    z1, _ = pair
    ref = _reference_epps_pulley(z1.numpy(), directions.numpy(), 3.0, 17)
    assert LF.sigreg(z1, directions, t_max=3.0, knots=17).item() == pytest.approx(ref, rel=1e-9)


def test_sigreg_of_collapsed_embeddings_is_the_analytic_integral(directions):
    """phi_N = 1 for z = 0: N * integral of (1 - e^{-t^2/2})^2 e^{-t^2/2} over R = N (sqrt(2pi) - 2 sqrt(pi) + sqrt(2pi/3))."""
    z = torch.zeros(50, 16, dtype=torch.float64)
    expected = 50 * (np.sqrt(2 * np.pi) - 2 * np.sqrt(np.pi) + np.sqrt(2 * np.pi / 3))
    assert LF.sigreg(z, directions, t_max=12.0, knots=4001).item() == pytest.approx(expected, rel=1e-6)


def test_sigreg_prefers_isotropic_gaussian(directions):
    g = torch.Generator().manual_seed(2)
    gauss = torch.randn(2048, 16, generator=g, dtype=torch.float64)
    assert LF.sigreg(gauss, directions, t_max=3.0, knots=17) < 3.0  # O(1) for a true Gaussian sample
    rank_one = gauss[:, :1] * torch.ones(16, dtype=torch.float64)  # dimensional collapse at unit variance per dim
    for other in (0.2 * gauss, 3.0 * gauss, gauss + 1.0, rank_one):
        assert LF.sigreg(other, directions, t_max=3.0, knots=17) > 5 * LF.sigreg(gauss, directions, t_max=3.0, knots=17)


def test_sigreg_properties(pair, directions):
    z1, z2 = pair
    assert LF.sigreg(z1, -directions, t_max=3.0, knots=17).item() == pytest.approx(LF.sigreg(z1, directions, t_max=3.0, knots=17).item(), rel=1e-9)
    stacked = LF.sigreg(torch.stack([z1, z2]), directions, t_max=3.0, knots=17)
    assert stacked.item() == pytest.approx(
        (LF.sigreg(z1, directions, t_max=3.0, knots=17) + LF.sigreg(z2, directions, t_max=3.0, knots=17)).item() / 2, rel=1e-12
    )
    assert LF.sigreg(z1, directions, t_max=3.0, knots=17).shape == ()
    with pytest.raises(ValueError, match="directions"):
        LF.sigreg(z1, directions[:8], t_max=3.0, knots=17)


def test_random_directions_are_unit_and_reproducible():
    a = LF.random_directions(16, 64, torch.Generator().manual_seed(5))
    b = LF.random_directions(16, 64, torch.Generator().manual_seed(5))
    assert torch.equal(a, b)
    assert torch.allclose(a.norm(dim=0), torch.ones(64))


def test_multiview_invariance_reference():
    g = torch.Generator().manual_seed(3)
    views = torch.randn(4, 10, 6, generator=g, dtype=torch.float64)
    centre = (views[0] + views[1]) / 2
    expected = sum(float(((v - centre) ** 2).mean()) for v in views) / 4
    assert LF.multiview_invariance(views, num_global=2).item() == pytest.approx(expected, rel=1e-12)
    assert LF.multiview_invariance(views[:1].expand(3, 10, 6)).item() == pytest.approx(0.0, abs=1e-20)


@pytest.mark.parametrize("loss", ["info_nce", "barlow_twins", "sigreg"])
def test_new_losses_give_finite_gradients(pair, directions, loss):
    z1, z2 = (t.clone().requires_grad_(True) for t in pair)
    if loss == "sigreg":
        value = LF.sigreg(torch.cat([z1, z2]), directions, t_max=3.0, knots=17)
    else:
        out = LF.info_nce(z1, z2, temperature=0.1) if loss == "info_nce" else LF.barlow_twins(z1, z2, lambda_offdiag=0.0051)
        value = out.total if isinstance(out, LF.LossOutput) else out
    value.backward()
    for z in (z1, z2):
        assert z.grad is not None and torch.isfinite(z.grad).all() and z.grad.abs().sum() > 0
