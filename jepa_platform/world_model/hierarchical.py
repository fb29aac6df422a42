"""Hierarchical planning: the high level plans macro-actions over level-2 predictions and hands the first predicted
level-2 embedding, a subgoal, to the low level as its goal (an action at level 2 sets the objective of level 1).

- :class:`LevelTwoModel` shows level 2 of a :class:`~jepa_platform.objectives.HierarchicalACJEPA` through the
  :class:`~jepa_platform.world_model.planners.base.WorldModel` interface, so **any planner** (CEM, iCEM, MPPI,
  gradient, plugins) plans at level 2: its "actions" are macro-actions in ``[-macro_bound, macro_bound]^macro_dim``
  and its rollouts are level-2 predictions, each ``stride`` level-1 steps long.
- :class:`SubgoalView` shows level 1 with the energy measured in level-2 space against a subgoal there.
- Both levels measure energies in their own slow features when ``--slow-power`` is set (as flat planning does).
- :class:`HierarchicalPlanner` is MPC at both levels: it replans the subgoals every ``high_period`` level-1 steps
  (warm-started, shifted by the macro-steps done), and the low level replans every time ``run_episode`` asks (every
  ``--execute`` steps) toward the current subgoal. Guardrails are level 1's: the low level scores its candidates with
  the episode's cost, guardrail included. When no macro-step brings the predicted level-2 embedding closer to the
  goal than it is now (the goal is within reach), the low level plans to the goal itself with the flat cost.

World-model evaluations of both levels are counted on the level-1 :class:`WorldModel` (a level-2 step costs about a
level-1 step: both are small residual MLPs); ``evaluations_level2`` keeps level 2's share apart.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

from jepa_platform.errors import ConfigError
from jepa_platform.world_model.costs import PlanningCost
from jepa_platform.world_model.planners.base import Planner, WorldModel


class LevelTwoModel(WorldModel):
    """Level 2 of a hierarchical world model behind the planner interface (see module docstring).

    Args:
        low: the level-1 world model (encodes observations; counts the evaluations of both levels).
    """

    def __init__(self, low: WorldModel) -> None:
        model = low.model
        if len(model.levels) < 2:
            raise ConfigError(f"{type(model).__name__} has no level 2: train a hierarchical world model (experiment=maze) for --hierarchical")
        level = model.levels[1]
        bound = float(level.action_bound)
        dim = int(level.action_dim)
        super().__init__(model, low.transform, np.full(dim, -bound, np.float32), np.full(dim, bound, np.float32), slow_power=low.slow_power)
        self.level = level
        self.level1 = low
        self.stride = int(level.stride)
        self.evaluations_level2 = 0

    @torch.no_grad()
    def encode(self, obs: np.ndarray) -> Tensor:
        return self.level.embed(self.level1.encode(obs))

    @torch.no_grad()
    def encode_goal(self, goal_obs: np.ndarray) -> Tensor:
        return self.level.embed(self.level1.encode_goal(goal_obs))

    def rollout(self, z0: Tensor, actions: Tensor) -> Tensor:
        count = actions.shape[0] * actions.shape[1]
        self.level1.evaluations += count
        self.evaluations_level2 += count
        return self.level.rollout(z0.expand(actions.shape[0], -1), actions)


class SubgoalView:
    """Level 1 (``base``) with the energy measured in level 2's planning space, against a level-2 goal: the low level's
    world model while it pursues a subgoal. Everything else (encoding, rollouts and their count, the state head of
    the guardrails, the action bounds) is the base's."""

    def __init__(self, base: WorldModel, level2: LevelTwoModel) -> None:
        self.base, self.level2 = base, level2

    def __getattr__(self, name: str) -> Any:
        return getattr(self.base, name)

    def planning(self, z: Tensor) -> Tensor:
        return self.level2.planning(self.level2.level.embed(z))

    def planning_goal(self, goal: Tensor) -> Tensor:
        return self.level2.planning(goal)


class HierarchicalPlanner(Planner):
    """Subgoals from a high-level planner over level 2, reached by a low-level planner at level 1 (module docstring).

    Args:
        high: the planner of level 2 (any registered planner).
        low: the planner of level 1.
        high_horizon: macro-steps the high level plans (each ``level2_stride`` level-1 steps).
        high_period: level-1 steps between high-level replans (``None``: one macro-step, ``level2_stride``).
        high_cost: the high level's cost (terminal and per-step energy to the goal in level-2 space).
        seed: unused (the two planners carry their own seeds).
    """

    def __init__(
        self, high: Planner, low: Planner, high_horizon: int = 4, high_period: int | None = None, high_cost: PlanningCost | None = None, seed: int = 0
    ) -> None:
        if high_horizon < 1 or (high_period is not None and high_period < 1):
            raise ConfigError("the high level's horizon and period must be >= 1")
        super().__init__(seed)
        self.high, self.low, self.high_horizon, self.high_period = high, low, high_horizon, high_period
        self.high_cost = high_cost or PlanningCost(terminal_weight=1.0, step_weight=1.0)
        self.level2: LevelTwoModel | None = None
        self.subgoal: Tensor | None = None
        self.since = 0
        self.subgoals: list[list[float]] = []
        self.steps = 0

    @property
    def fallbacks(self) -> int:  # the low level's: it is the one that guards
        return self.low.fallbacks if hasattr(self, "low") else 0

    @fallbacks.setter
    def fallbacks(self, value: int) -> None:  # Planner.__init__ sets it; the low level keeps the count
        pass

    def reset(self) -> None:
        self.high.reset()
        self.low.reset()
        self.subgoal, self.since, self.steps, self.subgoals = None, 0, 0, []

    def shift(self, executed: int) -> None:
        self.low.shift(executed)
        self.since += executed
        self.steps += executed

    def take_subgoals(self) -> list[list[float]]:
        """Subgoals set since the last call, as ``[step, x, y]`` (decoded by the level-2 state head; ``x, y`` nan
        without one); ``[step, nan, nan]`` marks a switch to the final goal."""
        out, self.subgoals = self.subgoals, []
        return out

    def _level2(self, wm: WorldModel) -> LevelTwoModel:
        if self.level2 is None or self.level2.level1 is not wm:
            self.level2 = LevelTwoModel(wm)
        return self.level2

    def replan_subgoal(self, wm: WorldModel, obs: np.ndarray, goal_obs: np.ndarray) -> None:
        level2 = self._level2(wm)
        if self.steps:  # the high level's warm start moves on by the macro-steps done
            self.high.shift(max(1, round(self.since / level2.stride)))
        s0, goal = level2.encode(obs), level2.encode_goal(goal_obs)
        macros = self.high.search(level2, s0, goal, self.high_cost, self.high_horizon)
        with torch.no_grad():
            predicted = level2.rollout(s0, macros[None])[0]  # (H2, d2): the subgoals of this plan
            energies = self.high_cost.energy(level2.planning(torch.cat([s0[None], predicted])), level2.planning(goal))
        self.since = 0
        if int(torch.argmin(energies)) == 0:  # no macro-step gets closer than here: the goal is within reach
            self.subgoal = None
            self.subgoals.append([float(self.steps), float("nan"), float("nan")])
            return
        self.subgoal = predicted[0]
        try:
            xy = level2.states(self.subgoal[None])[0].tolist()
        except ConfigError:
            xy = [float("nan"), float("nan")]
        self.subgoals.append([float(self.steps), *xy])

    def plan(self, world_model: WorldModel, obs: np.ndarray, goal_obs: np.ndarray, cost: PlanningCost, horizon: int) -> Tensor:
        level2 = self._level2(world_model)
        if self.steps == 0 or self.since >= (self.high_period or level2.stride):
            self.replan_subgoal(world_model, obs, goal_obs)
        if self.subgoal is None:
            return self.low.plan(world_model, obs, goal_obs, cost, horizon)
        return self.low.search(SubgoalView(world_model, level2), world_model.encode(obs), self.subgoal, cost, horizon)  # type: ignore[arg-type]
