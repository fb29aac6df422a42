"""The narrow transformer predictor of masked-prediction JEPAs (I-JEPA, V-JEPA, H-JEPA levels).

It maps the context tokens to predictions at the target positions: context tokens are projected to the
predictor's width and given the fixed sin-cos embedding of their grid position; each target position enters as
a learned mask token plus its position embedding; timm transformer blocks attend over both, and the outputs at the
mask tokens are projected back to the target width. Several target sets of a sample are predicted in one pass
each, side by side in the batch dimension (I-JEPA predicts each target block separately).
"""

from __future__ import annotations

import torch
from timm.layers import trunc_normal_
from timm.models.vision_transformer import Block, init_weights_vit_timm
from torch import Tensor, nn

from jepa_platform.encoders.pos_embed import sincos_grid


class MaskedPredictor(nn.Module):
    """Context tokens ``(B, Nc, in_dim)`` at flat grid positions ``(B, Nc)`` -> predictions ``(B, M, Nt, out_dim)``
    at target positions ``(B, M, Nt)`` of a ``(T, H, W)`` grid.

    Args:
        in_dim: width of the context tokens.
        dim: the predictor's width (I-JEPA: 384 for a ViT-H encoder; narrower than the encoder).
        depth, num_heads, mlp_ratio: transformer blocks.
        out_dim: width of the predictions (default ``in_dim``).
    """

    def __init__(self, in_dim: int, dim: int = 384, depth: int = 6, num_heads: int = 6, mlp_ratio: float = 4.0, out_dim: int | None = None) -> None:
        super().__init__()
        self.dim = dim
        self.embed = nn.Linear(in_dim, dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.blocks = nn.Sequential(*(Block(dim, num_heads, mlp_ratio, qkv_bias=True) for _ in range(depth)))
        self.norm = nn.LayerNorm(dim)
        self.out = nn.Linear(dim, out_dim or in_dim)
        trunc_normal_(self.mask_token, std=0.02)
        self.apply(init_weights_vit_timm)  # timm's ViT initialisation: truncated-normal linear weights, zero biases

    def forward(self, context: Tensor, context_idx: Tensor, target_idx: Tensor, grid: tuple[int, int, int]) -> Tensor:
        batch, sets, n_target = target_idx.shape
        pos = sincos_grid(grid, self.dim, context.device, context.dtype)
        x = self.embed(context) + pos[context_idx]
        x = x.repeat_interleave(sets, dim=0)  # (B*M, Nc, dim): every target set sees the whole context
        queries = self.mask_token + pos[target_idx.flatten(0, 1)]  # (B*M, Nt, dim)
        h = self.norm(self.blocks(torch.cat([x, queries], dim=1)))[:, -n_target:]
        return self.out(h).unflatten(0, (batch, sets))
