"""Optimiser plumbing shared by objectives: parameter groups, the warmup + cosine schedule, and the learning-rate
scaling rule with the global batch size."""

from __future__ import annotations

import math
from collections.abc import Callable

from torch import nn
from torch.optim import Optimizer

OptimizerFactory = Callable[..., Optimizer]


def param_groups(module: nn.Module, weight_decay: float) -> list[dict]:
    """Two groups: weights with decay, and biases and norm parameters (1-D) without.

    timm's LARS adapts only groups with non-zero weight decay, so the second group is also left out of the
    trust-ratio scaling, as in the VICReg and Barlow Twins recipes.
    """
    decay, no_decay = [], []
    for p in module.parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def warmup_cosine(total_steps: int, warmup_steps: int, min_lr_ratio: float = 0.0) -> Callable[[int], float]:
    """LR multiplier: linear warmup from ~0 to 1 over ``warmup_steps``, then cosine decay to ``min_lr_ratio``."""
    total_steps = max(total_steps, 1)
    warmup_steps = min(max(warmup_steps, 0), total_steps)

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = min((step - warmup_steps) / max(total_steps - warmup_steps, 1), 1.0)
        return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return factor


#: ``lr x factor(global_batch / reference_batch)``: none, linear (Goyal et al. 2017; SimCLR, VICReg, Barlow Twins with
#: LARS) or square root (Adam-family optimisers, Malladi et al. 2022)
LR_SCALING = {"none": lambda r: 1.0, "linear": lambda r: r, "sqrt": math.sqrt}


def lr_scale(rule: str, global_batch: int, reference_batch: int) -> float:
    """The factor applied to the configured learning rate for a global batch of ``global_batch`` samples."""
    if rule not in LR_SCALING:
        raise ValueError(f"lr scaling rule {rule!r} is not one of {', '.join(LR_SCALING)}")
    if global_batch <= 0 or reference_batch <= 0:
        raise ValueError(f"batch sizes must be positive, got global {global_batch} and reference {reference_batch}")
    return float(LR_SCALING[rule](global_batch / reference_batch))
