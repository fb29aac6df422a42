"""Action-conditioned predictor of a world model: the next state's embedding from the current one and an action.

Residual MLP blocks with adaptive LayerNorm (AdaLN, as in DiT and V-JEPA 2-AC's action conditioning): the action's
embedding sets each block's scale, shift and gate, so that the action modulates every layer rather than being one
more input feature. The prediction is a residual ``z + f(z, a)``: doing nothing is the easy default that the data
corrects, which keeps long open-loop rollouts stable. Gates start at zero (the block starts as the identity).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class AdaLNBlock(nn.Module):
    """``x + gate(c) * MLP(LN(x) * (1 + scale(c)) + shift(c))``."""

    def __init__(self, dim: int, hidden: int, cond_dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim, elementwise_affine=False)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))
        self.modulation = nn.Linear(cond_dim, 3 * dim)
        nn.init.zeros_(self.modulation.weight)
        nn.init.zeros_(self.modulation.bias)

    def forward(self, x: Tensor, cond: Tensor) -> Tensor:
        shift, scale, gate = self.modulation(cond).chunk(3, dim=-1)
        return x + (1 + gate) * self.mlp(self.norm(x) * (1 + scale) + shift)


class ActionConditionedPredictor(nn.Module):
    """``predict(z, a)``: ``(..., D)`` embeddings and ``(..., A)`` actions to the next ``(..., D)`` embeddings;
    ``rollout(z0, actions)``: open loop over ``(N, H, A)`` actions to ``(N, H, D)``.

    Args:
        dim: embedding width.
        action_dim: action width (an action chunk flattened).
        hidden: hidden width of each block's MLP and of the action embedding.
        depth: residual blocks.
    """

    def __init__(self, dim: int, action_dim: int, hidden: int = 256, depth: int = 3) -> None:
        super().__init__()
        self.dim, self.action_dim = dim, action_dim
        self.action_embed = nn.Sequential(nn.Linear(action_dim, hidden), nn.GELU(), nn.Linear(hidden, hidden))
        self.blocks = nn.ModuleList(AdaLNBlock(dim, hidden, hidden) for _ in range(depth))
        self.out = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, dim))

    #: methods besides ``forward`` that run the module (FSDP gathers its parameters for them too)
    fsdp_forward_methods = ("rollout",)

    def step(self, z: Tensor, cond: Tensor) -> Tensor:
        """One prediction from embeddings and embedded actions ``cond``."""
        h = z
        for block in self.blocks:
            h = block(h, cond)
        return z + self.out(h)

    def forward(self, z: Tensor, a: Tensor) -> Tensor:
        return self.step(z, self.action_embed(a))

    def rollout(self, z0: Tensor, actions: Tensor) -> Tensor:
        """Open-loop predictions ``(N, H, D)`` from ``(N, D)`` and ``(N, H, A)``: each step feeds on the last (the
        actions of every step are embedded in one batched call)."""
        cond = self.action_embed(actions)  # (N, H, hidden)
        z, out = z0, []
        for t in range(actions.shape[1]):
            z = self.step(z, cond[:, t])
            out.append(z)
        return torch.stack(out, dim=1)
