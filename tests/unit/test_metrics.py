"""Embedding statistics and kNN accuracy on embeddings with known structure."""

from __future__ import annotations

import pytest
import torch

from jepa_platform.metrics import EmbeddingStats, KNNAccuracy, effective_rank, embedding_stats


def test_rank_of_collapsed_and_isotropic_embeddings():
    g = torch.Generator().manual_seed(0)
    iso = torch.randn(4000, 16, generator=g)
    assert effective_rank(iso).item() == pytest.approx(16, abs=0.3)
    line = torch.randn(4000, 1, generator=g) * torch.randn(1, 16, generator=g)
    assert effective_rank(line).item() == pytest.approx(1, abs=0.05)
    two = torch.cat([torch.randn(4000, 2, generator=g), torch.zeros(4000, 14)], 1)
    assert effective_rank(two).item() == pytest.approx(2, abs=0.1)


def test_std_dead_dims_and_correlation():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(5000, 8, generator=g) * torch.tensor([1, 2, 3, 4, 5, 6, 0, 0.0])
    s = embedding_stats(z)
    assert s["std_min"].item() == pytest.approx(0.0, abs=1e-6)
    assert s["std_mean"].item() == pytest.approx(21 / 8, rel=0.03)
    assert s["dead_dims_frac"].item() == pytest.approx(2 / 8)
    assert s["cov_offdiag"].item() < 0.05
    same = torch.randn(1000, 1, generator=g).repeat(1, 6)
    assert embedding_stats(same)["cov_offdiag"].item() == pytest.approx(1.0, abs=1e-4)


def test_accumulated_stats_equal_stats_of_concatenation():
    g = torch.Generator().manual_seed(1)
    batches = [torch.randn(n, 12, generator=g) @ torch.randn(12, 12, generator=g) for n in (50, 70, 30)]
    metric = EmbeddingStats(12)
    for b in batches:
        metric.update(b)
    got, want = metric.compute(), embedding_stats(torch.cat(batches))
    for key in want:
        assert got[key].item() == pytest.approx(want[key].item(), rel=1e-5, abs=1e-6), key


def test_knn_accuracy_separable_and_random():
    g = torch.Generator().manual_seed(0)
    centers = torch.randn(5, 32, generator=g) * 5
    labels = torch.arange(500) % 5
    feats = centers[labels] + 0.1 * torch.randn(500, 32, generator=g)
    metric = KNNAccuracy(num_classes=5, k=10)
    metric.update(feats[:400], labels[:400], bank=True)
    metric.update(feats[400:], labels[400:], bank=False)
    assert metric.compute().item() == 1.0
    metric.reset()
    metric.update(torch.randn(400, 32, generator=g), labels[:400], bank=True)
    metric.update(torch.randn(100, 32, generator=g), labels[400:], bank=False)
    assert metric.compute().item() < 0.45


def test_slow_feature_analysis_finds_the_slow_direction():
    """Clips whose first coordinate drifts slowly and second jumps: the slowest SFA direction is the first one,
    and batches (or ranks) add up to the statistics of the whole set."""
    from jepa_platform.metrics.slowness import SlownessStats, slow_weights

    g = torch.Generator().manual_seed(0)
    slow = torch.cumsum(0.05 * torch.randn(64, 10, generator=g), dim=1)
    fast = torch.randn(64, 10, generator=g)
    mixed = torch.stack([slow + fast, slow - fast], dim=-1)  # the directions are mixed in the coordinates
    whole, parts = SlownessStats(2), SlownessStats(2)
    whole.update(mixed)
    parts.update(mixed[:20])
    parts.update(mixed[20:])
    projection, slowness = whole.compute()
    assert torch.allclose(projection.abs(), parts.compute()[0].abs(), atol=1e-4)
    direction = projection[:, 0] / projection[:, 0].norm()
    assert torch.allclose(direction.abs(), torch.tensor([0.7071, 0.7071]), atol=0.05)  # slow = first + second
    assert slowness[0] < 0.1 * slowness[1]
    weights = slow_weights(slowness, 1.0)
    assert weights[0] > weights[1] and torch.isclose(weights.pow(2).mean(), torch.tensor(1.0))


def test_alignment_and_uniformity_of_known_embeddings():
    from jepa_platform.metrics.alignment import AlignmentUniformity, alignment, uniformity

    g = torch.Generator().manual_seed(0)
    spread = torch.randn(2000, 256, generator=g)
    assert uniformity(spread).item() == pytest.approx(-4.0, abs=0.1)  # ||a - b||^2 concentrates at 2 in high dimensions
    assert uniformity(torch.ones(50, 8)).item() == pytest.approx(0.0, abs=1e-6)  # one point
    assert alignment(spread, spread).item() == pytest.approx(0.0, abs=1e-6)
    assert alignment(spread, torch.randn(2000, 256, generator=g)).item() == pytest.approx(2.0, abs=0.05)
    whole, parts = AlignmentUniformity(), AlignmentUniformity()
    a, b = spread[:300, :16], spread[:300, :16] + 0.3 * torch.randn(300, 16, generator=g)
    whole.update(a, b)
    for i in range(0, 300, 70):  # batches (or ranks) add up to the statistics of the concatenation
        parts.update(a[i : i + 70], b[i : i + 70])
    got, want = parts.compute(), whole.compute()
    assert got["alignment"].item() == pytest.approx(want["alignment"].item(), rel=1e-6)
    assert got["uniformity"].item() == pytest.approx(want["uniformity"].item(), rel=1e-6)
    assert want["uniformity"].item() == pytest.approx(uniformity(torch.cat([a, b])).item(), rel=1e-6)
    single = AlignmentUniformity()
    single.update(a)
    assert set(single.compute()) == {"uniformity"}  # no pairs, no alignment
    capped = AlignmentUniformity(max_samples=100)  # uniformity of the first 100 samples (it costs N^2 D)
    for i in range(0, 300, 70):
        capped.update(a[i : i + 70])
    assert capped.compute()["uniformity"].item() == pytest.approx(uniformity(a[:100]).item(), rel=1e-6)
    capped.reset()
    capped.update(a[200:])
    assert capped.compute()["uniformity"].item() == pytest.approx(uniformity(a[200:]).item(), rel=1e-6)


def test_accumulated_stats_leave_the_spectrum_and_correlation_for_plots():
    g = torch.Generator().manual_seed(2)
    z = torch.randn(400, 6, generator=g) @ torch.diag(torch.tensor([5.0, 3, 1, 0.5, 0.1, 0.01]))
    metric = EmbeddingStats(6)
    metric.update(z)
    stats = metric.compute()
    sv = metric.spectrum.double()
    assert torch.all(sv[:-1] >= sv[1:])  # descending
    assert torch.allclose(sv, torch.linalg.svdvals(z.double()), rtol=1e-4)
    p = sv / sv.sum() + 1e-7
    assert torch.exp(-(p * p.log()).sum()).item() == pytest.approx(stats["rank"].item(), rel=1e-4)
    assert metric.correlation.shape == (6, 6) and torch.allclose(torch.diagonal(metric.correlation), torch.ones(6), atol=1e-5)


def test_figures_are_small_pngs(tmp_path):
    import numpy as np

    from jepa_platform.tracking import figures

    g = np.random.default_rng(0)
    made = [
        figures.save(figures.correlation_heatmap(np.corrcoef(g.normal(size=(64, 500)))), tmp_path / "corr.png"),
        figures.save(figures.singular_value_spectrum(np.sort(g.random(64))[::-1], 12.3), tmp_path / "sv.png"),
        figures.save(figures.energy_histogram({"level1": g.random(1000), "level2": 2 * g.random(1000)}), tmp_path / "e.png"),
        figures.save(figures.level_energies({"level1": [(0, 1.0), (1, 0.5)], "level2": [(0, 2.0), (1, 1.5)]}), tmp_path / "lv.png"),
        figures.save(figures.band_curves({"a": [([0, 1, 2], [0, 1, 2]), ([0, 1, 2], [1, 2, 3])]}, "step", "acc"), tmp_path / "b.png"),
    ]
    for path in made:
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size < 120_000
