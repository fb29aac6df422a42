"""Baselines that every planner table shows: random actions, and a one-step greedy planner.

A planner is only good next to these: ``random`` measures how often the goal is reached by chance within the step
budget, ``greedy`` how far a planner gets by reducing the goal energy one step at a time (it stalls at walls: the
point of planning over a horizon).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from jepa_platform.registry import register_planner
from jepa_platform.world_model.costs import PlanningCost
from jepa_platform.world_model.planners.base import Planner, WorldModel


@register_planner("random")
class RandomPlanner(Planner):
    """Uniformly random actions within the bounds (ignores the world model, the goal and guardrails)."""

    uses_model = False

    def search(self, wm: WorldModel, z0: Tensor, goal: Tensor, cost: PlanningCost, horizon: int) -> Tensor:
        u = torch.rand((horizon, wm.action_dim), generator=self.rng(wm.device), device=wm.device)  # shared by episodes
        return (wm.low + u * (wm.high - wm.low)).expand(z0.shape[0], -1, -1).clone()


@register_planner("greedy")
class GreedyPlanner(Planner):
    """One-step lookahead: the candidate action whose predicted next embedding is closest to the goal's.

    Of ``directions`` x ``magnitudes`` candidate actions (and staying), guardrails respected; returns that action for
    every step of the horizon (``jepa plan`` runs it with horizon 1, replanning after every step).

    Args:
        directions: headings tried, evenly spaced (2-D actions; other action sizes draw ``directions`` random ones).
        magnitudes: step sizes tried, as fractions of the bound.
        seed: see :class:`Planner`.
    """

    def __init__(self, directions: int = 32, magnitudes: tuple[float, ...] = (0.25, 0.5, 1.0), seed: int = 0) -> None:
        super().__init__(seed)
        self.directions, self.magnitudes = directions, tuple(magnitudes)

    def candidates(self, wm: WorldModel) -> Tensor:
        if wm.action_dim == 2:
            angles = torch.arange(self.directions, device=wm.device) * (2 * math.pi / self.directions)
            unit = torch.stack([angles.cos(), angles.sin()], dim=1)
        else:
            unit = torch.randn((self.directions, wm.action_dim), generator=self.rng(wm.device), device=wm.device)
            unit = unit / unit.norm(dim=1, keepdim=True)
        scale = (wm.high - wm.low) / 2
        steps = [unit * m * scale for m in self.magnitudes]
        return wm.clamp(torch.cat([torch.zeros(1, wm.action_dim, device=wm.device), *steps]))

    def search(self, wm: WorldModel, z0: Tensor, goal: Tensor, cost: PlanningCost, horizon: int) -> Tensor:
        actions = self.candidates(wm)[None, :, None].expand(z0.shape[0], -1, -1, -1)  # (E, N, 1, A)
        one_step = PlanningCost(terminal_weight=1.0, guardrail=cost.guardrail)
        scored = self.score(wm, z0, goal, one_step, actions)
        return self.choose(wm, scored, 1).expand(-1, horizon, -1).clone()
