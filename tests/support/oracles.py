"""World models that know the answer: planner tests check the search itself on them, independently of learning.
They declare the interface planners read (``encode`` and ``levels``, ``jepa_platform.world_model.level``)."""

from __future__ import annotations

import torch
from torch import nn


class OracleLevel(nn.Module):
    """A level whose embedding *is* the agent's position: an action moves it by ``speed x stride x action`` inside the
    unit square, ignoring walls; ``action_bound`` ``None`` at level 1 (the environment's bounds)."""

    def __init__(self, speed: float, stride: int = 1, action_bound: float | None = None) -> None:
        super().__init__()
        self.speed, self.stride, self.action_bound = speed, stride, action_bound
        self.action_dim, self.latent_dim = 2, 0

    def embed(self, z: torch.Tensor) -> torch.Tensor:
        return z

    def rollout(self, s0: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        steps = torch.cumsum(actions.clamp(-1, 1) * self.speed * self.stride, dim=1)
        return (s0[:, None] + steps).clamp(0, 1)

    def planning_embedding(self, s: torch.Tensor, slow_power: float = 0.0) -> torch.Tensor:
        return s

    def decode_state(self, s: torch.Tensor) -> torch.Tensor:
        return s


class OracleWorldModel(nn.Module):
    """A world model whose embedding is the agent's position (read from the frame's red pixels), one level."""

    def __init__(self, speed: float = 0.05, image_size: int = 64) -> None:
        super().__init__()
        self.speed, self.image_size = speed, image_size
        self.anchor = nn.Parameter(torch.zeros(()))  # gives the module a device
        self.levels = nn.ModuleList([OracleLevel(speed)])

    def encode(self, frames: torch.Tensor) -> torch.Tensor:
        """Centroid of the agent's pixels, in [0, 1] coordinates, from frames scaled to [0, 1]."""
        red = (frames[:, 0] - frames[:, 1:].mean(dim=1) - 0.25).clamp_min(0)  # (B, H, W): the agent is red, nothing else is
        weights = red / red.sum(dim=(1, 2), keepdim=True).clamp_min(1e-9)
        c = (torch.arange(frames.shape[-1], device=frames.device, dtype=frames.dtype) + 0.5) / frames.shape[-1]
        return torch.stack([(weights.sum(dim=1) * c).sum(dim=1), (weights.sum(dim=2) * c).sum(dim=1)], dim=1) + 0 * self.anchor


class OracleHierarchicalWorldModel(OracleWorldModel):
    """:class:`OracleWorldModel` with a level 2 that is the position too: a macro-action ``m`` in ``[-1, 1]^2`` moves it
    by ``m x speed x stride`` (walls ignored). Hierarchical-planner tests check the two-level search on it."""

    def __init__(self, speed: float = 0.05, image_size: int = 64, stride: int = 4) -> None:
        super().__init__(speed, image_size)
        self.levels.append(OracleLevel(speed, stride, action_bound=1.0))
