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
