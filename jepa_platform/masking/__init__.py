"""Mask samplers (I-JEPA multi-block, V-JEPA tubes, future frames) and the collate hook that runs them in workers."""

from jepa_platform.masking.collate import MaskCollate, MaskPlan, effective_pool, model_input, pooled_grid, sample_masks, token_grid
from jepa_platform.masking.samplers import (
    FutureMaskSampler,
    Masks,
    MaskSampler,
    MixtureMaskSampler,
    MultiBlockMaskSampler,
    block_size,
    future_masks,
    gather_tokens,
)

__all__ = [
    "FutureMaskSampler",
    "MaskCollate",
    "MaskPlan",
    "MaskSampler",
    "Masks",
    "MixtureMaskSampler",
    "MultiBlockMaskSampler",
    "block_size",
    "effective_pool",
    "future_masks",
    "gather_tokens",
    "model_input",
    "pooled_grid",
    "sample_masks",
    "token_grid",
]
