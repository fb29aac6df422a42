"""Action-conditioned predictor of a world model: the next state's embedding from the current one, the action and,
optionally, the embeddings just before it.

Residual MLP blocks with adaptive LayerNorm (AdaLN, as in DiT and V-JEPA 2-AC's action conditioning): the
condition's embedding sets each block's scale, shift and gate, so that it modulates every layer rather than being one
more input feature. The prediction is a residual ``z + f(z, c)``: doing nothing is the easy default that the data
corrects, which keeps long open-loop rollouts stable. Gates start at zero (the block starts as the identity).

The condition is the action and the ``history - 1`` previous embeddings: one frame shows where things are, not how
they move, so a model of passive dynamics (a ball under gravity, no actions: ``action_dim=0``) needs the frames
before it to know velocity and acceleration.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.distributed.fsdp import FSDPModule


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
        return self.modulated(x, shift, 1 + scale, 1 + gate)

    def modulated(self, x: Tensor, shift: Tensor, scale: Tensor, gate: Tensor) -> Tensor:
        """The block under a given modulation, ``scale`` and ``gate`` as the factors (``1 + ...`` of the module's)."""
        return x + gate * self.mlp(self.norm(x) * scale + shift)


class ActionConditionedPredictor(nn.Module):
    """``forward(z, a, past)``: ``(..., D)`` embeddings, ``(..., A)`` actions and ``(..., history-1, D)`` previous
    embeddings (oldest first) to the next ``(..., D)`` embeddings; ``rollout(z0, actions, past)``: open loop over
    ``(N, H, A)`` actions to ``(N, H, D)``.

    Args:
        dim: embedding width.
        action_dim: action width (an action chunk flattened); 0 for passive dynamics (no actions).
        hidden: hidden width of each block's MLP and of the condition's embedding.
        depth: residual blocks.
        history: embeddings the prediction sees, the current one included (1: the current one only).
    """

    def __init__(self, dim: int, action_dim: int, hidden: int, depth: int, history: int = 1) -> None:
        super().__init__()
        self.dim, self.action_dim, self.history = dim, action_dim, history
        cond_in = action_dim + (history - 1) * dim
        self.hidden = hidden
        # no actions and no history: the blocks are unconditioned (their modulation sees a zero condition)
        self.action_embed = nn.Sequential(nn.Linear(cond_in, hidden), nn.GELU(), nn.Linear(hidden, hidden)) if cond_in else None
        self.blocks = nn.ModuleList(AdaLNBlock(dim, hidden, hidden) for _ in range(depth))
        self.out = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, dim))

    #: methods besides ``forward`` that run the module (FSDP gathers its parameters for them too)
    fsdp_forward_methods = ("rollout",)

    def condition(self, z: Tensor, a: Tensor, past: Tensor | None) -> Tensor:
        """The embedded condition ``(..., hidden)`` of one step (``past`` defaults to copies of ``z``: still before)."""
        if self.action_embed is None:
            return z.new_zeros(*z.shape[:-1], self.hidden)
        parts = [a]
        if self.history > 1:
            if past is None:
                past = z.unsqueeze(-2).expand(*z.shape[:-1], self.history - 1, self.dim)
            parts.append(past.flatten(-2))
        return self.action_embed(torch.cat(parts, dim=-1))

    def step(self, z: Tensor, cond: Tensor) -> Tensor:
        """One prediction from embeddings and an embedded condition ``cond``."""
        h = z
        for block in self.blocks:
            h = block(h, cond)
        return z + self.out(h)

    def forward(self, z: Tensor, a: Tensor, past: Tensor | None = None) -> Tensor:
        return self.step(z, self.condition(z, a, past))

    def rollout(self, z0: Tensor, actions: Tensor, past: Tensor | None = None) -> Tensor:
        """Open-loop predictions ``(N, H, D)`` from ``(N, D)``, ``(N, H, A)`` actions and ``(N, history-1, D)``
        previous embeddings: each step feeds on the last ones."""
        if self.history == 1 and self.action_embed is not None and not self.training and not self._blocks_sharded():
            return self._rollout_folded(z0, actions)
        if self.history == 1:
            # every step's condition in one batched call, time-major and unbound at once: indexing one step at a time
            # would cost, in backward, a zero-filled copy of the whole condition per step (the gradient planner's)
            steps = actions.transpose(0, 1)  # (H, N, A)
            cond = self.condition(z0.unsqueeze(0).expand(steps.shape[0], -1, -1), steps, None)
            z, out = z0, []
            for c in cond.unbind(0):
                z = self.step(z, c)
                out.append(z)
            return torch.stack(out, dim=1)
        if past is None:
            past = z0.unsqueeze(1).expand(-1, self.history - 1, -1)
        window = torch.cat([past, z0.unsqueeze(1)], dim=1)  # (N, history, D)
        out = []
        for t in range(actions.shape[1]):
            z = self(window[:, -1], actions[:, t], window[:, :-1])
            out.append(z)
            window = torch.cat([window[:, 1:], z.unsqueeze(1)], dim=1)
        return torch.stack(out, dim=1)

    def _blocks_sharded(self) -> bool:
        """FSDP shards each block as its own unit, gathered when the block's forward runs; the folded path reads the
        blocks' weights without calling it, so a sharded predictor keeps the layer-by-layer path."""
        return isinstance(self.blocks[0], FSDPModule)

    def folded_modulation(self) -> tuple[Tensor, Tensor]:
        """Weight ``(depth * 3 * dim, hidden)`` and bias of every block's modulation composed with the condition's last
        linear layer (two linear maps in a row are one), the ``1 +`` of scale and gate folded into the bias."""
        last = self.action_embed[-1]
        weight = torch.cat([block.modulation.weight for block in self.blocks])
        bias = torch.cat([block.modulation.bias for block in self.blocks])
        ones = torch.ones(len(self.blocks), 3, self.dim, dtype=bias.dtype, device=bias.device)
        ones[:, 0] = 0  # shift keeps its value; scale and gate enter as 1 + ...
        return weight @ last.weight, weight @ last.bias + bias + ones.flatten()

    def _rollout_folded(self, z0: Tensor, actions: Tensor) -> Tensor:
        """:meth:`rollout` with one action and no history, as planners and validation call it (eval mode): the same
        function with about a fifth less arithmetic. The condition's last layer and the blocks' modulations are
        folded into one matrix, and each step's condition is computed inside the step, so a planner's thousands of
        rows stay in the cache. Gradients reach the actions (the gradient planner); training keeps the layer-by-layer
        path."""
        weight, bias = self.folded_modulation()
        first, activation = self.action_embed[0], self.action_embed[1]
        z, out = z0, []
        for a in actions.unbind(1):
            modulations = F.linear(activation(first(a)), weight, bias).split(3 * self.dim, dim=-1)
            h = z
            for block, modulation in zip(self.blocks, modulations, strict=True):
                h = block.modulated(h, *modulation.chunk(3, dim=-1))
            z = z + self.out(h)
            out.append(z)
        return torch.stack(out, dim=1)
