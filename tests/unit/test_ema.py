"""The EMA target update and its momentum schedule."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from jepa_platform.callbacks.ema import EMATargetUpdate, ema_update, momentum_at


def test_ema_update_is_the_momentum_update():
    torch.manual_seed(0)
    online = nn.Sequential(nn.Linear(8, 8), nn.BatchNorm1d(8))
    target = copy.deepcopy(online).requires_grad_(False)
    with torch.no_grad():
        for p in online.parameters():
            p.add_(torch.randn_like(p))
        online[1].running_mean.fill_(3.0)
    online2 = nn.Linear(3, 2)  # a second pair (an upper level), moved in the same call
    target2 = copy.deepcopy(online2).requires_grad_(False)
    with torch.no_grad():
        online2.weight.add_(1.0)
    before = [p.clone() for p in [*target.parameters(), *target2.parameters()]]
    ema_update([(target, online), (target2, online2)], 0.9)
    pairs = zip([*target.parameters(), *target2.parameters()], before, [*online.parameters(), *online2.parameters()], strict=True)
    for t, b, o in pairs:
        torch.testing.assert_close(t, 0.9 * b + 0.1 * o, rtol=0, atol=1e-6)
        assert t.grad is None and not t.requires_grad
    assert not torch.equal(target2.weight, before[-2]) and not torch.equal(target[0].weight, before[0])
    assert torch.equal(target[1].running_mean, online[1].running_mean)  # buffers are copied


def test_momentum_schedule():
    assert momentum_at(0, 100, 0.996, 1.0) == 0.996
    assert momentum_at(50, 100, 0.996, 1.0) == pytest.approx(0.998)
    assert momentum_at(100, 100, 0.996, 1.0) == 1.0 and momentum_at(150, 100, 0.996, 1.0) == 1.0
    with pytest.raises(ValueError, match="momentum"):
        EMATargetUpdate(1.0, 0.99)


def test_ema_update_refuses_mismatched_modules():
    with pytest.raises(ValueError, match="copy"):
        ema_update([(nn.Linear(2, 2), nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2)))], 0.9)


def test_ema_update_reads_the_current_tensors_and_updates_a_tied_weight_once():
    """The submodules are listed once; the tensors are read at every update (FSDP swaps them), and a weight shared by
    two layers gets one momentum step, as ``parameters()`` lists it once."""
    online = nn.Sequential(nn.Embedding(5, 4), nn.Linear(4, 5))
    online[1].weight = online[0].weight
    target = copy.deepcopy(online).requires_grad_(False)
    with torch.no_grad():
        online[0].weight.fill_(1.0)
        target[0].weight.fill_(0.0)
    ema_update([(target, online)], 0.5)
    assert torch.equal(target[0].weight, torch.full((5, 4), 0.5)) and target[1].weight is target[0].weight
    target[1].bias = nn.Parameter(torch.zeros(5), requires_grad=False)  # swapped after the first update
    with torch.no_grad():
        online[1].bias.fill_(2.0)
    ema_update([(target, online)], 0.5)
    assert torch.equal(target[1].bias, torch.full((5,), 1.0)) and torch.equal(target[0].weight, torch.full((5, 4), 0.75))
