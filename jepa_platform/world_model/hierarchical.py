"""Hierarchical planning: the high level plans macro-actions over level-2 predictions and hands the first predicted
level-2 embedding, a subgoal, to the low level as its goal (an action at level 2 sets the objective of level 1).

- :class:`LevelTwoModel` shows level 2 of a :class:`~jepa_platform.objectives.HierarchicalACJEPA` through the
  :class:`~jepa_platform.world_model.planners.base.WorldModel` interface, so **any planner** (CEM, iCEM, MPPI,
  gradient, plugins) plans at level 2: its "actions" are macro-actions in ``[-macro_bound, macro_bound]^macro_dim``
  and its rollouts are level-2 predictions, each ``stride`` level-1 steps long.
- :class:`SubgoalView` shows level 1 with each episode's energy measured where its goal is: in level-2 space against
  its subgoal, or (once the goal is within reach) in level 1's planning space against the goal itself, so that one
  low-level search plans every episode of a batch whichever goal each pursues.
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
        super().__init__(
            model, low.transform, np.full(dim, -bound, np.float32), np.full(dim, bound, np.float32), slow_power=low.slow_power, compile=low.compile
        )
        self.level = level
        self.level1 = low
        self.stride = int(level.stride)
        self.evaluations_level2 = 0

    @torch.no_grad()
    def encode(self, obs: np.ndarray) -> Tensor:
        return self.level.embed(self.level1.encode(obs))

    def rollout(self, z0: Tensor, actions: Tensor) -> Tensor:
        count = actions.shape[0] * actions.shape[1] * actions.shape[2]
        self.level1.evaluations += count
        self.evaluations_level2 += count
        return super().rollout(z0, actions)


class SubgoalView:
    """Level 1 (``base``) with each episode's energy measured where its goal lies (module docstring): episodes flagged
    in ``to_goal`` (``(E,)`` bool) in level 1's planning space, the others in level 2's. Both spaces share one vector,
    the other part zero, each part scaled so that the mean over the vector is the mean over its own space. Everything
    else (encoding, rollouts and their count, the state head of the guardrails, the action bounds) is the base's.

    Goals passed to a planner are already in that space (:meth:`goals`).
    """

    def __init__(self, base: WorldModel, level2: LevelTwoModel, to_goal: Tensor) -> None:
        self.base, self.level2, self.to_goal = base, level2, to_goal

    def __getattr__(self, name: str) -> Any:
        return getattr(self.base, name)

    def episodes(self, index: slice) -> SubgoalView:
        return SubgoalView(self.base, self.level2, self.to_goal[index])

    def _join(self, low: Tensor, high: Tensor) -> Tensor:
        """One vector per embedding from the two spaces, masked by episode: goals ``(E, D)`` or predictions
        ``(..., E, N, H, D)``."""
        d1, d2 = low.shape[-1], high.shape[-1]
        mask = self.to_goal.view(-1, 1) if low.dim() == 2 else self.to_goal.view(-1, 1, 1, 1)
        low = torch.where(mask, low * ((d1 + d2) / d1) ** 0.5, 0.0)
        high = torch.where(mask, 0.0, high * ((d1 + d2) / d2) ** 0.5)
        return torch.cat([low, high], dim=-1)

    def planning(self, z: Tensor) -> Tensor:
        return self._join(self.base.planning(z), self.level2.planning(self.level2.level.embed(z)))

    def goals(self, goal: Tensor, subgoal: Tensor) -> Tensor:
        """The goals ``(E, D1 + D2)`` in this space: level 1's goal embeddings ``(E, D1)`` for episodes toward the goal,
        the level-2 subgoals ``(E, d2)`` for the others."""
        return self._join(self.base.planning(goal), self.level2.planning(subgoal))

    def planning_goal(self, goal: Tensor) -> Tensor:
        return goal


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

    #: per episode: the current subgoal (level 2) and whether the low level plans to the goal itself
    episode_state = ("subgoal", "to_goal")

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
        self.to_goal: Tensor | None = None
        self.since = 0
        self.steps = 0
        self._subgoal_rows: list[Tensor] = []

    @property
    def fallen_back(self) -> Tensor | None:  # the low level's: it is the one that guards
        return self.low.fallen_back if hasattr(self, "low") else None

    @fallen_back.setter
    def fallen_back(self, value: Tensor | None) -> None:  # Planner.__init__ sets it; the low level keeps the flags
        pass

    def reset(self) -> None:
        self.high.reset()
        self.low.reset()
        self.subgoal, self.to_goal, self.since, self.steps, self._subgoal_rows = None, None, 0, 0, []

    def shift(self, executed: int) -> None:
        self.low.shift(executed)
        self.since += executed
        self.steps += executed

    def select(self, keep: Tensor) -> None:
        self.high.select(keep)
        self.low.select(keep)
        self._subgoal_rows = [rows[keep.to(rows.device)] for rows in self._subgoal_rows]
        super().select(keep)

    def take_subgoals(self) -> list[list[list[float]]]:
        """Per episode of the batch, the subgoals set since the last call as ``[step, x, y]`` (decoded by the level-2
        state head; ``x, y`` nan without one); ``[step, nan, nan]`` marks a switch to the final goal. Read after the
        plans reached the host, so it adds no wait."""
        if not self._subgoal_rows:
            return [[] for _ in range(0 if self.subgoal is None else self.subgoal.shape[0])]
        rows, self._subgoal_rows = torch.stack(self._subgoal_rows, dim=1).tolist(), []
        return rows

    def _level2(self, wm: WorldModel) -> LevelTwoModel:
        if self.level2 is None or self.level2.level1 is not wm:
            self.level2 = LevelTwoModel(wm)
        return self.level2

    @torch.no_grad()
    def _record(self, level2: LevelTwoModel) -> None:
        """Keep ``[step, x, y]`` of every episode's new subgoal on the device (``x, y`` nan toward the goal)."""
        try:
            xy = level2.states(self.subgoal)
        except ConfigError:
            xy = torch.full_like(self.subgoal[:, :2], float("nan"))
        xy = torch.where(self.to_goal[:, None], float("nan"), xy.float())
        self._subgoal_rows.append(torch.cat([torch.full_like(xy[:, :1], float(self.steps)), xy], dim=1))

    def replan_subgoal(self, wm: WorldModel, z0: Tensor, goal: Tensor) -> None:
        level2 = self._level2(wm)
        if self.steps:  # the high level's warm start moves on by the macro-steps done
            self.high.shift(max(1, round(self.since / level2.stride)))
        with torch.no_grad():
            s0, goal2 = level2.level.embed(z0), level2.level.embed(goal)
        macros = self.high.search(level2, s0, goal2, self.high_cost, self.high_horizon)  # (E, H2, m)
        with torch.no_grad():
            predicted = level2.rollout(s0, macros[:, None])[:, 0]  # (E, H2, d2): the subgoals of this plan
            path = level2.planning(torch.cat([s0[:, None], predicted], dim=1))
            energies = self.high_cost.energy(path, level2.planning(goal2)[:, None])  # (E, 1 + H2)
        self.since = 0
        self.to_goal = energies.argmin(dim=1) == 0  # no macro-step gets closer than here: the goal is within reach
        self.subgoal = predicted[:, 0]
        self._record(level2)

    def plan(self, world_model: WorldModel, z0: Tensor, goal: Tensor, cost: PlanningCost, horizon: int) -> Tensor:
        level2 = self._level2(world_model)
        if self.steps == 0 or self.since >= (self.high_period or level2.stride):
            self.replan_subgoal(world_model, z0, goal)
        view = SubgoalView(world_model, level2, self.to_goal)
        with torch.no_grad():
            goals = view.goals(goal, self.subgoal)
        return self.low.search(view, z0, goals, cost, horizon)  # type: ignore[arg-type]
