"""Gradient-descent planning (DINO-WM's GD, stable-worldmodel's PGD): Adam on the action sequences themselves,
through the differentiable world model, projected onto the action bounds after every step.

Several sequences are optimised in parallel (the warm start and random restarts), since the energy landscape
has local minima (a wall between the agent and the goal). Guardrails enter as a soft penalty during descent and as
a hard check at the end: a sequence whose predicted states still enter a forbidden region is rejected.
"""

from __future__ import annotations

import torch
from torch import Tensor

from jepa_platform.registry import register_planner
from jepa_platform.world_model.costs import PlanningCost
from jepa_platform.world_model.planners.base import Planner, WorldModel


@register_planner("gradient")
class GradientPlanner(Planner):
    """Projected gradient descent (Adam) over action sequences.

    Args:
        restarts: sequences optimised in parallel (the warm start is one of them).
        steps: Adam steps per plan.
        lr: Adam learning rate (action units).
        init_std: standard deviation of the random restarts.
        seed: see :class:`Planner`.
    """

    def __init__(self, restarts: int = 32, steps: int = 25, lr: float = 0.1, init_std: float = 0.5, seed: int = 0) -> None:
        super().__init__(seed)
        self.restarts, self.steps, self.lr, self.init_std = restarts, steps, lr, init_std

    def search(self, wm: WorldModel, z0: Tensor, goal: Tensor, cost: PlanningCost, horizon: int) -> Tensor:
        mean = self.initial_mean(wm, z0.shape[0], horizon)  # (E, H, A)
        noise = torch.randn((self.restarts, horizon, wm.action_dim), generator=self.rng(wm.device), device=wm.device)
        noise[0] = 0
        # every episode's sequences in one tensor: the summed loss gives each its own gradient, and Adam is elementwise
        actions = wm.clamp(mean[:, None] + self.init_std * noise).requires_grad_(True)  # (E, R, H, A)
        optimizer = torch.optim.Adam([actions], lr=self.lr)
        guard = cost.guardrail if cost.guardrail is not None and len(cost.guardrail.boxes) else None
        goal_space = wm.planning_goal(goal)
        for _ in range(self.steps):
            with torch.enable_grad():
                z = wm.rollout(z0, actions)
                loss = cost(wm.planning(z), goal_space, actions)
                if guard is not None:
                    loss = loss + cost.guardrail_weight * guard.depth(wm.states(z)).clamp_min(0).sum(dim=-1)
                optimizer.zero_grad(set_to_none=True)
                loss.sum().backward(inputs=[actions])  # the actions' gradient only: the model's weights stay as they are
            optimizer.step()
            with torch.no_grad():
                actions.copy_(wm.clamp(actions))
        return self.choose(wm, self.score(wm, z0, goal, cost, actions.detach()), horizon)
