"""Mask samplers (I-JEPA multi-block, V-JEPA tubes, future frames) and the collate hook that runs them in workers."""

from jepa_platform.masking.collate import MaskCollate, MaskPlan, effective_pool, model_input, sample_masks, token_grid
from jepa_platform.masking.samplers import FutureMaskSampler, Masks, MaskSampler, MultiBlockMaskSampler, block_size

__all__ = [
    "FutureMaskSampler",
    "MaskCollate",
    "MaskPlan",
    "MaskSampler",
    "Masks",
    "MultiBlockMaskSampler",
    "block_size",
    "effective_pool",
    "model_input",
    "sample_masks",
    "token_grid",
]
